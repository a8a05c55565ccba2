"""Soak: the whole platform (`embedstream up`: embed stage, index sink with its compactions,
router, drift consumer) for a fixed time at a steady load of upserts, updates and deletes with
queries beside them, sampled over time; the report is each quantity's growth per hour.

Runs against a running broker and registry (`compose/dev infra`), under a fresh topic prefix
and its own state folder, and starts the platform itself.

  .dev/venv/bin/python loadtest/soak.py [--minutes 65] [--rate 10] [--qps 2] [--live 4000]
      [--warmup-minutes 10] [--out loadtest/reports/soak]

Load: `--live` catalog items are ingested first; then `--rate` events/s, of which 70% update
a live item with another catalog text, 15% delete one and 15% add a new one, so the live set
stays the same size and the index's work (hot writes, hidden points, compactions at the
defaults' thresholds) repeats one cycle after another. `--qps` text queries/s go to the
router's `/v1/search` (consumer `search`), each timed by the client.

Every `--sample-secs` (30): resident memory (VmRSS) and open files of the platform, the broker
and the registry; the stage's and the sink's consumer lag; freshness (event time → searchable,
the sink's histogram over the window) p50/p99; the client's query p50/p99 and errors; the
compactions so far. Written as JSON lines to `<out>/samples.jsonl`, plotted to
`<out>/soak.png` (with matplotlib, if the python has it), and summarised in
`<out>/summary.json`: per quantity, the least-squares slope after the warm-up as a share of its
mean per hour. At the end the load stops, the platform catches up, and the sink must hold
exactly the live set: every live id present, no deleted id.
"""

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sink_bench import histogram, quantile, wait_http  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/embedstream")
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
REGISTRY = os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081")
FRESHNESS = "embedstream_sink_event_freshness_seconds"


def catalog():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "loadtest/debian_catalog.py")],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    texts = [json.loads(line) for line in out]
    return [t for t in texts if t.get("text")]


def pid_listening(port):
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",")[0])
    return None


def proc_sample(pid):
    if pid is None:
        return None, None
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss / 1024.0, fds
    except (OSError, StopIteration):
        return None, None


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def gauge_sum(text, name):
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None


class Queries(threading.Thread):
    """Text queries at a fixed rate; latencies and errors per window."""

    def __init__(self, url, qps, words):
        super().__init__(daemon=True)
        self.url, self.qps, self.words = url, qps, words
        self.lock = threading.Lock()
        self.lat, self.errors = [], 0
        self.stop = threading.Event()

    def run(self):
        rng = random.Random(7)
        period = 1.0 / self.qps
        nxt = time.monotonic()
        while not self.stop.is_set():
            q = " ".join(rng.sample(self.words, 2))
            body = json.dumps({"consumer": "search", "text": q, "k": 10}).encode()
            req = urllib.request.Request(self.url, body, {"content-type": "application/json"})
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    r.read()
                ok = True
            except (OSError, urllib.error.HTTPError):
                ok = False
            dt = time.perf_counter() - t0
            with self.lock:
                if ok:
                    self.lat.append(dt)
                else:
                    self.errors += 1
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))

    def window(self):
        with self.lock:
            lat, err = self.lat, self.errors
            self.lat, self.errors = [], 0
        return lat, err


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def slope_per_hour(ts, ys):
    """Least-squares slope of ys over ts (seconds), as a share of ys' mean per hour."""
    pts = [(t, y) for t, y in zip(ts, ys) if y is not None]
    if len(pts) < 3:
        return None
    mt = statistics.fmean(t for t, _ in pts)
    my = statistics.fmean(y for _, y in pts)
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var == 0 or my == 0:
        return None
    b = sum((t - mt) * (y - my) for t, y in pts) / var
    return {"per_hour": b * 3600, "share_of_mean_per_hour": b * 3600 / my, "mean": my}


