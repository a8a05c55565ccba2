"""CUDA parity and throughput of `embedstream embed --device cuda`, on a machine with a GPU.

  python3 loadtest/gpu_bench.py --bin BIN --texts TEXTS.jsonl [--models minilm-l6-v2,mpnet-base-v2]
      [--items 10000] [--batch 128] [--out DIR]

Needs the models under $EMBEDSTREAM_HOME/models (as `embedstream models fetch` leaves them) and
a python with torch + sentence-transformers that sees the GPU (the peer, run in the same job).

1. Parity: the fixture texts of pipeline/tests/fixtures/reference (sentence-transformers'
   own vectors) embedded on CUDA one at a time (--batch-size 1) and in one padded batch: the
   same thresholds as the CPU parity test (cosine >= 0.999 each, >= 0.9999 mean: `pass`), and
   the differences of the batch against alone and of CUDA against the same binary on CPU
   (reported, not thresholded: float32 kernels sum in other orders).
2. Throughput: the same Debian texts, same batch size, through sentence-transformers on CUDA
   (fp32, after a warm-up) and `embedstream embed --device cuda` twice: the first process
   pays for compiling the kernels (NVRTC) and autotuning, the second reuses the autotune
   cache. Peak GPU memory is read with nvidia-smi every 100 ms (device total minus idle).
Writes DIR/gpu.md and DIR/gpu.json.
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "pipeline" / "tests" / "fixtures" / "reference"


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    return dot / (na * nb)


class GpuMemory:
    """Peak of nvidia-smi's memory.used while the block runs, minus what was used before."""

    def __enter__(self):
        self.base = self.read()
        self.peak = self.base
        self.stop = False
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()

    @staticmethod
    def read():
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True)
            return int(r.stdout.split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def poll(self):
        while not self.stop:
            self.peak = max(self.peak, self.read())
            time.sleep(0.1)

    @property
    def used_mb(self):
        return self.peak - self.base


def embed(bin_path, model, texts_path, device, batch, timeout):
    out = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False).name
    env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
    cmd = [bin_path, "embed", "--model", model, "--input", texts_path, "--output", out,
           "--batch-size", str(batch), "--device", device]
    start = time.perf_counter()
    with GpuMemory() as mem:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-4000:]}")
    log = re.sub(r"\x1b\[[0-9;]*m", "", r.stderr)
    fields = dict(re.findall(r"(\w+)=([0-9.]+)", log.split("Embedded.")[-1]))
    vectors = [json.loads(line)["vector"] for line in open(out)]
    os.unlink(out)
    return vectors, {"process_s": elapsed, "wall": float(fields.get("wall_s", elapsed)),
                     "tokenize": float(fields.get("tokenize_s", 0)),
                     "forward": float(fields.get("forward_s", 0)),
                     "tokens": int(float(fields.get("tokens", 0))),
                     "padded": int(float(fields.get("padded_tokens", 0))),
                     "gpu_mb": mem.used_mb}


def parity(bin_path, model, device):
    ref = json.loads((FIXTURES / f"{model}.json").read_text())
    texts = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
    for t in ref["texts"]:
        texts.write(json.dumps({"id": t["name"], "text": t["text"]}) + "\n")
    texts.close()
    alone, _ = embed(bin_path, model, texts.name, device, 1, 600)
    batched, _ = embed(bin_path, model, texts.name, device, 64, 600)
    cpu, _ = embed(bin_path, model, texts.name, "cpu", 64, 600)
    cos = [cosine(v, t["vector"]) for v, t in zip(alone, ref["texts"])]
    batch_diff = max(abs(x - y) for a, b in zip(alone, batched) for x, y in zip(a, b))
    cpu_diff = max(abs(x - y) for a, b in zip(batched, cpu) for x, y in zip(a, b))
    cpu_cos = min(cosine(a, b) for a, b in zip(batched, cpu))
    row = {"model": model, "texts": len(cos), "mean_cosine": sum(cos) / len(cos),
           "min_cosine": min(cos), "min_text": ref["texts"][cos.index(min(cos))]["name"],
           "batch_vs_alone_max_abs": batch_diff, "cuda_vs_cpu_max_abs": cpu_diff,
           "cuda_vs_cpu_min_cosine": cpu_cos}
    row["pass"] = row["mean_cosine"] >= 0.9999 and row["min_cosine"] >= 0.999
    return row


ST_SCRIPT = r"""
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from sentence_transformers import SentenceTransformer
device = sys.argv[4]
model = SentenceTransformer(sys.argv[1], device=device)
texts = [json.loads(l)["text"] for l in open(sys.argv[2])]
batch = int(sys.argv[3])
model.encode(texts[: batch * 4], batch_size=batch)  # warm-up
cuda = device == "cuda"
if cuda:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
model.encode(texts, batch_size=batch)
if cuda:
    torch.cuda.synchronize()
wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0,
                  "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if cuda else "cpu"}))
"""


