"""Capacity: one version in slices with a cold tier, on the real broker, end to end.

  .dev/benchvenv/bin/python loadtest/capacity_bench.py --data DIR [--slices 4] [--old-share 0.9]

Needs the broker and registry (`compose/dev infra`), `cargo build --release --bin embedstream
--bin topic-fill`, and DIR from `loadtest/index_data.py` (base.f32, queries.f32, truth.u32).

`topic-fill` writes base.f32 (row i is item `i<i>`) to the MiniLM embedding topic, with
--old-share of the rows 60 days old. Then --slices sinks (`--slice i/N`, cold tier on, hot
window 30 days) consume it, and one router finds them. Measured:
  - ingest: items per second from the sinks' start until every item is searchable (the
    slices' items add up to the rows written);
  - build: each sink's compaction seconds (its `embedstream_index_compaction_seconds` sum),
    per million items it holds, and the time until every sink has settled (caught up,
    compacted, nothing compacting);
  - memory and disk per sink: resident memory (now and peak) and the bytes of its segments;
  - queries through the router, one at a time, per consumer: `search` (every tier) and
    `recent` (the same queries with `"tier": "hot"`): p50/p95/p99 and, for `search`,
    recall@10 against truth.u32.

Writes the JSON to stdout and, with --report, a markdown table.
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time
import urllib.request

import numpy as np

from slices_bench import (BIN, MODEL, Processes, delete_topics, fill_topic, free_port, held_out, http,
                          quantiles, rss_mb)

CONSUMERS = """
[consumers.search]
ef_search = {ef}
default_k = 10
max_k = 100

[consumers.recent]
ef_search = {ef}
default_k = 10
max_k = 100
"""

SINK_CONFIG = """
[index]
shards = {shards}

[index.hot]
max_vectors = {hot_max}

[index.compaction]
threads = 1
check_every = "500ms"
recall_every = "1h"

