"""Migration drill: a Debian catalog embedded with MiniLM, golden queries running throughout,
then the whole migration to MPNet — dual-write, backfill, weights 10% → 50% → 90%, gate,
cutover, a rollback and a re-cutover, decommission.

  .dev/benchvenv/bin/python loadtest/migration_drill.py --items 1500 --out loadtest/reports/drill

Needs the broker and registry (`compose/dev infra`), `cargo build --release -p
embedstream-pipeline`, the catalog with source packages (`loadtest/debian_catalog.py --out
.dev/bench/catalog-attr.jsonl`) and matplotlib in the Python that runs it (for the plot).
Every process is the real one (`embedstream embed-stage`, two `embedstream sink`s, `embedstream
router`, `embedstream migrate backfill`), under a fresh topic prefix. Operator actions go
through the admin API with a bearer token (`migrate --admin-url`), except the gate and the
backfill, which run where Kafka is.

Queries: rounds of every golden query of every consumer (`loadtest/golden_sets.py`) through the
router with the consumer's live read plan, back to back, 4 in flight. Each round gives each
consumer's metric; it is compared with the first (old-only) round query by query (paired
bootstrap, 95%), so "below the baseline by more than the confidence interval" has a precise
meaning: the interval of the difference lies entirely below 0.

Writes OUT/drill.json (every query, every action), OUT/latest.md and OUT/timeline.png
(OUT/report.md keeps the current figures and their history).
"""

import argparse
import concurrent.futures as cf
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "embedstream")
OLD, NEW = "minilm-l6-v2@1", "mpnet-base-v2@1"
TOKEN = "drill-token"


