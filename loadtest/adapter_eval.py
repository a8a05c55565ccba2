"""Drift-Adapter evaluation: recovery ratio and added latency, MiniLM -> MPNet.

  python3 loadtest/adapter_eval.py [--golden .dev/golden] [--catalog .dev/bench/catalog-attr.jsonl]

Needs the golden sets (`loadtest/golden_sets.py`, which also caches the golden queries'
vectors per model in GOLDEN/vectors/) and the Debian catalog (`loadtest/debian_catalog.py`).

1. Training pairs: 20,000 catalog packages that are not in the golden catalog, alternately
   their synopsis and the first 24 words of their description (short texts: MPNet embeds
   ~4 texts/s of full descriptions on 2 cores), embedded with both models (`embedstream embed`).
2. The golden catalog (1,000 items, long descriptions) embedded with both models: the old
   index (MiniLM) and the full re-embed (MPNet).
3. Pairs for N: the paper's setting, a sample of the index's own items: the 1,000 golden-catalog
   items first, then N - 1,000 of the other packages (N = 1k is the catalog alone). None of the
   golden queries' texts is in the pairs (search and ads queries are synopses, held out of the
   catalog texts; recsys and dedup queries are catalog items, which the results exclude).
4. For each kind (procrustes, affine, mlp) and N in {1k, 5k, 20k}: `embedstream adapter train
   --old-vectors --new-vectors --pairs N` (10% held out), then `embedstream adapter eval`:
   per consumer, the metric with MiniLM queries on the MiniLM index (old), MPNet queries on the
   MPNet index (full re-embed), MPNet queries mapped by the adapter on the MiniLM index
   (adapter); recovery = adapter / full re-embed; latency = one `apply` per query, p50/p99.
   Search is exact (brute force), so the numbers are the spaces', not an ANN's.

Writes loadtest/reports/adapter/{summary.json,report.md}; intermediate files in .dev/adapter.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "embedstream")
OLD, NEW = "minilm-l6-v2@1", "mpnet-base-v2@1"


def run(args, **kw):
    print("+", " ".join(args), file=sys.stderr, flush=True)
    return subprocess.run(args, check=True, **kw)


def pair_texts(catalog, golden_items, out, n):
    held = {json.loads(l)["id"] for l in open(golden_items)}
    cat = [json.loads(l) for l in open(catalog)]
    pool = [c for c in cat if c["id"] not in held]
    random.Random(7).shuffle(pool)
    seen, rows = set(), []
    for c in pool:
        title = c["title"]
        desc = c["text"][len(title) + 2:] if c["text"].startswith(title) else c["text"]
        t = title if len(rows) % 2 == 0 else " ".join(desc.split()[:24])
        if not t.strip() or t in seen:
            continue
        seen.add(t)
        rows.append({"id": c["id"], "text": t})
        if len(rows) == n:
            break
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def embed(model, inp, out):
    if os.path.exists(out) and sum(1 for _ in open(out)) == sum(1 for _ in open(inp)):
        return
    run([BIN, "embed", "--model", model, "--input", inp, "--output", out])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--golden", default=os.path.join(ROOT, ".dev", "golden"))
    ap.add_argument("--catalog", default=os.path.join(ROOT, ".dev", "bench", "catalog-attr.jsonl"))
    ap.add_argument("--work", default=os.path.join(ROOT, ".dev", "adapter"))
    ap.add_argument("--pairs", default="1000,5000,20000")
    ap.add_argument("--kinds", default="procrustes,affine,mlp")
    ap.add_argument("--out", default=os.path.join(ROOT, "loadtest", "reports", "adapter"))
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    sizes = [int(x) for x in a.pairs.split(",")]
    texts = os.path.join(a.work, "pair_texts.jsonl")
    if not os.path.exists(texts):
        pair_texts(a.catalog, os.path.join(a.golden, "items.jsonl"), texts, max(sizes))
    vec = {m: os.path.join(a.work, f"{m}.jsonl") for m in (OLD, NEW)}
    items = {m: os.path.join(a.work, f"items-{m}.jsonl") for m in (OLD, NEW)}
    for m in (OLD, NEW):
        embed(m, texts, vec[m])
        embed(m, os.path.join(a.golden, "items.jsonl"), items[m])
    artifacts = os.path.join(a.work, "artifacts")
    if os.path.isdir(artifacts):
        for f in os.listdir(artifacts):
            os.remove(os.path.join(artifacts, f))
    names = []
    mixes = {}
    for n in sizes:
        for m in (OLD, NEW):
            path = os.path.join(a.work, f"pairs-{n}-{m}.jsonl")
            corpus = open(items[m]).read().splitlines()
            others = open(vec[m]).read().splitlines()
            with open(path, "w") as f:
                f.write("\n".join(corpus + others[:max(0, n - len(corpus))]) + "\n")
            mixes[(n, m)] = path
    for kind in a.kinds.split(","):
        for n in sizes:
            t = time.time()
            out = run([BIN, "adapter", "train", "--adapters-dir", artifacts, "--from", OLD, "--to", NEW,
                       "--kind", kind, "--old-vectors", mixes[(n, OLD)], "--new-vectors", mixes[(n, NEW)],
                       "--pairs", str(n), "--json"], capture_output=True, text=True).stdout
            meta = json.loads(out)
            meta["wall_seconds"] = time.time() - t
            names.append(meta)
    res = run([BIN, "adapter", "eval", "--adapters-dir", artifacts, "--adapters", ",".join(m["name"] for m in names),
               "--golden", os.path.join(a.golden, "golden.json"), "--old-items", items[OLD], "--new-items", items[NEW],
               "--old-queries", os.path.join(a.golden, "vectors", f"{OLD}.jsonl"),
               "--new-queries", os.path.join(a.golden, "vectors", f"{NEW}.jsonl"), "--json"],
              capture_output=True, text=True).stdout
    rows = json.loads(res)
    timings = json.loads(run([os.path.join(ROOT, "target", "release", "adapter-bench"), "--adapters-dir", artifacts,
                              "--adapters", ",".join(m["name"] for m in names),
                              "--queries", os.path.join(a.golden, "vectors", f"{NEW}.jsonl")],
                             capture_output=True, text=True).stdout)
    for r, t in zip(rows, timings):
        r.update({k: v for k, v in t.items() if k.endswith(("_p50", "_p99"))})
    for r, m in zip(rows, names):
        r["fit_seconds"] = m["fit_seconds"]
        r["params"] = m["params"]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump({"old": OLD, "new": NEW, "cpu_count": os.cpu_count(), "rows": rows}, f, indent=1)
    consumers = [c["consumer"] for c in rows[0]["consumers"]]
    lines = [
        "# Drift-Adapter evaluation: MiniLM (old index) <- MPNet (new queries)",
        "",
        "`python3 loadtest/adapter_eval.py` (2 cores; golden sets of `loadtest/golden_sets.py`, 1,000 items).",
        "Pairs: the 1,000 indexed items, then other Debian packages (short texts) up to N; 10% held out.",
        "Exact search, so the numbers are the spaces'. Recovery = adapter metric / full re-embed metric;",
        "latency = one `apply` (map + normalize) per query, single thread, back to back over the golden",
        "queries. The sink serves with int8 products (`apply`); f32 (`apply --exact`) is shown beside it.",
        "",
        "| consumer | metric | old (MiniLM) | full re-embed (MPNet) |",
        "|---|---|---|---|",
    ]
    for c in rows[0]["consumers"]:
        lines.append(f"| {c['consumer']} | {c['metric']} | {c['old']:.3f} | {c['full_reembed']:.3f} |")
    lines += ["", "| kind | pairs | held-out cosine | " + " | ".join(f"{c} (recovery)" for c in consumers)
              + " | mean recovery (f32) | int8 vs f32 cosine, min | apply p50 / p99 µs | f32 p50 / p99 µs | fit s |",
              "|---|---|---|" + "---|" * len(consumers) + "---|---|---|---|---|"]
    for r in rows:
        cells = " | ".join(f"{c['adapter']:.3f} ({c['recovery']:.3f})" for c in r["consumers"])
        hc = r["holdout_cosine"]
        lines.append(f"| {r['kind']} | {r['pairs']} | {hc:.4f} | {cells} | {r['mean_recovery']:.3f} "
                     f"({r['mean_recovery_exact']:.3f}) | {r['int8_cosine_min']:.6f} | "
                     f"{r['latency_us_p50']:.1f} / {r['latency_us_p99']:.1f} | "
                     f"{r['exact_latency_us_p50']:.1f} / {r['exact_latency_us_p99']:.1f} | {r['fit_seconds']:.1f} |")
    report = os.path.join(a.out, "report.md")
    # The hand-written reading of the numbers (from "## Reading it" on) is kept across runs.
    reading = ""
    if os.path.exists(report):
        old = open(report).read()
        if "## Reading it" in old:
            reading = "\n" + old[old.index("## Reading it"):]
    with open(report, "w") as f:
        f.write("\n".join(lines) + "\n" + reading)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