[index.cold]
enabled = true
hot_window = "30d"
segment_max_vectors = {segment_max}
"""


def peak_rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def compaction_seconds(url):
    """The sum of the sink's compaction seconds over its shards."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        text = r.read().decode()
    pattern = r"^embedstream_index_compaction_seconds_sum\{[^}]*\} ([0-9.e+-]+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--slice-shards", type=int, default=1)
    ap.add_argument("--old-share", type=float, default=0.9)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--ef", type=int, default=100)
    ap.add_argument("--hot-max", type=int, default=1_000_000,
                    help="index.hot.max_vectors: a shard's hot part holds at most this many; the sink "
                         "stops reading until a compaction drains it, which bounds its memory")
    ap.add_argument("--segment-max", type=int, default=500_000,
                    help="index.cold.segment_max_vectors: the largest segment one build makes")
    ap.add_argument("--backend-timeout-ms", type=int, default=30_000,
                    help="the router's timeout per sink request: a cold segment whose pages are "
                         "not cached answers in seconds, not milliseconds")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--registry", default=os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081"))
    ap.add_argument("--report")
    args = ap.parse_args()

    meta, queries, truth = held_out(args.data, args.queries)
    dim = meta["dim"]

    prefix = f"capacity{int(time.time())}"
    work = tempfile.mkdtemp(prefix="capacity-bench-")
    consumers = os.path.join(work, "consumers.toml")
    with open(consumers, "w") as f:
        f.write(CONSUMERS.format(ef=args.ef))
    sink_config = os.path.join(work, "slice.toml")
    with open(sink_config, "w") as f:
        f.write(SINK_CONFIG.format(shards=args.slice_shards, hot_max=args.hot_max, segment_max=args.segment_max))
    common = ["--bootstrap", args.bootstrap, "--registry-url", args.registry, "--topic-prefix", prefix,
              "--consumers-file", consumers]
    procs = Processes(work)
    start = procs.start

    try:
        topic = f"{prefix}.embeddings.minilm-l6-v2.v1"
        filled = fill_topic(args, topic, dim, "--old-share", str(args.old_share))
        print(f"filled {topic}: {filled}", file=sys.stderr)

        sinks = {}
        started = time.time()
        for i in range(args.slices):
            port = free_port()
            p = start(f"slice-{i}", [os.path.join(BIN, "embedstream"), "sink", *common, "--model", MODEL,
                                     "--data-dir", os.path.join(work, "data"), "--listen", f"127.0.0.1:{port}",
                                     "--slice", f"{i}/{args.slices}", "--replica", f"s{i}",
                                     "--config", sink_config])
            sinks[f"slice-{i}"] = (p, f"http://127.0.0.1:{port}")
        router_port = free_port()
        start("router", [os.path.join(BIN, "embedstream"), "router", *common,
                         "--listen", f"127.0.0.1:{router_port}", "--query-log", "false",
                         "--backend-timeout-ms", str(args.backend_timeout_ms)])
        router = f"http://127.0.0.1:{router_port}"

        searchable_s = None
        hot_full_s = hot_full_items = None
        timeline = []
        peaks = {}
        deadline = time.time() + 6 * 3600
        while True:
            time.sleep(2)
            settled = True
            visible = 0
            full = False
            resident = 0
            for name, (p, url) in sinks.items():
                if p.poll() is not None:
                    sys.exit(f"{name} exited; see {work}/{name}.log")
                peaks[name] = max(peaks.get(name) or 0, peak_rss_mb(p.pid) or 0)
                resident += rss_mb(p.pid) or 0
                try:
                    s = http(f"{url}/v1/stats")
                except OSError:
                    settled = False
                    continue
                visible += s["items"]
                hot = sum(x["hot_vectors"] for x in s["shards"])
                full = full or any(x["hot_vectors"] >= 0.9 * args.hot_max for x in s["shards"])
                busy = any(x["compacting"] for x in s["shards"])
                if s["lag"] > 0 or busy or hot > 0.02 * max(1, s["items"]) or s["items"] == 0:
                    settled = False
            now = time.time() - started
            timeline.append((round(now, 1), visible, round(resident)))
            if hot_full_s is None and (full or visible >= filled["records"]):
                hot_full_s, hot_full_items = now, visible
            if searchable_s is None and visible >= filled["records"]:
                searchable_s = now
            try:
                up = [r for r in http(f"{router}/v1/slices") if r["ready"] and r["healthy"]]
            except OSError:
                up = []
            if settled and len(up) == len(sinks):
                break
            if time.time() > deadline:
                sys.exit("the sinks did not settle in time")
        settled_s = time.time() - started
        per_sink = {}
        for name, (p, url) in sinks.items():
            s = http(f"{url}/v1/stats")
            items = s["items"]
            build = compaction_seconds(url)
            per_sink[name] = {
                "items": items,
                "cold_vectors": sum(x["cold_vectors"] for x in s["shards"]),
                "cold_bytes": sum(x["cold_bytes"] for x in s["shards"]),
                "rss_mb": rss_mb(p.pid),
                "peak_rss_mb": max(peaks.get(name) or 0, peak_rss_mb(p.pid) or 0),
                "compaction_s": build,
                "compaction_s_per_million": build / max(1, items) * 1e6,
            }
        total = sum(v["items"] for v in per_sink.values())
        searchable_s = searchable_s or settled_s
        print(f"settled in {settled_s:.0f} s: {per_sink}", file=sys.stderr)

        result = {
            "data": args.data, "n": int(meta["n"]), "dim": dim, "slices": args.slices,
            "slice_shards": args.slice_shards, "old_share": args.old_share, "ef_search": args.ef,
            "queries": len(queries), "filled": filled, "items": total,
            "hot_max": args.hot_max, "segment_max": args.segment_max,
            "hot_ingest_items": hot_full_items, "hot_ingest_s": hot_full_s,
            "hot_ingest_per_s": hot_full_items / max(hot_full_s, 1e-9),
            "searchable_s": searchable_s, "ingest_per_s": total / searchable_s, "settled_s": settled_s,
            "sinks": per_sink, "timeline": timeline,
        }
        # The build's results survive a failure of the query phase.
        with open(os.path.join(work, "build.json"), "w") as f:
            json.dump(result, f)
        print(f"build results in {work}/build.json", file=sys.stderr)

        def ask(consumer, q, tier=None):
            body = {"consumer": consumer, "vector": q.tolist(), "k": 10,
                    "plan": [{"model": MODEL, "weight": 1.0}]}
            if tier:
                body["tier"] = tier
            t = time.perf_counter()
            try:
                answer = http(f"{router}/v1/search", body)
            except OSError as e:
                print(f"{consumer}: {e}", file=sys.stderr)
                answer = None
            return (time.perf_counter() - t) * 1000, answer

        for i in range(min(args.warmup, len(queries))):
            ask("search", queries[i])
            ask("recent", queries[i], "hot")
        out = {c: {"ms": [], "recall": [], "partial": 0, "failed": 0} for c in ("search", "recent")}
        for i, q in enumerate(queries):
            want = {f"i{r}" for r in truth[i][:10]}
            for c, tier in (("search", None), ("recent", "hot")):
                ms, body = ask(c, q, tier)
                out[c]["ms"].append(ms)
                if body is None:
                    out[c]["failed"] += 1
                    continue
                got = {r["item_id"] for r in body["results"]}
                out[c]["recall"].append(len(got & want) / 10)
                out[c]["partial"] += 1 if body.get("partial") else 0
        for c, v in out.items():
            result[c] = {"recall_at_10": float(np.mean(v["recall"])) if v["recall"] else None,
                         "partial": v["partial"], "failed": v["failed"], **quantiles(v["ms"])}
        print(json.dumps(result, indent=1))
        if args.report:
            with open(args.report, "w") as f:
                f.write(report(result))
    finally:
        procs.stop(timeout=30)
        delete_topics(args, prefix)