def http(method, url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except Exception as e:  # noqa: BLE001 - a failed query is data here
        return 0, str(e)


class Drill:
    def __init__(self, args):
        self.args = args
        self.t0 = time.time()
        self.prefix = f"drill{int(self.t0)}"
        self.out = args.out
        self.logs = os.path.join(self.out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.data = os.path.join(ROOT, ".dev", "drill", self.prefix)
        os.makedirs(self.data, exist_ok=True)
        self.procs = {}
        self.checks = []
        self.blends = None
        self.events = []
        self.queries = []
        self.lock = threading.Lock()
        self.env = dict(os.environ, NO_COLOR="1", RUST_LOG="info", EMBEDSTREAM_ADMIN_TOKEN=TOKEN,
                        EMBEDSTREAM_TOPIC_PREFIX=self.prefix, EMBEDSTREAM_PARTITIONS="3")
        self.env.setdefault("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
        self.env.setdefault("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081")
        self.router = f"http://127.0.0.1:{args.port}"
        self.sinks = {OLD: args.port + 1, NEW: args.port + 2}

    def now(self):
        return time.time() - self.t0

    def event(self, what, **kw):
        e = {"t": round(self.now(), 2), "event": what, **kw}
        self.events.append(e)
        print(f"[{e['t']:7.1f}s] {what} {kw if kw else ''}", flush=True)

    def spawn(self, name, args):
        log = open(os.path.join(self.logs, f"{name}.log"), "w")
        self.procs[name] = subprocess.Popen([BIN, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self.procs[name]

    def run(self, args, check=True):
        r = subprocess.run([BIN, *args], env=self.env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise SystemExit(f"embedstream {' '.join(args)} failed: {r.stderr[-2000:]}")
        return r

    def admin(self, *args):
        r = self.run(["migrate", "--admin-url", self.router, "--token", TOKEN, *args], check=False)
        return r.returncode == 0, (r.stdout + r.stderr).strip()[-500:]

    def stop(self, name):
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()

    def items_in(self, version):
        status, body = http("GET", f"{self.router}/v1/versions")
        if status != 200 or not isinstance(body, dict) or not body.get(version):
            return -1
        return body[version].get("items", -1)

    def wait_items(self, version, n, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.items_in(version) >= n:
                return True
            time.sleep(1)
        return False

    # ---- queries ----------------------------------------------------------------------

    def load_golden(self):
        g = json.load(open(os.path.join(self.gdir, "golden.json")))
        vecs = {}
        for v in (OLD, NEW):
            vecs[v] = {}
            for line in open(os.path.join(self.gdir, "vectors", f"{v}.jsonl")):
                o = json.loads(line)
                vecs[v][o["id"]] = o["vector"]
        work = []
        for consumer, s in g.items():
            for q in s["queries"]:
                work.append((consumer, s["metric"], s["k"], q))
        random.Random(1).shuffle(work)
        self.golden, self.work, self.vecs = g, work, vecs

    def one(self, round_no, consumer, metric, k, q):
        body = {"consumer": consumer, "k": k + len(q["exclude"]),
                "vectors": {OLD: self.vecs[OLD][q["id"]], NEW: self.vecs[NEW][q["id"]]}}
        t = time.time()
        status, resp = http("POST", f"{self.router}/v1/search", body)
        ms = (time.time() - t) * 1000
        value, degraded, plan = None, [], None
        if status == 200:
            ids = [r["item_id"] for r in resp["results"] if r["item_id"] not in q["exclude"]][:k]
            rel = set(q["relevant"])
            if metric.startswith("precision"):
                value = 1.0 if ids and ids[0] in rel else 0.0
            else:
                value = len([i for i in ids if i in rel]) / max(1, min(len(rel), k))
            degraded, plan = resp.get("degraded", []), resp.get("plan")
        return {"round": round_no, "t": round(t - self.t0, 3), "consumer": consumer, "q": q["id"],
                "value": value, "ms": round(ms, 2), "status": status, "degraded": degraded, "plan": plan}

    def query_loop(self, stop):
        round_no = 0
        with cf.ThreadPoolExecutor(4) as pool:
            while not stop.is_set():
                started = self.now()
                rows = list(pool.map(lambda w: self.one(round_no, *w), self.work))
                with self.lock:
                    self.queries.extend(rows)
                    self.rounds.append({"round": round_no, "start": started, "end": self.now()})
                round_no += 1
                stop.wait(self.args.round_pause)

    def wait_rounds(self, n):
        """Waits until n more query rounds have finished."""
        target = len(self.rounds) + n
        while len(self.rounds) < target:
            time.sleep(0.5)

    # ---- the drill --------------------------------------------------------------------

    def main(self):
        a = self.args
        self.gdir = a.golden_dir
        if not os.path.exists(os.path.join(self.gdir, "golden.json")):
            subprocess.run([sys.executable, os.path.join(ROOT, "loadtest", "golden_sets.py"), "--catalog", a.catalog,
                            "--items", str(a.items), "--out", self.gdir], check=True)
        self.run(["eval", "--prepare", "--versions", f"{OLD},{NEW}", "--golden", os.path.join(self.gdir, "golden.json")])
        self.load_golden()
        n_items = sum(1 for _ in open(os.path.join(self.gdir, "items.jsonl")))
        self.rounds = []
        try:
            self.event("platform: stage, MiniLM sink, router")
            self.spawn("stage", ["embed-stage", "--group", f"{self.prefix}-stage", "--listen", "127.0.0.1:0"])
            time.sleep(3)
            self.spawn("sink-old", ["sink", "--model", OLD, "--listen", f"127.0.0.1:{self.sinks[OLD]}",
                                    "--data-dir", os.path.join(self.data, "sink")])
            self.spawn("router", ["router", "--listen", f"127.0.0.1:{a.port}",
                                  "--backend", f"{OLD}=http://127.0.0.1:{self.sinks[OLD]}",
                                  "--backend", f"{NEW}=http://127.0.0.1:{self.sinks[NEW]}"])
            self.event("ingest", items=n_items)
            self.run(["produce", "--input", os.path.join(self.gdir, "items.jsonl")])
            if not self.wait_items(OLD, n_items, 900):
                raise SystemExit("the MiniLM index did not fill")
            self.event("catalog indexed with MiniLM", items=self.items_in(OLD))

            # Live traffic beside the drill: existing items re-sent at a steady rate.
            updates = os.path.join(self.data, "updates.jsonl")
            lines = open(os.path.join(self.gdir, "items.jsonl")).read().splitlines()
            rng = random.Random(2)
            with open(updates, "w") as f:
                for _ in range(20000):
                    f.write(rng.choice(lines) + "\n")
            self.spawn("updates", ["produce", "--input", updates, "--rate", str(a.update_rate), "--source", "drill-updates"])

            stop = threading.Event()
            prober = threading.Thread(target=self.query_loop, args=(stop,), daemon=True)
            prober.start()
            self.wait_rounds(a.baseline_rounds)
            self.event("baseline done")

            ok, msg = self.admin("start", "--from", OLD, "--to", NEW)
            self.event("migrate start (dual-write on)", ok=ok, msg=msg)
            backfill_started = time.time()
            self.spawn("backfill", ["migrate", "backfill", "--max-rate", str(a.backfill_rate), "--chunk", str(a.chunk)])
            # The sink of the new version, once its topic exists.
            for _ in range(120):
                st = json.loads(self.run(["migrate", "status", "--json"]).stdout)
                if st["migration"] and st["migration"]["backfill"]:
                    break
                time.sleep(1)
            self.spawn("sink-new", ["sink", "--model", NEW, "--listen", f"127.0.0.1:{self.sinks[NEW]}",
                                    "--data-dir", os.path.join(self.data, "sink")])
            self.event("backfill and MPNet sink started")
            while self.procs["backfill"].poll() is None:
                st = json.loads(self.run(["migrate", "status", "--json"]).stdout)["migration"]
                self.event("backfill progress", fraction=round(st["backfill_fraction"], 3),
                           embedded=st["backfill_embedded"], new_items=self.items_in(NEW))
                time.sleep(15)
            if self.procs["backfill"].returncode != 0:
                raise SystemExit("the backfill failed; see logs/backfill.log")
            lines = open(os.path.join(self.logs, "backfill.log")).read().splitlines()
            report = json.loads([x for x in lines if x.startswith("{")][-1])
            self.backfill = dict(report, wall_s=round(time.time() - backfill_started, 1))
            self.event("backfill complete", **self.backfill)
            self.wait_items(NEW, self.items_in(OLD), 300)
            self.event("MPNet index caught up", items=self.items_in(NEW))
            self.consistency("after backfill", ["--sample", "1", "--settle", "5"])
            # Which blend makes the two models' results comparable: both, at each weight, on
            # the same golden queries (the answer is the README's default).
            r = self.run(["eval", "--golden", os.path.join(self.gdir, "golden.json"), "--router", self.router,
                          "--blends", "rrf,zscore", "--weights", "0.1,0.5,0.9", "--json"], check=False)
            self.blends = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
            self.event("blends evaluated", ok=r.returncode == 0)

            for w in ("0.1", "0.5", "0.9"):
                for c in ("search", "recsys", "ads", "dedup"):
                    ok, msg = self.admin("weight", "--consumer", c, "--new", w)
                    if not ok:
                        self.event("weight refused", consumer=c, msg=msg)
                self.event(f"weights {w} new")
                self.wait_rounds(1)

            r = self.run(["migrate", "gate", "--golden", os.path.join(self.gdir, "golden.json"), "--router", self.router,
                          "--json"], check=False)
            gate = json.loads(r.stdout.strip().splitlines()[0]) if r.returncode == 0 else None
            self.gate = gate
            self.event("gate evaluated", ok=r.returncode == 0, gates=r.stderr.strip().splitlines()[-4:])
            ok, msg = self.admin("cutover")
            self.event("cutover (all consumers)", ok=ok, msg=msg)
            if not ok:
                self.event("cutover refused: forcing is not part of the drill; rolling back instead")
            self.wait_rounds(1)
            ok, msg = self.admin("rollback")
            self.event("rollback (all consumers)", ok=ok, msg=msg)
            self.wait_rounds(1)
            ok, msg = self.admin("cutover")
            self.event("re-cutover", ok=ok, msg=msg)
            self.wait_rounds(1)
            self.consistency("after re-cutover", ["--sample", "0.2", "--settle", "5", "--dry-run"])
            ok, msg = self.admin("decommission")
            self.event("decommission", ok=ok, msg=msg)
            self.stop("sink-old")
            self.event("MiniLM sink stopped")
            self.wait_rounds(1)
            stop.set()
            prober.join()
            self.event("drill done")
        finally:
            for name in list(self.procs):
                self.stop(name)
        self.write()

    def consistency(self, when, args):
        r = self.run(["migrate", "check", "--json", *args], check=False)
        report = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
        self.checks.append({"when": when, "report": report, "error": None if report else r.stderr[-500:]})
        brief = {k: report[k] for k in ("sampled", "divergent", "divergence_ratio", "kinds", "requeued")} if report else {}
        self.event(f"consistency check {when}", ok=report is not None, **brief)

    # ---- report -----------------------------------------------------------------------

    def write(self):
        with open(os.path.join(self.out, "drill.json"), "w") as f:
            json.dump({"events": self.events, "rounds": self.rounds, "queries": self.queries,
                       "backfill": getattr(self, "backfill", None), "gate": getattr(self, "gate", None),
                       "checks": self.checks, "blends": self.blends, "args": vars(self.args)}, f)
        summary = summarize(self.queries, self.rounds, self.events)
        summary["backfill"] = getattr(self, "backfill", None)
        summary["gate"] = getattr(self, "gate", None)
        summary["checks"] = self.checks
        summary["blends"] = self.blends
        summary["events"] = [e for e in self.events if e["event"] != "backfill progress"]
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        try:
            plot(self.queries, self.rounds, self.events, summary, os.path.join(self.out, "timeline.png"))
        except ImportError:
            print("matplotlib is missing: no plot", file=sys.stderr)
        with open(os.path.join(self.out, "latest.md"), "w") as f:
            f.write(report_md(summary, self.args))
        print(json.dumps({k: v for k, v in summary.items() if k not in ("rounds", "events")}, indent=1))


def bootstrap(diffs, n=2000, seed=5):
    """95% percentile interval of the mean of paired differences (numpy, which matplotlib
    brings, or plain Python)."""
    if not diffs:
        return (0.0, 0.0)
    try:
        import numpy as np
        rng = np.random.default_rng(seed)
        d = np.asarray(diffs, dtype=float)
        means = np.sort(d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1))
    except ImportError:
        rng = random.Random(seed)
        means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(n))
    return float(means[int(0.025 * (n - 1))]), float(means[int(0.975 * (n - 1))])


def summarize(queries, rounds, events):
    failed = [q for q in queries if q["status"] != 200]
    degraded = [q for q in queries if q["degraded"]]
    by = {}
    for q in queries:
        by.setdefault((q["round"], q["consumer"]), {})[q["q"]] = q["value"]
    consumers = sorted({q["consumer"] for q in queries})
    base = {c: by.get((0, c), {}) for c in consumers}
    out_rounds = []
    below = 0
    for r in rounds:
        row = {"round": r["round"], "start": round(r["start"], 1), "end": round(r["end"], 1)}
        for c in consumers:
            cur = by.get((r["round"], c), {})
            pairs = [(cur[k], base[c][k]) for k in cur if cur[k] is not None and base[c].get(k) is not None]
            if not pairs:
                continue
            mean = sum(p[0] for p in pairs) / len(pairs)
            lo, hi = bootstrap([p[0] - p[1] for p in pairs], n=1000)
            worse = hi < 0
            below += worse
            row[c] = {"mean": round(mean, 4), "diff_ci": [round(lo, 4), round(hi, 4)], "below_baseline": worse}
        lat = sorted(q["ms"] for q in queries if q["round"] == r["round"])
        if lat:
            row["p50_ms"] = round(lat[len(lat) // 2], 2)
            row["p99_ms"] = round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2)
        out_rounds.append(row)
    return {"queries": len(queries), "failed": len(failed), "degraded": len(degraded),
            "failed_examples": failed[:5], "rounds_below_baseline": below, "rounds": out_rounds}


def report_md(s, args):
    """The drill's report: what ran, the goals, and the numbers."""
    out = ["# Migration drill: MiniLM -> MPNet", "",
           f"Command: `.dev/benchvenv/bin/python loadtest/migration_drill.py {' '.join(a for a in sys.argv[1:] if a != '--report-only')}`"
           f" (2-core VM, no GPU; broker and registry from `compose/dev infra`).", "",
           "![timeline](timeline.png)", "", "## Goals", "",
           f"- Failed queries (goal 0): **{s['failed']}** of {s['queries']} ({s['degraded']} degraded answers).",
           f"- Rounds with a consumer below its old-only baseline by more than the 95% CI (goal 0): "
           f"**{s['rounds_below_baseline']}**."]
    b = s.get("backfill")
    if b:
        rate = b["embedded"] / b["seconds"] if b.get("seconds") else 0
        out.append(f"- Backfill: {b['embedded']} items embedded with MPNet in {b['seconds']:.0f} s = "
                   f"**{rate:.2f} items/s** ({b['skipped']} skipped as superseded), beside the live stage.")
    out += ["", "## Timeline", "", "| t (s) | event |", "|---:|---|"]
    for e in s.get("events", []):
        extra = {k: v for k, v in e.items() if k not in ("t", "event", "msg", "gates")}
        out.append(f"| {e['t']:.0f} | {e['event']} {json.dumps(extra) if extra else ''} |")
    out += ["", "## Each round", "", "Metric per consumer (mean over its golden queries; 95% CI of the paired "
            "difference to round 0), query latency through the router.", "",
            "| round | t (s) | search | recsys | ads | dedup | p50 ms | p99 ms |", "|---:|---:|---|---|---|---|---:|---:|"]
    for r in s["rounds"]:
        cells = []
        for c in ("search", "recsys", "ads", "dedup"):
            if c in r:
                lo, hi = r[c]["diff_ci"]
                cells.append(f"{r[c]['mean']:.3f} [{lo:+.3f}, {hi:+.3f}]" + (" **below**" if r[c]["below_baseline"] else ""))
            else:
                cells.append("")
        out.append(f"| {r['round']} | {r['start']:.0f}-{r['end']:.0f} | " + " | ".join(cells)
                   + f" | {r.get('p50_ms', '')} | {r.get('p99_ms', '')} |")
    for key, title in (("gate", "Gate (`migrate gate`: old vs new per consumer)"),
                       ("blends", "Blends (`embedstream eval --blends rrf,zscore --weights 0.1,0.5,0.9`)")):
        if s.get(key):
            out += ["", f"## {title}", "", "| consumer | metric | n | arm | mean | diff vs old [95% CI] |",
                    "|---|---|---:|---|---:|---|"]
            for c in s[key].get("consumers", []):
                for a in c["arms"]:
                    out.append(f"| {c['consumer']} | {c['metric']} | {c['queries']} | {a['arm']} | {a['mean']:.3f} | "
                               f"{a['diff']:+.3f} [{a['ci_low']:+.3f}, {a['ci_high']:+.3f}] |")
    for c in s.get("checks", []):
        r = c["report"]
        if r:
            out += ["", f"## Consistency check {c['when']}", "",
                    f"{r['sampled']} sampled of {r['items']} items, {r['divergent']} divergent "
                    f"(ratio {r['divergence_ratio']:.4f}, kinds {json.dumps(r['kinds'])}), {r['settled']} settled, "
                    f"{r['requeued']} re-queued, in {r['seconds']:.1f} s."]
    return "\n".join(out) + "\n"


def plot(queries, rounds, events, summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(12, 10), sharex=True)
    consumers = sorted({q["consumer"] for q in queries})
    for c in consumers:
        xs = [(r["start"] + r["end"]) / 2 for r in summary["rounds"] if c in r]
        ys = [r[c]["mean"] for r in summary["rounds"] if c in r]
        ax1.plot(xs, ys, marker="o", label=c)
    ax1.set_ylabel("metric per round\n(recall@k / precision@1)")
    ax1.legend(loc="lower right", ncol=4)
    ax1.grid(alpha=0.3)
    # p99 over 10 s windows.
    if queries:
        end = max(q["t"] for q in queries)
        xs, p99, p50 = [], [], []
        t = 0.0
        while t < end:
            w = sorted(q["ms"] for q in queries if t <= q["t"] < t + 10)
            if w:
                xs.append(t + 5)
                p99.append(w[min(len(w) - 1, int(0.99 * len(w)))])
                p50.append(w[len(w) // 2])
            t += 10
        ax2.plot(xs, p99, label="p99")
        ax2.plot(xs, p50, label="p50")
    ax2.set_ylabel("query latency, ms\n(10 s windows)")
    ax2.set_yscale("log")
    ax2.legend()
    ax2.grid(alpha=0.3)
    prog = [e for e in events if e["event"] == "backfill progress"]
    ax3.plot([e["t"] for e in prog], [e["fraction"] for e in prog], marker=".", label="backfill (offsets done)")
    ax3.set_ylabel("backfill fraction")
    ax3.set_xlabel("seconds since the drill started")
    ax3.grid(alpha=0.3)
    marks = [e for e in events if e["event"] not in ("backfill progress",)]
    for ax in (ax1, ax2, ax3):
        for e in marks:
            ax.axvline(e["t"], color="grey", lw=0.6, ls=":")
    for e in marks:
        ax3.annotate(e["event"][:28], (e["t"], 0.02), rotation=90, fontsize=7, va="bottom")
    fig.suptitle("Migration drill: MiniLM -> MPNet, golden queries throughout")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1500)
    ap.add_argument("--catalog", default=os.path.join(ROOT, ".dev", "bench", "catalog-attr.jsonl"))
    ap.add_argument("--golden-dir", default=os.path.join(ROOT, ".dev", "golden"))
    ap.add_argument("--out", default=os.path.join(ROOT, "loadtest", "reports", "drill"))
    ap.add_argument("--port", type=int, default=9470)
    ap.add_argument("--baseline-rounds", type=int, default=2)
    ap.add_argument("--update-rate", type=float, default=2.0)
    ap.add_argument("--round-pause", type=float, default=3.0, help="seconds between query rounds")
    ap.add_argument("--backfill-rate", type=float, default=0.0)
    ap.add_argument("--chunk", type=int, default=64, help="backfill offsets per chunk and checkpoint")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from OUT/drill.json")
    args = ap.parse_args()
    drill = Drill(args)
    if args.report_only:
        saved = json.load(open(os.path.join(args.out, "drill.json")))
        drill.events, drill.rounds, drill.queries = saved["events"], saved["rounds"], saved["queries"]
        drill.backfill, drill.gate = saved.get("backfill"), saved.get("gate")
        drill.checks, drill.blends = saved.get("checks", []), saved.get("blends")
        drill.write()
    else:
        drill.main()


if __name__ == "__main__":
    main()
