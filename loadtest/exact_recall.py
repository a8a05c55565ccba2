"""Exact (brute-force) retrieval quality of a golden set: every catalog item scored per query.

  python3 loadtest/exact_recall.py --golden DIR/golden.json \
      --run old ITEM_VECTORS QUERY_VECTORS [--run new ITEM_VECTORS QUERY_VECTORS ...]

ITEM_VECTORS and QUERY_VECTORS are `embedstream embed` output ({"id", "vector"} lines, vectors
L2-normalized, so the score is the dot product): the catalog (DIR/items.jsonl) and the golden
queries (their "id" and "text"), embedded with one model. Needs numpy.

Per run and consumer, prints the mean of the consumer's metric with a 95% bootstrap interval
(queries resampled), with the definitions `embedstream eval` uses: the query's "exclude" ids
are dropped from the results first; recall@k = relevant ids in the top k / min(|relevant|, k);
precision@1 = whether the top result is relevant. With two or more runs, each later run is
also compared with the first on the same queries: the paired difference of the means and the
relative gap (later / first - 1), each with a paired 95% bootstrap interval. A query with no
vector in a run is an error; ties are broken by catalog order. Bootstrap draws are seeded.
"""

import argparse
import json
import sys

import numpy as np


def load_vectors(path):
    """Ids in file order and their vectors as one float32 matrix."""
    ids, rows = [], []
    with open(path) as f:
        for line in f:
            if line.strip():
                v = json.loads(line)
                ids.append(str(v["id"]))
                rows.append(v["vector"])
    return ids, np.asarray(rows, dtype=np.float32)


def metric_value(metric, k, relevant, results):
    """The metric of one query's ranked result ids (excluded ids already dropped)."""
    top = results[:k]
    if metric.startswith("precision"):
        return float(bool(top) and top[0] in relevant)
    hits = sum(1 for r in top if r in relevant)
    return hits / max(1, min(len(relevant), k))


def per_query(golden, items_path, queries_path, batch=256):
    """{consumer: array of per-query metric values, in golden order}."""
    item_ids, items = load_vectors(items_path)
    q_ids, q_vecs = load_vectors(queries_path)
    q_index = {q: i for i, q in enumerate(q_ids)}
    out = {}
    for consumer, g in golden.items():
        k, metric, queries = g["k"], g["metric"], g["queries"]
        missing = [q["id"] for q in queries if q["id"] not in q_index]
        if missing:
            sys.exit(f"{queries_path}: no vector for {len(missing)} {consumer} queries (e.g. {missing[0]})")
        depth = k + max((len(q["exclude"]) for q in queries), default=0)
        depth = min(depth, len(item_ids))
        values = np.zeros(len(queries))
        for start in range(0, len(queries), batch):
            chunk = queries[start : start + batch]
            scores = q_vecs[[q_index[q["id"]] for q in chunk]] @ items.T
            # Top `depth` per row, ordered by score then catalog position (stable sort).
            part = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
            for row, q in enumerate(chunk):
                cand = part[row]
                cand = cand[np.lexsort((cand, -scores[row, cand]))]
                exclude = set(q["exclude"])
                results = [item_ids[i] for i in cand if item_ids[i] not in exclude]
                values[start + row] = metric_value(metric, k, set(q["relevant"]), results)
        out[consumer] = values
    return out


def bootstrap(stat, n, resamples, rng):
    """95% percentile interval of `stat(indices)` over resampled query indices."""
    draws = np.array([stat(rng.integers(0, n, n)) for _ in range(resamples)])
    return np.percentile(draws, 2.5), np.percentile(draws, 97.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--golden", required=True)
    ap.add_argument("--run", nargs=3, action="append", required=True,
                    metavar=("NAME", "ITEM_VECTORS", "QUERY_VECTORS"))
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    golden = json.load(open(args.golden))
    runs = [(name, per_query(golden, items, queries)) for name, items, queries in args.run]
    catalog = sum(1 for line in open(args.run[0][1]) if line.strip())
    for consumer, g in golden.items():
        n = len(g["queries"])
        print(f"{consumer}: {g['metric']}, {n} queries, {catalog} catalog items")
        base_name, base = runs[0][0], runs[0][1][consumer]
        for name, values in runs:
            v = values[consumer]
            rng = np.random.default_rng(args.seed)
            lo, hi = bootstrap(lambda idx: v[idx].mean(), n, args.resamples, rng)
            print(f"  {name:>12}: {v.mean():.4f}  [95% CI {lo:.4f}, {hi:.4f}]")
        for name, values in runs[1:]:
            v = values[consumer]
            rng = np.random.default_rng(args.seed)
            d = v - base
            dlo, dhi = bootstrap(lambda idx: d[idx].mean(), n, args.resamples, rng)
            rel = v.mean() / base.mean() - 1 if base.mean() > 0 else float("inf")
            rng = np.random.default_rng(args.seed)
            rlo, rhi = bootstrap(lambda idx: v[idx].mean() / max(base[idx].mean(), 1e-12) - 1,
                                 n, args.resamples, rng)
            print(f"  {name} - {base_name}: {d.mean():+.4f}  [95% CI {dlo:+.4f}, {dhi:+.4f}];"
                  f" relative {rel:+.1%}  [95% CI {rlo:+.1%}, {rhi:+.1%}]")


if __name__ == "__main__":
    main()
