"""Drift-Adapter evaluation, MiniLM (old index) <- MPNet (new queries): what adapted and fused
reads are worth against both models, and the added latency of the map.

  python3 loadtest/adapter_eval.py                      # the Debian catalog's golden sets
  python3 loadtest/adapter_eval.py --set .dev/golden-wordnet --name wordnet   # any other set

Two regimes. The Debian catalog (`--golden`, from `loadtest/golden_sets.py`; `--catalog` from
`loadtest/debian_catalog.py`), where the two models are close; and any set DIR holding `items.jsonl` and `golden.json` in the same
format (`loadtest/eval_sets.py` builds one from WordNet where MPNet is clearly better).

1. Pairs. Debian: the 1,000 golden-catalog items first, then other packages' short texts (their
   synopsis, or their description's first 24 words) up to N. A set DIR: a seeded sample of N of
   its own items (the paper's setting: the index's own items). Embedded with both models
   (`embedstream embed`, documents); the queries with the query prompt.
2. For each variant (kind × N, `--hidden` for wider MLPs, Procrustes with whitening and/or a
   diagonal scale (`--procrustes-options`), and per kind the largest N plus texts
   like the consumer's queries, `--query-like`, when given): `embedstream adapter train
   --old-vectors --new-vectors --pairs N` (10% held out), then `embedstream adapter eval
   --fuse-weights`: per consumer, with 95% bootstrap intervals over the queries, old/old,
   new/new (a full re-embed), the adapted reads (int8, as served) and fused reads
   (normalize((1 - w) old query + w adapted query)) on the old catalog, each with its recovery
   of new/new and of old/old and its difference with old/old. Latency: one `apply` per query,
   p50/p99 (`adapter-bench`). Search is exact, so the numbers are the spaces', not an ANN's.

Writes loadtest/reports/adapter/{summary,report}[-NAME].{json,md}; intermediate files in
.dev/adapter[-NAME].
"""

import argparse
import json
import os
import random
import shlex
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


def embed(model, inp, out, kind="document"):
    if os.path.exists(out) and sum(1 for _ in open(out)) == sum(1 for _ in open(inp)):
        return
    run([BIN, "embed", "--model", model, "--input-type", kind, "--input", inp, "--output", out])


def query_vectors(golden, folder):
    """{model: FOLDER/queries.<model>.jsonl}: the golden queries (each id once) embedded with
    each model and the query prompt, unless already there."""
    qtexts = os.path.join(folder, "queries.jsonl")
    seen = set()
    with open(qtexts, "w") as f:
        for set_ in json.load(open(golden)).values():
            for q in set_["queries"]:
                if q["id"] not in seen:
                    seen.add(q["id"])
                    f.write(json.dumps({"id": q["id"], "text": q["text"]}) + "\n")
    out = {m: os.path.join(folder, f"queries.{m}.jsonl") for m in (OLD, NEW)}
    for m in (OLD, NEW):
        embed(m, qtexts, out[m], "query")
    return out


def set_inputs(a):
    """(golden.json, {model: items vectors}, {model: query vectors}, {model: pair vectors})."""
    vec = {m: os.path.join(a.work, f"pairs-{m}.jsonl") for m in (OLD, NEW)}
    if a.set is None:
        golden = os.path.join(a.golden, "golden.json")
        texts = os.path.join(a.work, "pair_texts.jsonl")
        if not os.path.exists(texts):
            pair_texts(a.catalog, os.path.join(a.golden, "items.jsonl"), texts, max(a.sizes))
        items = {m: os.path.join(a.work, f"items-{m}.jsonl") for m in (OLD, NEW)}
        queries = query_vectors(golden, a.work)
        for m in (OLD, NEW):
            embed(m, texts, vec[m])
            embed(m, os.path.join(a.golden, "items.jsonl"), items[m])
        # The indexed items first, then the outside pairs.
        pairs = {}
        for m in (OLD, NEW):
            pairs[m] = open(items[m]).read().splitlines() + open(vec[m]).read().splitlines()
        return golden, items, queries, pairs
    golden = os.path.join(a.set, "golden.json")
    items = {m: os.path.join(a.set, f"items.{m}.jsonl") for m in (OLD, NEW)}
    queries = query_vectors(golden, a.set)
    pairs = {}
    for m in (OLD, NEW):
        embed(m, os.path.join(a.set, "items.jsonl"), items[m])
        lines = open(items[m]).read().splitlines()
        random.Random(7).shuffle(lines)
        pairs[m] = lines
    return golden, items, queries, pairs