def peer(python, model_dir, texts_path, batch, device):
    r = subprocess.run([python, "-c", ST_SCRIPT, str(model_dir), texts_path, str(batch), device],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-4000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--texts", required=True)
    p.add_argument("--models", default="minilm-l6-v2,mpnet-base-v2")
    p.add_argument("--items", default="10000", help="per model, comma-separated, or one for all")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--timeout", type=int, default=240, help="seconds per embed run")
    p.add_argument("--skip-parity", action="store_true")
    p.add_argument("--kernel-cache", help="emptied before each model's cold run (default: $EMBEDSTREAM_HOME/cubecl, the one --device cuda uses)")
    p.add_argument("--device", default="cuda", help="cpu for a dry run where there is no GPU")
    p.add_argument("--python", default=sys.executable, help="python with sentence-transformers")
    p.add_argument("--out", default=".")
    args = p.parse_args()
    home = pathlib.Path(os.environ.get("EMBEDSTREAM_HOME", pathlib.Path.home() / ".cache" / "embedstream"))
    args.kernel_cache = args.kernel_cache or str(home / "cubecl")
    out = pathlib.Path(args.out)
    lines = [json.loads(line) for line in open(args.texts)]
    models = args.models.split(",")
    items = [int(n) for n in args.items.split(",")]
    items = items * len(models) if len(items) == 1 else items
    result = {"parity": [], "throughput": []}
    md = [f"# embedstream on CUDA: parity and throughput (batch {args.batch})", ""]

    def save():
        (out / "gpu.json").write_text(json.dumps(result, indent=1))
        (out / "gpu.md").write_text("\n".join(md) + "\n")

    for model in models:
        if not args.skip_parity:
            row = parity(args.bin, model, args.device)
            result["parity"].append(row)
            print(json.dumps(row), flush=True)
            save()
    for model, n in zip(models, items):
        texts = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
        texts.write("".join(json.dumps(t) + "\n" for t in lines[:n]))
        texts.close()
        try:
            st = peer(args.python, home / "models" / f"{model}-v1", texts.name, args.batch, args.device)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            st = {"error": str(e)[-2000:]}
        result["throughput"].append({"model": model, "impl": "sentence-transformers", "items": n, **st})
        print(json.dumps(result["throughput"][-1]), flush=True)
        save()
        for run in ("cold", "warm"):
            if run == "cold" and args.kernel_cache:
                shutil.rmtree(args.kernel_cache, ignore_errors=True)
            try:
                _, r = embed(args.bin, model, texts.name, args.device, args.batch, args.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                r = {"error": str(e)[-2000:]}
            result["throughput"].append({"model": model, "impl": f"embedstream ({run})", "items": n, **r})
            print(json.dumps(result["throughput"][-1]), flush=True)
            save()

    md += ["## Parity with sentence-transformers (fixture texts, CUDA)", "",
           "| model | texts | mean cosine | min cosine (text) | batch vs alone max abs | CUDA vs CPU max abs (min cosine) | pass |",
           "|---|---|---|---|---|---|---|"]
    for r in result["parity"]:
        md.append(f"| {r['model']} | {r['texts']} | {r['mean_cosine']:.7f} | {r['min_cosine']:.7f} ({r['min_text']}) | "
                  f"{r['batch_vs_alone_max_abs']:.2e} | {r['cuda_vs_cpu_max_abs']:.2e} ({r['cuda_vs_cpu_min_cosine']:.7f}) | {r['pass']} |")
    md += ["", "## Throughput (Debian package texts)", "",
           "| model | implementation | items | items/s | tokens/s | wall s | GPU MB | where the time goes |",
           "|---|---|---|---|---|---|---|---|"]
    for r in result["throughput"]:
        if "error" in r:
            md.append(f"| {r['model']} | {r['impl']} | {r['items']} | failed: {r['error'][:200]!r} | | | | |")
            continue
        # sentence-transformers runs the same texts through the same tokenizer: same tokens.
        tokens = r.get("tokens") or next((x["tokens"] for x in result["throughput"]
                                          if x["model"] == r["model"] and x.get("tokens")), 0)
        split = (f"process {r['process_s']:.1f} s; tokenize {r['tokenize']:.2f} s, forward+pool {r['forward']:.2f} s"
                 if "process_s" in r else f"{r['torch']} on {r['gpu']}")
        md.append(f"| {r['model']} | {r['impl']} | {r['items']} | {r['items'] / r['wall']:.0f} | "
                  f"{(tokens / r['wall']) if tokens else 0:.0f} | {r['wall']:.2f} | {r['gpu_mb']:.0f} | {split} |")
    save()
    print("\n".join(md))


if __name__ == "__main__":
    main()
