"""Scatter-gather over slices against one instance holding the same data, in one run.

  .dev/benchvenv/bin/python loadtest/slices_bench.py --data DIR [--slices 4] [--queries 500]

Needs the broker and registry (`compose/dev infra`), `cargo build --release --bin embedstream
--bin topic-fill`, and DIR from `loadtest/index_data.py` (base.f32, queries.f32, truth.u32).

One fresh topic prefix per run. `topic-fill` writes base.f32 (row i is item `i<i>`) to the
MiniLM embedding topic (6 partitions). Then, on the same topic:
  - one `embedstream sink` holding the whole version, in pool `single`;
  - `--slices` sinks, `--slice i/N`, in the shared pool;
  - one `embedstream router` that finds all of them from their announcements.
Consumer `single` (pool = "single") reads the one instance; consumer `sliced` reads the
slices. Both have the same `ef_search` and k. Once every sink has caught up and compacted
(hot part under 2% of its items, no rebuild running), each query of queries.f32 is sent to
the router once per consumer, alternating (one client, one query at a time), after a
warm-up. Reported: latency at the client (p50/p95/p99) and recall@10 against truth.u32 (the
exact top 10 of base), per consumer, and each sink's resident memory.

Writes the JSON to stdout and, with --report, a markdown table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
MODEL = "minilm-l6-v2@1"

CONSUMERS = """
[consumers.sliced]
ef_search = {ef}
default_k = 10
max_k = 100

[consumers.single]
ef_search = {ef}
default_k = 10
max_k = 100
pool = "single"
"""

SINK_CONFIG = """
[index]
shards = {shards}

[index.compaction]
threads = 1
check_every = "500ms"
recall_every = "1h"
"""


def http(url, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def held_out(data, n):
    """meta.json, and the first n queries with their exact top 100, of an index_data.py set."""
    meta = json.load(open(os.path.join(data, "meta.json")))
    dim = meta["dim"]
    queries = np.fromfile(os.path.join(data, "queries.f32"), dtype="<f4").reshape(-1, dim)
    truth = np.fromfile(os.path.join(data, "truth.u32"), dtype="<u4").reshape(len(queries), -1)
    return meta, queries[:n], truth[:n]


class Processes:
    """The run's processes, each logging to <work>/<name>.log; stopped in reverse order."""

    def __init__(self, work):
        self.work = work
        self.env = dict(os.environ, RUST_LOG="warn", NO_COLOR="1")
        self.procs = []

    def start(self, name, argv):
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=log, env=self.env, stdin=subprocess.DEVNULL)
        self.procs.append((name, p))
        return p

    def stop(self, timeout=20):
        for _, p in reversed(self.procs):
            p.terminate()
        for _, p in self.procs:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()


def fill_topic(args, topic, dim, *extra):
    """`topic-fill` of the set's base.f32 into `topic`; its JSON summary."""
    fill = subprocess.run([os.path.join(BIN, "topic-fill"), "--bootstrap", args.bootstrap,
                           "--registry-url", args.registry, "--topic", topic,
                           "--vectors", os.path.join(args.data, "base.f32"), "--dim", str(dim), *extra],
                          check=True, capture_output=True, text=True)
    return json.loads(fill.stdout)


def delete_topics(args, prefix):
    """The run's topics: the embedding topic and the platform topics the sinks created."""
    subprocess.run([os.path.join(BIN, "topic-fill"), "--bootstrap", args.bootstrap, "--topic", "-",
                    "--vectors", "-", "--delete-prefix", prefix + "."],
                   stdout=subprocess.DEVNULL)