def plot(samples, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: no plot", file=sys.stderr)
        return
    t = [s["t"] / 60 for s in samples]
    panels = [
        ("resident memory (MiB)", ["platform_rss_mib", "broker_rss_mib", "registry_rss_mib"]),
        ("open files", ["platform_fds", "broker_fds", "registry_fds"]),
        ("consumer lag (records)", ["stage_lag", "sink_lag"]),
        ("freshness, event → searchable (ms)", ["freshness_p50_ms", "freshness_p99_ms"]),
        ("query latency at the router (ms)", ["query_p50_ms", "query_p99_ms"]),
        ("compactions so far", ["compactions"]),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 * len(panels)), sharex=True)
    for ax, (title, keys) in zip(axes, panels):
        for k in keys:
            ax.plot(t, [s.get(k) if s.get(k) is not None else float("nan") for s in samples], label=k)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.set_ylim(bottom=0)
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=65)
    ap.add_argument("--warmup-minutes", type=float, default=10)
    ap.add_argument("--rate", type=float, default=10)
    ap.add_argument("--qps", type=float, default=2)
    ap.add_argument("--live", type=int, default=4000)
    ap.add_argument("--sample-secs", type=float, default=30)
    ap.add_argument("--base-port", type=int, default=9470)
    ap.add_argument("--out", default=os.path.join(ROOT, "loadtest/reports/soak"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    texts = catalog()
    rng = random.Random(1)
    rng.shuffle(texts)
    seed_items, pool = texts[: args.live], texts[args.live:]
    words = [w for t in texts[:500] for w in t["text"].split()[:6] if w.isalpha() and len(w) > 3]

    prefix = f"soak{uuid.uuid4().hex[:8]}"
    home = tempfile.mkdtemp(prefix="embedstream-soak-")
    env = dict(os.environ, KAFKA_BOOTSTRAP=BOOTSTRAP, SCHEMA_REGISTRY_URL=REGISTRY,
               EMBEDSTREAM_TOPIC_PREFIX=prefix, EMBEDSTREAM_HOME=home)
    metrics_port, query_port, sink_port = args.base_port + 1, args.base_port + 11, args.base_port + 21
    log = open(os.path.join(home, "platform.log"), "w")
    platform = subprocess.Popen(
        [BIN, "up", "--listen", f"127.0.0.1:{metrics_port}",
         "--query-listen", f"127.0.0.1:{query_port}", "--sink-listen", f"127.0.0.1:{sink_port}",
         "--drift-canaries", "200", "--drift-interval-secs", "300"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    producer = subprocess.Popen(
        [BIN, "produce", "--source", "soak"], env=env, stdin=subprocess.PIPE, text=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{sink_port}/metrics", 180)
        wait_http(f"http://127.0.0.1:{query_port}/v1/versions", 180)
        # The expected state: id -> the text of its last write (None when deleted).
        expected = {}
        next_new = 0

        def send(item_id, text=None):
            line = {"id": item_id, "op": "delete"} if text is None else {"id": item_id, "text": text}
            producer.stdin.write(json.dumps(line) + "\n")
            expected[item_id] = text

        for i, t in enumerate(seed_items):
            send(f"item-{i}", t["text"])
        producer.stdin.flush()
        live = [f"item-{i}" for i in range(len(seed_items))]
        next_new = len(seed_items)
        sink_metrics = f"http://127.0.0.1:{sink_port}/metrics"
        deadline = time.time() + 900
        sink_stats = f"http://127.0.0.1:{sink_port}/v1/stats"
        while time.time() < deadline:
            if json.loads(get(sink_stats))["items"] >= len(live):
                break
            time.sleep(2)
        else:
            sys.exit("the seed catalog was not indexed in 15 minutes")
        print(f"seeded {len(live)} items; soaking {args.minutes} min at {args.rate} events/s "
              f"and {args.qps} queries/s", flush=True)

        queries = Queries(f"http://127.0.0.1:{query_port}/v1/search", args.qps, words)
        queries.start()
        pids = {"platform": platform.pid, "broker": pid_listening(int(BOOTSTRAP.rsplit(":", 1)[1])),
                "registry": pid_listening(int(REGISTRY.rsplit(":", 1)[1]))}
        samples = []
        start = time.time()
        end = start + args.minutes * 60
        next_sample = start + args.sample_secs
        prev_fresh = histogram(get(sink_metrics), FRESHNESS)
        period = 1.0 / args.rate
        nxt = time.monotonic()
        sent = 0
        with open(os.path.join(args.out, "samples.jsonl"), "w") as out:
            while time.time() < end:
                r = rng.random()
                if r < 0.70:
                    send(rng.choice(live), rng.choice(pool)["text"])
                elif r < 0.85:
                    victim = live.pop(rng.randrange(len(live)))
                    send(victim)
                else:
                    new = f"item-{next_new}"
                    next_new += 1
                    live.append(new)
                    send(new, rng.choice(pool)["text"])
                sent += 1
                producer.stdin.flush()
                nxt += period
                time.sleep(max(0.0, nxt - time.monotonic()))
                if time.time() >= next_sample:
                    next_sample += args.sample_secs
                    m_sink = get(sink_metrics)
                    m_stage = get(f"http://127.0.0.1:{metrics_port}/metrics")
                    fresh = histogram(m_sink, FRESHNESS)
                    window = [(le, c - dict(prev_fresh).get(le, 0)) for le, c in fresh]
                    prev_fresh = fresh
                    lat, errors = queries.window()
                    s = {"t": round(time.time() - start, 1), "events_sent": sent,
                         "live": len(live), "query_errors": errors, "queries": len(lat)}
                    for name, pid in pids.items():
                        s[f"{name}_rss_mib"], s[f"{name}_fds"] = proc_sample(pid)
                    s["stage_lag"] = gauge_sum(m_stage, "embedstream_stage_consumer_lag_records")
                    stats = json.loads(get(sink_stats))
                    s["sink_lag"], s["sink_items"] = stats["lag"], stats["items"]
                    s["compactions"] = gauge_sum(m_sink, "embedstream_index_compactions_total")
                    has = window and window[-1][1] > 0
                    s["freshness_p50_ms"] = quantile(window, 0.5) * 1e3 if has else None
                    s["freshness_p99_ms"] = quantile(window, 0.99) * 1e3 if has else None
                    s["query_p50_ms"] = pct(lat, 0.5) and pct(lat, 0.5) * 1e3
                    s["query_p99_ms"] = pct(lat, 0.99) and pct(lat, 0.99) * 1e3
                    out.write(json.dumps(s) + "\n")
                    out.flush()
                    samples.append(s)
                    print(json.dumps(s), flush=True)
        queries.stop.set()
        producer.stdin.close()
        producer.wait(timeout=120)

        # Caught up: the sink holds exactly the expected state.
        deadline = time.time() + 600
        live_set = {k for k, v in expected.items() if v is not None}
        while time.time() < deadline:
            stats = json.loads(get(sink_stats))
            if stats["items"] == len(live_set) and stats["lag"] == 0:
                break
            time.sleep(2)
        missing, resurrected = [], []
        for item_id, text in expected.items():
            try:
                get(f"http://127.0.0.1:{sink_port}/v1/items/{item_id}")
                found = True
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
                found = False
            if text is not None and not found:
                missing.append(item_id)
            if text is None and found:
                resurrected.append(item_id)

        warm = args.warmup_minutes * 60
        after = [s for s in samples if s["t"] >= warm]
        ts = [s["t"] for s in after]
        keys = ["platform_rss_mib", "broker_rss_mib", "registry_rss_mib", "platform_fds",
                "broker_fds", "registry_fds", "stage_lag", "sink_lag", "freshness_p50_ms",
                "freshness_p99_ms", "query_p50_ms", "query_p99_ms"]
        summary = {
            "minutes": args.minutes, "warmup_minutes": args.warmup_minutes, "rate": args.rate,
            "qps": args.qps, "live": args.live, "events_sent": sent,
            "compactions": samples[-1]["compactions"] if samples else None,
            "query_errors": sum(s["query_errors"] for s in samples),
            "queries": sum(s["queries"] for s in samples),
            "final_live": len(live_set), "missing": len(missing), "resurrected": len(resurrected),
            "growth_after_warmup": {k: slope_per_hour(ts, [s.get(k) for s in after]) for k in keys},
        }
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(json.dumps(summary, indent=2))
        plot(samples, os.path.join(args.out, "soak.png"))
        if missing or resurrected:
            sys.exit(f"state differs: {len(missing)} live ids missing, {len(resurrected)} deleted ids present")
    finally:
        if producer.poll() is None:
            producer.kill()
        os.killpg(platform.pid, signal.SIGTERM)
        try:
            platform.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(platform.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