def ci(e):
    return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--golden", default=os.path.join(ROOT, ".dev", "golden"))
    ap.add_argument("--catalog", default=os.path.join(ROOT, ".dev", "bench", "catalog-attr.jsonl"))
    ap.add_argument("--set", help="a set folder (items.jsonl, golden.json) instead of the Debian golden sets")
    ap.add_argument("--name", default="", help="suffix of the report and work folder")
    ap.add_argument("--work")
    ap.add_argument("--pairs", default="1000,5000,20000")
    ap.add_argument("--kinds", default="procrustes,affine,mlp")
    ap.add_argument("--wide-hidden", type=int, default=1024, help="one more MLP per N with this hidden size (0: none)")
    ap.add_argument("--fuse-weights", default="0.3,0.5,0.7")
    ap.add_argument("--procrustes-options", default="whiten=0.01;diag-scale;whiten=0.01,diag-scale",
                    help="more Procrustes variants per N, `;`-separated, each `,`-separated options of "
                         "`adapter train` without their dashes (whiten=EPS, diag-scale); empty: none")
    ap.add_argument("--query-like", help="texts like the consumer's queries ({id, text} lines) for one more "
                    "variant per kind: the largest pair count plus these (a set folder's query_like.jsonl by default)")
    ap.add_argument("--out", default=os.path.join(ROOT, "loadtest", "reports", "adapter"))
    a = ap.parse_args()
    suffix = f"-{a.name}" if a.name else ""
    a.work = a.work or os.path.join(ROOT, ".dev", f"adapter{suffix}")
    os.makedirs(a.work, exist_ok=True)
    a.sizes = [int(x) for x in a.pairs.split(",")]
    golden, items, queries, pairs = set_inputs(a)
    artifacts = os.path.join(a.work, "artifacts")
    if os.path.isdir(artifacts):
        for f in os.listdir(artifacts):
            os.remove(os.path.join(artifacts, f))
    available = min(len(pairs[OLD]), len(pairs[NEW]))
    sizes = sorted({min(n, available) for n in a.sizes})
    mixes = {}
    for n in sizes:
        for m in (OLD, NEW):
            path = os.path.join(a.work, f"pairs-{n}-{m}.part.jsonl")
            with open(path, "w") as f:
                f.write("\n".join(pairs[m][:n]) + "\n")
            mixes[(n, m)] = path
    variants = [(kind, n, None, False, []) for kind in a.kinds.split(",") for n in sizes]
    if a.wide_hidden:
        variants += [("mlp", n, a.wide_hidden, False, []) for n in sizes]
    options = []
    for option in filter(None, a.procrustes_options.split(";")):
        flags = []
        for o in option.split(","):
            flags += ["--" + o.split("=")[0]] + (o.split("=", 1)[1:] if "=" in o else [])
        options.append(flags)
    variants += [("procrustes", n, None, False, flags) for flags in options for n in sizes]
    query_like = a.query_like or (os.path.join(a.set, "query_like.jsonl") if a.set else None)
    if query_like and os.path.exists(query_like):
        # The largest item sample plus texts like the queries (a query log's), embedded as queries.
        n = sizes[-1]
        for m in (OLD, NEW):
            ql = os.path.join(a.work, f"query-like-{m}.jsonl")
            embed(m, query_like, ql, "query")
            path = os.path.join(a.work, f"pairs-{n}-ql-{m}.part.jsonl")
            with open(path, "w") as f:
                f.write("\n".join(pairs[m][:n] + open(ql).read().splitlines()) + "\n")
            mixes[(f"{n}+ql", m)] = path
        variants += [(kind, f"{n}+ql", None, True, []) for kind in a.kinds.split(",")]
        variants += [("procrustes", f"{n}+ql", None, True, flags) for flags in options]
    names = []
    for kind, n, hidden, ql, flags in variants:
        t = time.time()
        extra = (["--hidden", str(hidden)] if hidden else []) + flags
        count = sum(1 for _ in open(mixes[(n, OLD)]))
        out = run([BIN, "adapter", "train", "--adapters-dir", artifacts, "--from", OLD, "--to", NEW,
                   "--kind", kind, "--old-vectors", mixes[(n, OLD)], "--new-vectors", mixes[(n, NEW)],
                   "--pairs", str(count), "--json", *extra], capture_output=True, text=True).stdout
        meta = json.loads(out)
        meta["wall_seconds"] = time.time() - t
        meta["variant"] = (f"{kind}{f' (hidden {hidden})' if hidden else ''}{' + query-like texts' if ql else ''}"
                           f"{f' ({chr(32).join(flags)})' if flags else ''}")
        names.append(meta)
    res = run([BIN, "adapter", "eval", "--adapters-dir", artifacts, "--adapters", ",".join(m["name"] for m in names),
               "--golden", golden, "--old-items", items[OLD], "--new-items", items[NEW],
               "--old-queries", queries[OLD], "--new-queries", queries[NEW],
               "--fuse-weights", a.fuse_weights, "--json"],
              capture_output=True, text=True).stdout
    rows = json.loads(res)
    timings = json.loads(run([os.path.join(ROOT, "target", "release", "adapter-bench"), "--adapters-dir", artifacts,
                              "--adapters", ",".join(m["name"] for m in names), "--queries", queries[NEW]],
                             capture_output=True, text=True).stdout)
    for r, t, m in zip(rows, timings, names):
        r.update({k: v for k, v in t.items() if k.endswith(("_p50", "_p99"))})
        r["fit_seconds"] = m["fit_seconds"]
        r["params"] = m["params"]
        r["variant"] = m["variant"]
    os.makedirs(a.out, exist_ok=True)
    command = shlex.join(["python3", "loadtest/adapter_eval.py", *sys.argv[1:]])
    with open(os.path.join(a.out, f"summary{suffix}.json"), "w") as f:
        json.dump({"old": OLD, "new": NEW, "command": command, "cpu_count": os.cpu_count(), "rows": rows}, f, indent=1)
    first = rows[0]["consumers"]
    lines = [
        f"# Drift-Adapter evaluation{f' ({a.name})' if a.name else ' (Debian catalog)'}: MiniLM (old index) <- MPNet (new queries)",
        "",
        f"`{command}` ({os.cpu_count()} cores). Exact search; 95% bootstrap intervals over the queries.",
        "Adapted = MPNet queries mapped into MiniLM's space (int8, as served); fused@w = normalize((1 - w) MiniLM query",
        "+ w adapted query); ÷ new = recovery of a full re-embed (new/new), ÷ old = ratio to keeping MiniLM for queries",
        "(old/old). A row is **worse** than old/old when its difference's interval is below 0.",
        "",
        "| consumer | metric | queries | old/old (MiniLM) | new/new (MPNet re-embed) |",
        "|---|---|---|---|---|",
    ]
    for c in first:
        lines.append(f"| {c['consumer']} | {c['metric']} | {c['queries']} | {ci(c['old'])} | {ci(c['full_reembed'])} |")
    for c in first:
        lines += ["", f"### {c['consumer']} ({c['metric']})", "",
                  "| variant | pairs | held-out cos | arm | metric | − old/old | ÷ new | ÷ old |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            rc = next(x for x in r["consumers"] if x["consumer"] == c["consumer"])
            for arm in rc["arms"]:
                if arm["arm"] == "adapted_f32":
                    continue
                d = arm["vs_old"]
                mark = " **worse**" if d["ci_high"] < 0 else (" better" if d["ci_low"] > 0 else "")
                lines.append(f"| {r['variant']} | {r['pairs']} | {r['holdout_cosine']:.4f} | {arm['arm']} | "
                             f"{ci(arm['metric'])} | {d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]{mark} | "
                             f"{arm['recovery_new']['value']:.3f} | {arm['recovery_old']['value']:.3f} |")
    lines += ["", "| variant | pairs | int8 vs f32 cosine, min | apply p50 / p99 µs | f32 p50 / p99 µs | fit s |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['pairs']} | {r['int8_cosine_min']:.6f} | "
                     f"{r['latency_us_p50']:.1f} / {r['latency_us_p99']:.1f} | "
                     f"{r['exact_latency_us_p50']:.1f} / {r['exact_latency_us_p99']:.1f} | {r['fit_seconds']:.1f} |")
    report = os.path.join(a.out, f"report{suffix}.md")
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
