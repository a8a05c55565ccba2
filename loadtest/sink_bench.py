"""Freshness of an index sink at a sustained write rate, beside a bare Kafka consumer.

  .dev/venv/bin/python loadtest/sink_bench.py --data DIR [--rate 5000] [--secs 30]

Needs the broker and registry (`compose/dev infra`), `cargo build --release --bin embedstream
--bin sink-load`, and DIR from `loadtest/index_data.py` (real MiniLM vectors of the
Debian catalog). Each run uses a fresh topic prefix (`bench<time>.embeddings.minilm-l6-v2.v1`,
6 partitions) and a fresh `embedstream sink` with the default config (2 shards, compaction
policy on), so the sink also compacts while it is measured.

`target/release/sink-load` (see its doc) produces at --rate for a warm-up then the
measured window, and measures (a) the sink: probe records, polled on `GET /v1/items/{id}`
until searchable, and (b) the peer: a bare librdkafka consumer of the same topic, the floor
Kafka itself sets on this broker. The sink's own histogram (record timestamp -> searchable,
every record) is read from its /metrics afterwards.

`--alone` runs the sink as deployed: no peer and no probe poller, so the broker serves one
consumer and the 2 cores carry no measuring load; the sink's histogram is then the measure.
The peer and the probes each cost the broker and the CPU something (every fetched record is
read again for the peer; the poller sends a request every millisecond), so the default run
measures the sink under more load than it would see alone.

The run deletes its topic at the end (a run that was killed leaves one behind: the script
warns when earlier runs' topics are on the broker).

`--e2e N` first measures the broker's own floor with Kafka's `EndToEndLatency` (from
kafka-tools, on the classpath compose/dev resolved): N records of the embedding record's size,
acks=all, each produced and consumed before the next.

`--client KEY=VALUE` (repeatable) sets a librdkafka property on all three clients (the load's
producer, the peer and the sink's consumer, the last through its config file's
`[kafka] properties`), for A/B runs of client settings.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
FRESHNESS = "embedstream_sink_freshness_seconds"


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read()
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url} did not answer in {timeout} s")


def histogram(metrics_text, name):
    """Cumulative bucket counts of a Prometheus histogram (summed over label sets)."""
    buckets = {}
    for line in metrics_text.splitlines():
        if line.startswith(name + "_bucket"):
            le = line.split('le="')[1].split('"')[0]
            le = float("inf") if le == "+Inf" else float(le)
            buckets[le] = buckets.get(le, 0) + float(line.rsplit(" ", 1)[1])
    return sorted(buckets.items())


def quantile(buckets, q):
    """Linear interpolation inside the bucket, as Prometheus' histogram_quantile does."""
    total = buckets[-1][1]
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return float("nan")