def report(r):
    rows = "\n".join(
        f"| {name} | {v['items']:,} | {v['cold_vectors']:,} | {v['cold_bytes'] / 1e6:,.0f} | "
        f"{v['rss_mb']:,.0f} ({v['peak_rss_mb']:,.0f}) | "
        f"{v['compaction_s']:,.0f} | {v['compaction_s_per_million']:,.0f} |"
        for name, v in r["sinks"].items())
    s, h = r["search"], r["recent"]
    return f"""{r['n']:,} vectors of dimension {r['dim']} in {r['slices']} slices ({r['slice_shards']} shard(s) each),
{r['old_share']:.0%} of them 60 days old (cold tier, hot window 30 days); topic fill
{r['filled']['records']:,} records in {r['filled']['seconds']:.0f} s; hot parts capped at {r['hot_max']:,} items per shard,
segments at {r['segment_max']:,}. Ingest into the hot parts (until one is 90% full or all is read):
**{r['hot_ingest_per_s']:,.0f} items/s** ({r['hot_ingest_items']:,} in {r['hot_ingest_s']:,.0f} s). Every item searchable
after {r['searchable_s']:,.0f} s (**{r['ingest_per_s']:,.0f} items/s** end to end, paced by compaction once
the hot parts are full); every sink settled (compacted, nothing compacting) after {r['settled_s']:,.0f} s.

| sink | items | cold items | segments MB | RSS MB (peak) | compaction s | compaction s per million |
|---|---|---|---|---|---|---|
{rows}

| consumer | tiers | recall@10 | p50 ms | p95 ms | p99 ms | partial | failed |
|---|---|---|---|---|---|---|---|
| search | all | {s['recall_at_10'] or 0:.3f} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} | {s['partial']} | {s['failed']} |
| recent | hot | – | {h['p50_ms']:.2f} | {h['p95_ms']:.2f} | {h['p99_ms']:.2f} | {h['partial']} | {h['failed']} |
"""


if __name__ == "__main__":
    main()
