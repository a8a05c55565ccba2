"""Canary drill, repeated runs: how fast the online gate stops a damaged model version, how often
it alarms on an undamaged one, and what it says about a better one.

  .dev/benchvenv/bin/python loadtest/canary_drill.py --data .dev/golden-wordnet --out loadtest/reports/drill

Needs `cargo build --release -p embedstream-loadtest --bin canary-sim`, numpy, and matplotlib for
the plots. DATA holds a golden set (`golden.json`: per consumer, queries with their relevant item
ids) and the real vectors of its items and queries under each model
(`items.<model>.jsonl`, `queries.<model>.jsonl`, `{"id", "vector"}` lines), as
`loadtest/eval_sets.py` writes them.

Arms, each a ranking of every query of `--consumer` (top 10 by inner product, as the index
answers):

- `old`: the old model (control in every scenario).
- `new`: the new model.
- `damaged-<sigma>`: the old model after a bad push that drops L2 normalization on the write
  path: each item vector comes out scaled by a factor that depends on its text (log-normal,
  sigma from `--damage-sigma`), queries stay normalized — a silent normalization bug. The
  vectors point the same way; only the inner products are skewed.

Scenarios, each `--runs` independent runs of `canary-sim` (the product's join and online gate,
judged every 100 exposures; users click by the position-based model):

- A/A (old vs old): every REGRESSION or PARITY is a false alarm.
- bad push (old vs damaged-<sigma>): exposures until REGRESSION.
- better model (old vs new), with the offline gate's gain for the parity check.
- stale golden set (old vs old, but with the better model's offline gain): the gain the
  golden set promised does not show online, so the parity check should halt it.

Writes OUT/canary.md, OUT/canary.json and OUT/canary-*.png.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from exact_recall import load_vectors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = os.path.join(ROOT, "target", "release", "canary-sim")
OLD, NEW = "minilm-l6-v2@1", "mpnet-base-v2@1"


def top_k(queries, items, ids, k=10):
    out = []
    for start in range(0, len(queries), 256):
        scores = queries[start:start + 256] @ items.T
        best = np.argpartition(-scores, k, axis=1)[:, :k]
        for row, cand in zip(scores, best):
            order = cand[np.argsort(-row[cand])]
            out.append([ids[i] for i in order])
    return out


def recall(rankings, relevant, k=10):
    return float(np.mean([len(set(r[:k]) & set(rel)) / max(1, min(len(rel), k))
                          for r, rel in zip(rankings, relevant)]))


def rankings_for(data, consumer, sigmas, seed):
    golden = json.load(open(os.path.join(data, "golden.json")))[consumer]
    queries = golden["queries"]
    relevant = [q["relevant"] for q in queries]
    arms = {}
    for name, model in (("old", OLD), ("new", NEW)):
        item_ids, items = load_vectors(os.path.join(data, f"items.{model}.jsonl"))
        q_ids, q_vecs = load_vectors(os.path.join(data, f"queries.{model}.jsonl"))
        by_id = {q: i for i, q in enumerate(q_ids)}
        qv = q_vecs[[by_id[q["id"]] for q in queries]]
        arms[name] = top_k(qv, items, item_ids)
        if name == "old":
            noise = np.random.default_rng(seed).normal(0.0, 1.0, size=(len(items), 1))
            for sigma in sigmas:
                scale = np.exp(sigma * noise).astype(np.float32)
                arms[f"damaged-{sigma}"] = top_k(qv, items * scale, item_ids)
    return {"relevant": relevant, "arms": arms}


def simulate(path, control, canary, runs, max_exposures, offline_gain=None):
    cmd = [SIM, "--rankings", path, "--control", control, "--canary", canary, "--runs", str(runs),
           "--max-exposures", str(max_exposures)]
    if offline_gain is not None:
        cmd.append(f"--offline-gain={offline_gain}")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def summary(results):
    verdicts = {}
    for r in results:
        verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
    decided = [r["decided_at_exposures"] for r in results if r["verdict"] in ("Regression", "Parity")]
    passed = [r["first_passed_at_exposures"] for r in results if r["first_passed_at_exposures"] is not None]
    q = lambda xs, p: int(np.percentile(xs, p)) if xs else None
    return {
        "runs": len(results),
        "verdicts": verdicts,
        "alarms": len(decided),
        "alarm_rate": len(decided) / len(results),
        "decided_median": q(decided, 50), "decided_p95": q(decided, 95), "decided_max": max(decided) if decided else None,
        "passed_median": q(passed, 50), "passed_p95": q(passed, 95),
        "ctr_control": float(np.mean([r["ctr_control"] for r in results])),
        "ctr_canary": float(np.mean([r["ctr_canary"] for r in results])),
    }


def plot(out, scenarios):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no plots", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 3.6), sharey=False)
    for ax, (name, s) in zip(axes, scenarios.items()):
        t = s["results"][0]["trajectory"] or []
        if t:
            n = [p[0] for p in t]
            ax.fill_between(n, [p[2] * 100 for p in t], [p[3] * 100 for p in t], alpha=0.3, label="always-valid 95% interval")
            ax.plot(n, [p[1] * 100 for p in t], label="canary − control")
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(-s["margin"] * 100, color="red", lw=0.8, ls="--", label="−margin")
        ax.set_title(name)
        ax.set_xlabel("final exposures (both arms)")
        ax.set_ylabel("CTR difference (points)")
        ax.set_ylim(-8, 8)
    axes[0].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "canary-interval.png"), dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, s in scenarios.items():
        decided = sorted(r["decided_at_exposures"] for r in s["results"]
                         if r["verdict"] in ("Regression", "Parity"))
        if decided:
            ax.step([0] + decided, np.arange(0, len(decided) + 1) / len(s["results"]), where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("final exposures (both arms) when the gate stopped the canary")
    ax.set_ylabel("share of runs stopped")
    ax.set_title("time to REGRESSION or PARITY")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "canary-detection.png"), dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, ".dev", "golden-wordnet"))
    ap.add_argument("--consumer", default="search")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--max-exposures", type=int, default=500_000)
    ap.add_argument("--damage-sigma", default="0.5,0.1", help="comma-separated: one bad push per value")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(ROOT, "loadtest", "reports", "drill"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sigmas = [float(x) for x in args.damage_sigma.split(",")]
    rankings = rankings_for(args.data, args.consumer, sigmas, args.seed)
    path = os.path.join(args.out, "canary-rankings.json")
    with open(path, "w") as f:
        json.dump(rankings, f)
    rec = {arm: recall(r, rankings["relevant"]) for arm, r in rankings["arms"].items()}
    margin = 0.005
    scenarios = {"A/A": dict(control="old", canary="old", gain=None)}
    for sigma in sigmas:
        arm = f"damaged-{sigma}"
        scenarios[f"bad push σ={sigma}"] = dict(control="old", canary=arm, gain=rec[arm] - rec["old"])
    scenarios["better model"] = dict(control="old", canary="new", gain=rec["new"] - rec["old"])
    # The golden set promised the better model's gain; production serves the old model's
    # answers in both arms, so no gain shows online.
    scenarios["stale golden set"] = dict(control="old", canary="old", gain=rec["new"] - rec["old"])
    for name, s in scenarios.items():
        s["results"] = simulate(path, s["control"], s["canary"], args.runs, args.max_exposures, s["gain"])
        s["summary"] = summary(s["results"])
        s["margin"] = margin
        print(name, json.dumps(s["summary"]), file=sys.stderr)
    os.remove(path)
    plot(args.out, scenarios)
    report = {
        "consumer": args.consumer, "queries": len(rankings["relevant"]), "runs": args.runs,
        "max_exposures": args.max_exposures, "damage_sigmas": sigmas, "recall@10": rec,
        "scenarios": {n: {"control": s["control"], "canary": s["canary"], "offline_gain": s["gain"], **s["summary"]}
                      for n, s in scenarios.items()},
    }
    with open(os.path.join(args.out, "canary.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
