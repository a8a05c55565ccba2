"""The cold tier against the same vectors held in memory, side by side in one run, under a
memory limit that the in-memory index does not fit.

  python3 loadtest/cold_bench.py --data DIR [--work .dev/bench/cold] [--limit-shares 0.5,0.33]

Needs root (a cgroup v1 memory controller at /sys/fs/cgroup/memory, and
/proc/sys/vm/drop_caches), `cargo build --release --bin cold-bench`, and DIR from
`loadtest/index_data.py` (base.f32, queries.f32, truth.u32).

1. `cold-bench build` twice (kept in --work and reused): every row in memory (`hot`: the
   shards' mains) and every row in the cold tier (`cold`: memory-mapped segments), 2 shards,
   the sink's default graph settings.
2. `serve hot` and `serve cold`, no limit: the resident memory M of `hot` while it serves is
   what the index takes in memory.
3. Per share in --limit-shares, a memory cgroup limited to share × M (0.5: the index holds 2×
   what fits), the page cache dropped before each run (mapped pages count against the limit):
   - `serve cold` in it: open, then every query of queries.f32 one at a time, twice (the first
     pass reads from disk);
   - `serve hot` in it: the same index held in memory (expected: killed for memory).
Reported per run: recall@10 against truth.u32, p50/p95/p99 per pass, resident memory, the
cgroup's peak and how many times it hit its limit.

Writes the JSON to stdout and, with --report, a markdown table.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "cold-bench")
CGROUP = "/sys/fs/cgroup/memory/embedstream-cold-bench"


def run(args, cgroup_limit=None):
    """Runs cold-bench; returns (exit code, its JSON or None, the cgroup's peak and failcnt)."""
    if cgroup_limit is None:
        proc = subprocess.run([BENCH] + args, capture_output=True, text=True)
        peak = failcnt = None
    else:
        os.makedirs(CGROUP, exist_ok=True)
        write(f"{CGROUP}/memory.force_empty", "0", missing_ok=True)
        write(f"{CGROUP}/memory.limit_in_bytes", str(cgroup_limit))
        write(f"{CGROUP}/memory.max_usage_in_bytes", "0")
        write(f"{CGROUP}/memory.failcnt", "0")
        # The child enters the cgroup before it execs the bench.
        cmd = f'echo $$ > {CGROUP}/cgroup.procs && exec "$0" "$@"'
        proc = subprocess.run(["sh", "-c", cmd, BENCH] + args, capture_output=True, text=True)
        peak = int(read(f"{CGROUP}/memory.max_usage_in_bytes"))
        failcnt = int(read(f"{CGROUP}/memory.failcnt"))
    out = None
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            out = json.loads(line)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-2000:])
    return proc.returncode, out, peak, failcnt


def write(path, value, missing_ok=False):
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        if not missing_ok:
            raise


def read(path):
    with open(path) as f:
        return f.read().strip()


def drop_caches():
    subprocess.run(["sync"], check=True)
    write("/proc/sys/vm/drop_caches", "1")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--work", default=os.path.join(ROOT, ".dev", "bench", "cold"))
    p.add_argument("--limit-shares", default="0.5,0.33")
    p.add_argument("--ef", type=int, default=100)
    p.add_argument("--report")
    a = p.parse_args()

    builds = {}
    for tier in ("hot", "cold"):
        d = os.path.join(a.work, tier)
        if not os.path.isdir(d) or not any(n.endswith(".snap") for n in os.listdir(d)):
            rc, out, _, _ = run(["build", "--data", a.data, "--dir", d, "--tier", tier])
            if rc != 0:
                sys.exit(f"build {tier} failed")
            builds[tier] = out
    serve = lambda tier: ["serve", "--data", a.data, "--dir", os.path.join(a.work, tier),
                          "--tier", tier, "--ef", str(a.ef)]

    results = {"builds": builds, "unlimited": {}, "limited": []}
    for tier in ("hot", "cold"):
        drop_caches()
        rc, out, _, _ = run(serve(tier))
        if rc != 0:
            sys.exit(f"serve {tier} failed")
        results["unlimited"][tier] = out
    in_memory = results["unlimited"]["hot"]["rss_mb"]
    for share in (float(x) for x in a.limit_shares.split(",")):
        limit = int(in_memory * share * 1024 * 1024)
        runs = {"share": share, "limit_bytes": limit}
        for tier in ("cold", "hot"):
            drop_caches()
            rc, out, peak, failcnt = run(serve(tier), cgroup_limit=limit)
            runs[tier] = {
                "exit": rc, "result": out, "cgroup_peak_bytes": peak, "cgroup_failcnt": failcnt,
            }
        results["limited"].append(runs)
    try:
        os.rmdir(CGROUP)
    except OSError:
        pass
    print(json.dumps(results, indent=2))
    if a.report:
        with open(a.report, "w") as f:
            f.write(table(results))


def table(r):
    mb = lambda b: f"{b / 1024 / 1024:.0f} MB"
    lines = [
        "| run | memory limit | items | recall@10 | pass | p50 ms | p95 ms | p99 ms | "
        "RSS MB (peak) | limit hits |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = [(f"{'in memory' if t == 'hot' else 'cold tier'}", "none",
             {"exit": 0, "result": r["unlimited"][t], "cgroup_failcnt": None})
            for t in ("hot", "cold")]
    for limited in r["limited"]:
        limit = f"{mb(limited['limit_bytes'])} ({limited['share']:.2f}×)"
        runs += [("cold tier", limit, limited["cold"]), ("in memory", limit, limited["hot"])]
    for name, limit, run_ in runs:
        res = run_["result"]
        hits = run_["cgroup_failcnt"] if run_["cgroup_failcnt"] is not None else "–"
        if run_["exit"] != 0 or res is None:
            lines.append(f"| {name} | {limit} | – | – | – | – | – | – | "
                         f"killed (exit {run_['exit']}) | {hits} |")
            continue
        for ps in res["passes"]:
            lines.append(
                f"| {name} | {limit} | {res['items']:,} | {ps['recall_at_10']:.3f} | "
                f"{ps['pass'] + 1} | {ps['p50_ms']:.2f} | {ps['p95_ms']:.2f} | "
                f"{ps['p99_ms']:.2f} | {res['rss_mb']:.0f} ({res['peak_rss_mb']:.0f}) | {hits} |")
    lines.append("")
    lines.append("Memory limits are shares of the in-memory index's resident memory while it "
                 f"serves ({r['unlimited']['hot']['rss_mb']:.0f} MB).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