def broker_floor(args):
    """Kafka's own EndToEndLatency on a topic of its own: percentiles in ms."""
    import glob
    from confluent_kafka.admin import AdminClient, NewTopic
    lib = sorted(glob.glob(os.path.join(ROOT, ".dev", "kafka", "*", "lib")))
    if not lib:
        sys.exit("no Kafka classpath in .dev/kafka: run compose/dev infra first")
    topic = f"bench-e2e-{int(time.time())}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        future.result()
    try:
        # The size of an embedding record of 384 floats with its Avro framing.
        out = subprocess.run(
            ["java", "-Xmx512m", "-cp", os.path.join(lib[-1], "*"),
             f"-Dlog4j2.configurationFile={os.path.join(ROOT, 'compose', 'kafka', 'log4j2.properties')}",
             "org.apache.kafka.tools.EndToEndLatency", "--bootstrap-server", args.bootstrap,
             "--topic", topic, "--num-records", str(args.e2e), "--producer-acks", "all",
             "--record-size", "1650", "--record-key-size", "16"],
            capture_output=True, text=True, check=True).stdout
    finally:
        for future in admin.delete_topics([topic]).values():
            future.result()
    floor = {}
    for line in out.splitlines():
        # "Avg latency: 1.2345 ms" and "Percentiles: 50th = 1, 99th = 3, 99.9th = 7"
        if line.startswith("Avg latency"):
            floor["avg_ms"] = float(line.split(":")[1].split()[0])
        if line.startswith("Percentiles"):
            for part in line.split(":", 1)[1].split(","):
                name, value = part.split("=")
                floor[name.strip().replace(".", "_") + "_ms"] = float(value)
    floor["records"] = args.e2e
    print(f"broker floor (EndToEndLatency, {args.e2e} records one at a time, acks=all): {floor}",
          file=sys.stderr)
    return floor


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--secs", type=int, default=30)
    ap.add_argument("--warmup-secs", type=int, default=10)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--registry-url", default=os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081"))
    ap.add_argument("--listen", default="127.0.0.1:19501")
    ap.add_argument("--fetch-wait-ms", type=int, default=None,
                    help="fetch.wait.max.ms of the sink and the peer (default: the sink's own, 10)")
    ap.add_argument("--sink-toml", default="",
                    help="extra TOML for the sink's config file (e.g. '[index.compaction]\\nhot_fraction = 0.2')")
    ap.add_argument("--alone", action="store_true",
                    help="no peer consumer and no probe poller: the sink's histogram only")
    ap.add_argument("--client", action="append", default=[], metavar="KEY=VALUE",
                    help="librdkafka property for the producer, the peer and the sink")
    ap.add_argument("--e2e", type=int, default=0, metavar="N",
                    help="first run Kafka's EndToEndLatency with N records (the broker's floor)")
    args = ap.parse_args()
    for b in ("embedstream", "sink-load"):
        if not os.path.exists(os.path.join(BIN, b)):
            sys.exit(f"{BIN}/{b} missing: cargo build --release --bin embedstream --bin sink-load")
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    earlier = [t for t in admin.list_topics(timeout=10).topics if t.startswith("bench")]
    if earlier:
        print(f"warning: {len(earlier)} topics of earlier (killed) runs are on the broker: "
              + ", ".join(sorted(earlier)), file=sys.stderr)
    e2e = broker_floor(args) if args.e2e else None
    prefix = f"bench{int(time.time())}"
    topic = f"{prefix}.embeddings.minilm-l6-v2.v1"
    for future in admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)]).values():
        future.result()
    platform = ["--bootstrap", args.bootstrap]
    work = tempfile.mkdtemp(prefix="sink-bench-")
    log = open(os.path.join(work, "sink.log"), "w")
    extra = []
    props = dict(kv.split("=", 1) for kv in args.client)
    # The sink's own fetch.wait.max.ms is 10 (index-sink consumer.rs); the peer keeps it equal.
    fetch_wait = 10 if args.fetch_wait_ms is None else args.fetch_wait_ms
    if args.fetch_wait_ms is not None:
        props["fetch.wait.max.ms"] = str(fetch_wait)
    if props or args.sink_toml:
        with open(os.path.join(work, "sink.toml"), "w") as f:
            f.write(args.sink_toml.replace("\\n", "\n") + "\n")
            if props:
                f.write("[kafka]\nproperties = { "
                        + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in props.items())
                        + " }\n")
        extra = ["--config", os.path.join(work, "sink.toml")]
    sink = subprocess.Popen([os.path.join(BIN, "embedstream"), "sink", *platform, *extra,
                             "--registry-url", args.registry_url, "--topic-prefix", prefix,
                             "--model", "minilm-l6-v2@1", "--listen", args.listen, "--data-dir", work],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://{args.listen}"
        wait_http(base + "/v1/stats")
        load = subprocess.Popen([os.path.join(BIN, "sink-load"), "--bootstrap", args.bootstrap,
                              "--registry-url", args.registry_url, "--topic", topic,
                              *([] if args.alone else ["--sink-url", base]), "--vectors", os.path.join(args.data, "base.f32"),
                              "--rate", str(args.rate), "--secs", str(args.secs),
                              "--warmup-secs", str(args.warmup_secs),
                              "--fetch-wait-ms", str(fetch_wait),
                              *(["--no-peer"] if args.alone else []),
                              *[a for kv in args.client for a in ("--client", kv)]],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The histogram at the end of the warm-up (sink-load waits 2 s for the peer first),
        # subtracted from the one at the end: the measured window only.
        time.sleep(2 + args.warmup_secs)
        before = dict(histogram(wait_http(base + "/metrics").decode(), FRESHNESS))
        out, err = load.communicate()
        if load.returncode != 0:
            sys.exit(f"sink-load failed:\n{err[-3000:]}")
        result = json.loads(out.strip().splitlines()[-1])
        h = [(le, c - before.get(le, 0))
             for le, c in histogram(wait_http(base + "/metrics").decode(), FRESHNESS)]
        total = h[-1][1] if h else 0
        le_100ms = next((c for le, c in h if abs(le - 0.1) < 1e-9), float("nan"))
        result["sink_histogram"] = {
            "records": total,
            "p50_ms": quantile(h, 0.5) * 1000 if total else None,
            "p99_ms": quantile(h, 0.99) * 1000 if total else None,
            "share_within_100ms": le_100ms / total if total else None,
            "note": "measured window (after the warm-up); interpolated inside Prometheus buckets",
        }
        stats = json.loads(wait_http(base + "/v1/stats"))
        result["sink_compactions"] = sum((s.get("last_compaction") or {}).get("count", 0)
                                         for s in stats.get("shards", []))
    finally:
        sink.terminate()
        sink.wait(timeout=60)
        for future in admin.delete_topics([topic]).values():
            future.result()
    if e2e is not None:
        result["broker_end_to_end"] = e2e
    print(json.dumps(result, indent=2))
    s, p, a = result["sink_probe"], result["peer_bare_consumer"], result["producer_acks"]
    h = result["sink_histogram"]
    probes = "no probes" if args.alone else \
        f"probes p50 {s.get('p50_ms')} ms p99 {s.get('p99_ms')} ms ({s['count']})"
    peer = "no peer" if p is None else \
        f"bare consumer p50 {p.get('p50_ms')} ms p99 {p.get('p99_ms')} ms ({p['count']} records)"
    print(f"rate {result['rate_sent']:.0f}/s for {result['window_s']:.0f} s {args.client} fetch wait {fetch_wait} ms: "
          f"sink histogram p50 {h['p50_ms'] or float('nan'):.0f} ms p99 {h['p99_ms'] or float('nan'):.0f} ms "
          f"({100 * (h['share_within_100ms'] or 0):.1f}% within 100 ms); {probes}; {peer}; "
          f"producer acks p50 {a.get('p50_ms')} ms p99 {a.get('p99_ms')} ms", file=sys.stderr)


if __name__ == "__main__":
    main()
