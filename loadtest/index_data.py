"""The vectors the index benchmarks run on: real MiniLM embeddings of Debian's catalog and, for
sizes beyond it, their synthetic extension with the same distribution.

  python loadtest/index_data.py --vectors FILE.jsonl --n 1000000 --out DIR [--queries 1000]

FILE.jsonl is `embedstream embed` output ({"id", "vector"} per line) over
`debian_catalog.py`'s texts. Writes to DIR:
  base.f32     n x dim little-endian f32, L2-normalized; row i is item "i<row>"
  queries.f32  q x dim: real catalog vectors held out of base (never indexed)
  truth.u32    q x 100: exact top-100 rows of base by dot product, best first
  meta.json    n, dim, queries, real rows, how the extension was made, its check

Extension (only when n > the real rows left after the queries): each synthetic vector is a
real one plus Gaussian noise with the real vectors' covariance, scaled by sigma, then
normalized: v = normalize(x_r + sigma * L z), L L^T = Cov(real), z ~ N(0, I), x_r a real vector
drawn uniformly. sigma is chosen (bisection on a sample) so that the median cosine between a
synthetic vector and its source x_r equals the median nearest-neighbour cosine among real
vectors: a synthetic point stands to its source as a real item stands to its nearest
neighbour, and the mixture keeps the catalog's clusters and covariance. meta.json records
the nearest-neighbour cosine medians of real vectors before and after the extension.
Needs numpy (`.dev/benchvenv`, see loadtest/README.md).
"""

import argparse
import json
import os
import sys
import time

import numpy as np


def load(path):
    ids, rows = [], []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            ids.append(rec["id"])
            rows.append(rec["vector"])
    x = np.asarray(rows, dtype=np.float32)
    return ids, x / np.linalg.norm(x, axis=1, keepdims=True)


def nn_cosine(points, against, exclude_self=False, chunk=2048, block=200_000):
    """Per point: the best cosine in `against` (excluding the identical row when asked), read
    in blocks of rows so that `against` may be a memory-mapped file larger than memory."""
    out = np.full(len(points), -2.0, dtype=np.float32)
    for b in range(0, len(against), block):
        rows = np.asarray(against[b : b + block])
        for s in range(0, len(points), chunk):
            sims = points[s : s + chunk] @ rows.T
            if exclude_self:
                sims[sims > 0.99999] = -2.0
            np.maximum(out[s : s + chunk], sims.max(axis=1), out=out[s : s + chunk])
    return out


def synthesize(real, count, sigma, chol, rng):
    src = rng.integers(0, len(real), size=count)
    z = rng.standard_normal((count, real.shape[1]), dtype=np.float32)
    return perturb(real[src], z, sigma, chol), src


def perturb(x, z, sigma, chol):
    v = x + sigma * (z @ chol.T)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def write_extended(path, real, n, sigma, chol, rng, chunk=100_000):
    """base.f32 as `concatenate([real, synthesize(real, n - len(real))])[rng.permutation(n)]`
    would make it, with the same draws from `rng`, but built a chunk of rows at a time in a
    memory-mapped file: the noise is drawn twice from one saved generator state, once to
    reach the permutation's draws and once to make the rows."""
    count, dim = n - len(real), real.shape[1]
    src = rng.integers(0, len(real), size=count)
    state = rng.bit_generator.state
    for s in range(0, count, chunk):
        rng.standard_normal((min(chunk, count - s), dim), dtype=np.float32)
    perm = rng.permutation(n)
    after = rng.bit_generator.state
    where = np.empty(n, dtype=np.int64)
    where[perm] = np.arange(n)
    base = np.memmap(path, dtype="<f4", mode="w+", shape=(n, dim))
    order = np.argsort(where[: len(real)])
    base[where[: len(real)][order]] = real[order]
    rng.bit_generator.state = state
    for s in range(0, count, chunk):
        z = rng.standard_normal((min(chunk, count - s), dim), dtype=np.float32)
        rows = perturb(real[src[s : s + len(z)]], z, sigma, chol)
        at = where[len(real) + s : len(real) + s + len(z)]
        order = np.argsort(at)
        base[at[order]] = rows[order]
    rng.bit_generator.state = after
    base.flush()
    return base


def pick_sigma(real, chol, rng, target):
    """Bisection: the median cosine between a synthetic vector and its source equals `target`."""
    sample = real[rng.choice(len(real), size=min(5000, len(real)), replace=False)]
    lo, hi = 0.0, 8.0
    for _ in range(16):
        mid = (lo + hi) / 2
        syn, src = synthesize(sample, len(sample), mid, chol, rng)
        med = float(np.median(np.sum(syn * sample[src], axis=1)))
        if med > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2, med


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", required=True)
    ap.add_argument("--n", type=int, required=True, help="rows of base; 0: every real vector, no extension")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.time()
    _, x = load(args.vectors)
    # Identical texts embed identically; keep one of each so "held out" means unseen.
    x = np.unique(x.round(6), axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x[rng.permutation(len(x))].astype(np.float32)
    queries, real = x[: args.queries], x[args.queries :]
    dim = x.shape[1]
    args.n = args.n or len(real)
    meta = {"dim": dim, "queries": len(queries), "real_rows": int(min(len(real), args.n))}
    os.makedirs(args.out, exist_ok=True)
    base_path = os.path.join(args.out, "base.f32")
    if args.n <= len(real):
        base = real[: args.n]
        meta["extension"] = None
        base.astype("<f4").tofile(base_path)
    else:
        sample = real[rng.choice(len(real), size=min(20000, len(real)), replace=False)]
        target = float(np.median(nn_cosine(sample, sample, exclude_self=True)))
        cov = np.cov(real, rowvar=False).astype(np.float64)
        chol = np.linalg.cholesky(cov + 1e-8 * np.eye(dim)).astype(np.float32)
        sigma, achieved = pick_sigma(real, chol, rng, target)
        base = write_extended(base_path, real, args.n, sigma, chol, rng)
        check = sample[:2000]
        meta["extension"] = {
            "method": "x_r + sigma * L z, normalized; L L^T = Cov(real); sigma by bisection",
            "sigma": sigma,
            "median_nn_cosine_real": target,
            "median_cosine_synthetic_to_source": achieved,
            "median_nn_cosine_real_in_extended": float(np.median(nn_cosine(check, base, exclude_self=True))),
        }
    meta["n"] = len(base)
    queries.astype("<f4").tofile(os.path.join(args.out, "queries.f32"))
    truth = np.empty((len(queries), 100), dtype=np.uint32)
    best_vals = np.full((len(queries), 100), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 100), dtype=np.int64)
    for s in range(0, len(base), 100_000):
        sims = queries @ np.asarray(base[s : s + 100_000]).T
        top = np.argpartition(-sims, 100, axis=1)[:, :100] if sims.shape[1] > 100 else np.argsort(-sims, axis=1)
        vals = np.take_along_axis(sims, top, axis=1)
        allv = np.concatenate([best_vals, vals], axis=1)
        allr = np.concatenate([best_rows, top + s], axis=1)
        keep = np.argsort(-allv, axis=1, kind="stable")[:, :100]
        best_vals = np.take_along_axis(allv, keep, axis=1)
        best_rows = np.take_along_axis(allr, keep, axis=1)
    truth[:] = best_rows
    truth.astype("<u4").tofile(os.path.join(args.out, "truth.u32"))
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(json.dumps(meta), f"({time.time() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
