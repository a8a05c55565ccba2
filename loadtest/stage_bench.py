"""The Kafka path's cost: sustained items/s through `embedstream embed-stage` for MiniLM versus
the bare `embedstream embed` on the same texts, and the event-to-visible latency at 50% of
the stage's capacity, for exactly-once and at-least-once output side by side in one run.
Runs against a running broker and registry (`compose/dev infra`).

  .dev/venv/bin/python loadtest/stage_bench.py [--items 2000] [--latency-secs 60]
      [--delivery both|exactly-once|at-least-once]

1. Bare model: `embedstream embed` over the catalog; its start-up (measured on a one-item
   file) is subtracted.
2. Stage backlog: all items produced first under a fresh topic prefix, then the stage started
   and left alone until its group has committed them all; throughput = items / (last output
   record's broker timestamp - the moment its log says the model was loaded); the records are
   read afterwards, so the reader does not compete for the CPU.
3. Latency: a fresh prefix, the stage running, items produced at 50% of (2)'s rate with
   event_time = now; latency = when a `read_committed` reader received the embedding record
   - its event_time (a transaction's records become visible at its commit).
Steps 2 and 3 run once per delivery mode, the modes one after the other on the same broker.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/embedstream")
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
REGISTRY = os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081")
PARTITIONS = 6


def catalog(n, path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "loadtest/debian_catalog.py"), "--limit", str(n)],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    with open(path, "w") as f:
        for line in out:
            item = json.loads(line)
            # The same text `embed` gets (no title: the stage would prepend it).
            f.write(json.dumps({"id": item["id"], "text": item["text"]}) + "\n")
    return len(out)


def bare(path, n):
    """items/s of `embed`, its start-up (load, measured on a one-item file) excluded."""
    one = path + ".one"
    with open(path) as f, open(one, "w") as g:
        g.write(f.readline())
    cmd = [BIN, "embed", "--model", "minilm-l6-v2@1", "--batch-size", "64", "--output", os.devnull]
    t = time.monotonic()
    subprocess.run(cmd + ["--input", one], check=True, stderr=subprocess.DEVNULL)
    startup = time.monotonic() - t
    t = time.monotonic()
    subprocess.run(cmd + ["--input", path], check=True, stderr=subprocess.DEVNULL)
    return n / (time.monotonic() - t - startup)


def env(prefix):
    return dict(os.environ, KAFKA_BOOTSTRAP=BOOTSTRAP, SCHEMA_REGISTRY_URL=REGISTRY,
                EMBEDSTREAM_TOPIC_PREFIX=prefix, EMBEDSTREAM_PARTITIONS=str(PARTITIONS))


def produce(prefix, path, rate=None):
    cmd = [BIN, "produce", "--input", path]
    if rate:
        cmd += ["--rate", str(rate)]
    subprocess.run(cmd, env=env(prefix), check=True, stderr=subprocess.DEVNULL)


def start_stage(prefix, delivery):
    log_path = os.path.join(tempfile.gettempdir(), f"stage-bench-{prefix}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [BIN, "embed-stage", "--listen", "127.0.0.1:0", "--group", f"{prefix}-stage",
         "--delivery", delivery],
        env=dict(env(prefix), NO_COLOR="1"), stdout=log, stderr=log,
    )
    return proc, log_path


def ready_ms(log_path, timeout=120):
    """Wall-clock ms when the stage had its model loaded (from its log)."""
    import datetime
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in open(log_path):
            if "Writing a new model version" in line:
                stamp = line.split()[0].rstrip("Z")
                dt = datetime.datetime.fromisoformat(stamp[:26]).replace(tzinfo=datetime.timezone.utc)
                return dt.timestamp() * 1000
        time.sleep(0.2)
    raise AssertionError(f"the stage did not load its model: {log_path}")


def read_embeddings(prefix, n, timeout):
    """(broker timestamp ms, event_time ms, received ms) of the first n embedding records, as a
    read_committed reader gets them."""
    topic = f"{prefix}.embeddings.minilm-l6-v2.v1"
    deser = AvroDeserializer(SchemaRegistryClient({"url": REGISTRY}))
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"bench-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "fetch.wait.max.ms": 10})
    deadline = time.monotonic() + timeout
    while True:
        try:
            c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
            break
        except Exception:
            time.sleep(0.5)
    out = []
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} records in {timeout}s"
        m = c.poll(0.5)
        if m is None or m.error() or m.value() is None:
            continue
        rec = deser(m.value(), SerializationContext(topic, MessageField.VALUE))
        event_time = rec["event_time"]
        if hasattr(event_time, "timestamp"):
            event_time = int(event_time.timestamp() * 1000)
        out.append((m.timestamp()[1], event_time, int(time.time() * 1000)))
    c.close()
    return out


def wait_caught_up(prefix, n, timeout):
    """Waits (cheaply: committed offsets only) until the stage's group has committed n items."""
    topic = f"{prefix}.items"
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"{prefix}-stage",
                  "enable.auto.commit": False})
    deadline = time.monotonic() + timeout
    while True:
        done = sum(max(tp.offset, 0) for tp in
                   c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10))
        if done >= n:
            c.close()
            return
        assert time.monotonic() < deadline, f"stage committed {done} of {n} in {timeout}s"
        time.sleep(2)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def measure(delivery, path, n, bare_rate, latency_secs, tmp):
    """Backlog throughput and latency at half of it, for one delivery mode."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    produce(prefix, path)
    stage, log_path = start_stage(prefix, delivery)
    try:
        # Nothing else runs on the machine meanwhile: the records are read afterwards, their
        # broker timestamps say when each was produced.
        wait_caught_up(prefix, n, timeout=1800)
    finally:
        stage.terminate()
        stage.wait()
    recs = read_embeddings(prefix, n, timeout=300)
    ts = sorted(t for t, _, _ in recs)
    # From the moment the model was loaded (the backlog was waiting) to the last record.
    stage_rate = n / ((ts[-1] - ready_ms(log_path)) / 1000)
    print(f"{delivery} stage (backlog): {stage_rate:.1f} items/s = {stage_rate / bare_rate:.3f} "
          f"of bare (Kafka path cost {100 * (1 - stage_rate / bare_rate):.1f}%)", flush=True)

    rate = stage_rate / 2
    m = min(n, int(rate * latency_secs))
    sub = os.path.join(tmp, "latency.jsonl")
    with open(path) as f, open(sub, "w") as g:
        for i, line in zip(range(m), f):
            g.write(line)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    stage, log_path = start_stage(prefix, delivery)
    try:
        ready_ms(log_path)
        time.sleep(2)  # model load and group join, before the clock starts
        producer = subprocess.Popen(
            [BIN, "produce", "--input", sub, "--rate", str(rate)],
            env=env(prefix), stderr=subprocess.DEVNULL)
        recs = read_embeddings(prefix, m, timeout=600)
        producer.wait()
    finally:
        stage.terminate()
        stage.wait()
    lat = [r - e for _, e, r in recs]
    print(f"{delivery} latency at {rate:.1f} items/s (50% of capacity), {m} items: "
          f"p50 {pct(lat, 50)} ms, p99 {pct(lat, 99)} ms, max {max(lat)} ms", flush=True)
    return {"delivery": delivery, "items": n, "bare_items_per_s": round(bare_rate, 1),
            "stage_items_per_s": round(stage_rate, 1),
            "ratio": round(stage_rate / bare_rate, 3),
            "latency_rate": round(rate, 1), "latency_items": m,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "mean_ms": round(statistics.mean(lat), 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--latency-secs", type=int, default=60)
    ap.add_argument("--delivery", default="both",
                    choices=["both", "exactly-once", "at-least-once"])
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "items.jsonl")
    n = catalog(args.items, path)
    print(f"catalog: {n} Debian packages", flush=True)

    bare_rate = bare(path, n)
    print(f"bare embed: {bare_rate:.1f} items/s", flush=True)
    modes = ["exactly-once", "at-least-once"] if args.delivery == "both" else [args.delivery]
    results = [measure(d, path, n, bare_rate, args.latency_secs, tmp) for d in modes]
    for r in results:
        print(json.dumps(r))
    if len(results) == 2:
        eos, alo = results
        print(json.dumps({"exactly_once_throughput_cost": round(
            1 - eos["stage_items_per_s"] / alo["stage_items_per_s"], 3),
            "exactly_once_p50_added_ms": eos["p50_ms"] - alo["p50_ms"],
            "exactly_once_p99_added_ms": eos["p99_ms"] - alo["p99_ms"]}))


if __name__ == "__main__":
    main()
