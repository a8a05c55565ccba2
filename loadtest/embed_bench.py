"""Embedding throughput: `embedstream embed` (Burn, CPU) side by side with sentence-transformers
(PyTorch, CPU) on the same texts, same thread count, same batch size, in the same run.

  python3 loadtest/embed_bench.py --python .dev/refvenv/bin/python [--items 1000] [--threads 2]

Texts: a deterministic sample of Debian package descriptions (loadtest/debian_catalog.py).
Reports items/s, tokens/s, GFLOP/s (matmul FLOPs of the encoder: 2 x weights per token plus
attention), peak RSS, and the Rust side's split between tokenizing and the forward pass; writes
loadtest/reports/embed-latest.md (embed.md keeps the current table and the history: copy a
run's rows there when they are the new current figures). The reference venv needs
sentence-transformers and torch (see pipeline/tests/fixtures/reference/README.md).
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "embedstream"
MODELS = {
    # id: (layers, hidden, intermediate)
    "minilm-l6-v2": (6, 384, 1536),
    "mpnet-base-v2": (12, 768, 3072),
}

ST_SCRIPT = r"""
import json, os, resource, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
torch.set_num_threads(int(sys.argv[3]))
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
texts = [json.loads(l)["text"] for l in open(sys.argv[2])]
batch = int(sys.argv[4])
lengths = [len(model.tokenizer(t, truncation=True, max_length=model.max_seq_length)["input_ids"]) for t in texts]
model.encode(texts[:batch], batch_size=batch)  # warm-up
start = time.perf_counter()
model.encode(texts, batch_size=batch)
wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "lengths": lengths,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def flops(lengths, layers, hidden, inter):
    per_token = 2 * layers * (4 * hidden * hidden + 2 * hidden * inter)
    attention = sum(2 * 2 * layers * n * n * hidden for n in lengths)
    return per_token * sum(lengths) + attention


def run_rust(model, texts_path, threads, batch, binary=BIN):
    out = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False).name
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), RUST_LOG="info", NO_COLOR="1")
    cmd = ["/usr/bin/time", "-v", str(binary), "embed", "--model", model, "--input", texts_path,
           "--output", out, "--batch-size", str(batch)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(r.stderr)
    log = re.sub(r"\x1b\[[0-9;]*m", "", r.stderr)
    fields = dict(re.findall(r"(\w+)=([0-9.]+)", log.split("Embedded.")[-1]))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1)) / 1024
    os.unlink(out)
    return {"wall": float(fields["wall_s"]), "tokenize": float(fields["tokenize_s"]),
            "forward": float(fields["forward_s"]), "padded": int(float(fields["padded_tokens"])),
            "tokens": int(float(fields["tokens"])), "peak_rss_mb": rss}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--python", required=True, help="python with sentence-transformers")
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--bin", default=str(BIN), help="the embedstream binary (another build, to compare)")
    args = p.parse_args()

    catalog = subprocess.run([sys.executable, str(ROOT / "loadtest" / "debian_catalog.py")],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    step = max(1, len(catalog) // args.items)
    sample = catalog[::step][: args.items]
    texts = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
    texts.write("\n".join(sample) + "\n")
    texts.close()
    home = pathlib.Path(os.environ.get("EMBEDSTREAM_HOME", pathlib.Path.home() / ".cache" / "embedstream"))

    rows = []
    for model in args.models.split(","):
        layers, hidden, inter = MODELS[model]
        folder = home / "models" / f"{model}-v1"
        st = subprocess.run([args.python, "-c", ST_SCRIPT, str(folder), texts.name,
                             str(args.threads), str(args.batch)],
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        if st.returncode != 0:
            sys.exit(st.stderr)
        st = json.loads(st.stdout.strip().splitlines()[-1])
        rust = run_rust(model, texts.name, args.threads, args.batch, args.bin)
        tokens = sum(st["lengths"])
        assert tokens == rust["tokens"], (tokens, rust["tokens"])
        f = flops(st["lengths"], layers, hidden, inter)
        for name, r in (("sentence-transformers (PyTorch)", st), ("embedstream (Burn flex)", rust)):
            rows.append({
                "model": model, "impl": name, "items_s": len(sample) / r["wall"],
                "tokens_s": tokens / r["wall"], "gflops": f / r["wall"] / 1e9,
                "rss": r["peak_rss_mb"], "wall": r["wall"],
                "split": (f"tokenize {r['tokenize']:.2f} s, forward+pool {r['forward']:.2f} s "
                          f"(summed over the replicas), padding computed "
                          f"{100 * (r['padded'] / r['tokens'] - 1):.1f}%") if "forward" in r else "",
            })
        rows.append({"model": model, "impl": "ratio (embedstream / PyTorch)",
                     "items_s": rows[-1]["items_s"] / rows[-2]["items_s"]})

    lines = [
        f"# Embedding throughput, {len(sample)} Debian package texts (same texts and token ids for both), "
        f"{args.threads} threads, batch {args.batch}",
        "",
        f"Command: `python3 loadtest/embed_bench.py --python <venv with sentence-transformers> "
        f"--items {args.items} --threads {args.threads} --batch {args.batch}`",
        "",
        f"CPU: {cpu_model()}; binary: `{os.path.relpath(args.bin, ROOT)}`",
        "",
        "| model | implementation | items/s | tokens/s | GFLOP/s | peak RSS MB | wall s | where the time goes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "tokens_s" in r:
            lines.append(f"| {r['model']} | {r['impl']} | {r['items_s']:.1f} | {r['tokens_s']:.0f} | "
                         f"{r['gflops']:.1f} | {r['rss']:.0f} | {r['wall']:.2f} | {r['split']} |")
        else:
            lines.append(f"| {r['model']} | **{r['impl']}** | **{r['items_s']:.2f}×** | | | | | |")
    report = "\n".join(lines) + "\n"
    (ROOT / "loadtest" / "reports" / "embed-latest.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