def quantiles(ms):
    ms = sorted(ms)
    at = lambda q: ms[min(len(ms) - 1, max(0, int(np.ceil(q * len(ms))) - 1))]
    return {"p50_ms": at(0.5), "p95_ms": at(0.95), "p99_ms": at(0.99), "mean_ms": sum(ms) / len(ms)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ef", type=int, default=100)
    ap.add_argument("--shards", type=int, default=2, help="shards inside the single instance")
    ap.add_argument("--slice-shards", type=int, default=2, help="shards inside each slice")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--registry", default=os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081"))
    ap.add_argument("--report", help="write a markdown summary here")
    args = ap.parse_args()

    meta, queries, truth = held_out(args.data, args.queries)
    dim = meta["dim"]

    prefix = f"slices{int(time.time())}"
    work = tempfile.mkdtemp(prefix="slices-bench-")
    consumers = os.path.join(work, "consumers.toml")
    with open(consumers, "w") as f:
        f.write(CONSUMERS.format(ef=args.ef))
    sink_config = os.path.join(work, "sink.toml")
    with open(sink_config, "w") as f:
        f.write(SINK_CONFIG.format(shards=args.shards))
    slice_config = os.path.join(work, "slice.toml")
    with open(slice_config, "w") as f:
        f.write(SINK_CONFIG.format(shards=args.slice_shards))
    common = ["--bootstrap", args.bootstrap, "--registry-url", args.registry, "--topic-prefix", prefix,
              "--consumers-file", consumers]
    procs = Processes(work)
    start = procs.start

    try:
        topic = f"{prefix}.embeddings.minilm-l6-v2.v1"
        filled = fill_topic(args, topic, dim)
        print(f"filled {topic}: {filled}", file=sys.stderr)

        sinks = {}
        layouts = [("single", ["--pool", "single", "--replica", "whole", "--config", sink_config])]
        layouts += [(f"slice-{i}", ["--slice", f"{i}/{args.slices}", "--replica", f"s{i}", "--config", slice_config])
                    for i in range(args.slices)]
        started = time.time()
        for name, extra in layouts:
            port = free_port()
            p = start(name, [os.path.join(BIN, "embedstream"), "sink", *common, "--model", MODEL,
                             "--data-dir", os.path.join(work, "data"),
                             "--listen", f"127.0.0.1:{port}", *extra])
            sinks[name] = (p, f"http://127.0.0.1:{port}")
        router_port = free_port()
        start("router", [os.path.join(BIN, "embedstream"), "router", *common,
                         "--listen", f"127.0.0.1:{router_port}", "--query-log", "false"])
        router = f"http://127.0.0.1:{router_port}"

        # Caught up, compacted, announced.
        deadline = time.time() + 3600
        while True:
            time.sleep(2)
            ready = True
            for name, (p, url) in sinks.items():
                if p.poll() is not None:
                    sys.exit(f"{name} exited; see {work}/{name}.log")
                try:
                    s = http(f"{url}/v1/stats")
                except OSError:
                    ready = False
                    continue
                hot = sum(x["hot_vectors"] for x in s["shards"])
                busy = any(x["compacting"] for x in s["shards"])
                if s["lag"] > 0 or busy or hot > 0.02 * max(1, s["items"]) or s["items"] == 0:
                    ready = False
            try:
                replicas = http(f"{router}/v1/slices")
            except OSError:
                replicas = []
            up = [r for r in replicas if r["ready"] and r["healthy"]]
            if ready and len(up) == len(sinks):
                break
            if time.time() > deadline:
                sys.exit("the sinks did not settle within an hour")
        settled_s = time.time() - started
        items = {name: http(f"{url}/v1/stats")["items"] for name, (_, url) in sinks.items()}
        print(f"settled in {settled_s:.0f} s: {items}", file=sys.stderr)
        assert sum(v for k, v in items.items() if k != "single") == items["single"], items

        def ask(consumer, q):
            t = time.perf_counter()
            # The run's prefix has no control log entries: the plan names the version.
            body = http(f"{router}/v1/search", {"consumer": consumer, "vector": q.tolist(), "k": 10,
                                                 "plan": [{"model": MODEL, "weight": 1.0}]})
            ms = (time.perf_counter() - t) * 1000
            return ms, body

        for i in range(min(args.warmup, len(queries))):
            for c in ("single", "sliced"):
                ask(c, queries[i])
        out = {c: {"ms": [], "recall": [], "partial": 0} for c in ("single", "sliced")}
        for i, q in enumerate(queries):
            want = {f"i{r}" for r in truth[i][:10]}
            order = ("single", "sliced") if i % 2 == 0 else ("sliced", "single")
            for c in order:
                ms, body = ask(c, q)
                got = {r["item_id"] for r in body["results"]}
                out[c]["ms"].append(ms)
                out[c]["recall"].append(len(got & want) / 10)
                out[c]["partial"] += 1 if body.get("partial") else 0
        result = {
            "data": args.data, "n": int(meta["n"]), "dim": dim, "slices": args.slices, "ef_search": args.ef,
            "shards": args.shards, "slice_shards": args.slice_shards,
            "queries": len(queries), "filled": filled, "settled_s": settled_s, "items": items,
            "rss_mb": {name: rss_mb(p.pid) for name, (p, _) in sinks.items()},
        }
        for c, v in out.items():
            result[c] = {"recall_at_10": float(np.mean(v["recall"])), "partial": v["partial"], **quantiles(v["ms"])}
        result["p95_ratio"] = result["sliced"]["p95_ms"] / result["single"]["p95_ms"]
        print(json.dumps(result, indent=1))
        if args.report:
            s, o = result["sliced"], result["single"]
            with open(args.report, "w") as f:
                f.write(f"""# Scatter-gather over {args.slices} slices against one instance

`{' '.join(sys.argv)}`

{result['n']:,} vectors of dimension {dim} ({args.data}), {len(queries)} held-out queries, k 10, ef_search {args.ef}
for both, {args.shards} shard(s) inside the single instance and {args.slice_shards} inside each slice, one client, one query at a time, through one router. The sinks settled (caught up,
compacted) in {settled_s:.0f} s after start; items per sink: {items}.

| consumer | reads | recall@10 vs exact | p50 ms | p95 ms | p99 ms | partial answers |
|---|---|---|---|---|---|---|
| single | one instance, {result['n']:,} items | {o['recall_at_10']:.3f} | {o['p50_ms']:.2f} | {o['p95_ms']:.2f} | {o['p99_ms']:.2f} | {o['partial']} |
| sliced | {args.slices} slices, one replica each | {s['recall_at_10']:.3f} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} | {s['partial']} |

p95 sliced / single: **{result['p95_ratio']:.2f}×** (target ≤ 1.5×); sliced recall@10 **{s['recall_at_10']:.3f}** (target ≥ 0.95).
Resident memory per sink (MB): {json.dumps({k: round(v or 0) for k, v in result['rss_mb'].items()})}.
Topic fill: {filled['records']:,} records in {filled['seconds']:.1f} s ({filled['per_second']:,.0f}/s).
""")
    finally:
        procs.stop()
        delete_topics(args, prefix)


if __name__ == "__main__":
    main()
