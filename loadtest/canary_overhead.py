"""What the request-level canary costs the router per query: the arm draw and the exposure log.

  .dev/benchvenv/bin/python loadtest/canary_overhead.py --data .dev/bench/idx-200k --queries 10000

Needs the broker and registry (`compose/dev infra`), `cargo build --release -p
embedstream-pipeline -p embedstream-loadtest`, and a set from `loadtest/index_data.py`. One
`embedstream sink` serves the old version (the set's vectors through `topic-fill`), one
`embedstream router` follows a control log where a migration to MPNet runs and the consumer
`canaried` is under a canary of share 0.01; the consumer `plain` has the same profile and no
canary. Queries alternate between the two, same vector, one at a time; only answers of the
canaried consumer's control arm are kept (they read the same version as `plain`, and their
exposures are logged). The difference of the two latency distributions is the canary's cost:
the unit's hash, the plan lookup, the exposure built and queued, and its share of the
writer's CPU (Avro encoding and the produce, on the router's other threads).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from slices_bench import BIN, MODEL, Processes, delete_topics, fill_topic, free_port, held_out, http, quantiles

NEW = "mpnet-base-v2@1"

CONSUMERS = """
[consumers.canaried]
ef_search = {ef}
default_k = 10
max_k = 100
log_queries = false

[consumers.plain]
ef_search = {ef}
default_k = 10
max_k = 100
log_queries = false
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--queries", type=int, default=10000, help="per consumer")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--share", type=float, default=0.01)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--registry", default=os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081"))
    args = ap.parse_args()

    meta, queries, _ = held_out(args.data, 500)
    prefix = f"overhead{int(time.time())}"
    work = tempfile.mkdtemp(prefix="canary-overhead-")
    consumers = os.path.join(work, "consumers.toml")
    with open(consumers, "w") as f:
        f.write(CONSUMERS.format(ef=args.ef))
    common = ["--bootstrap", args.bootstrap, "--registry-url", args.registry, "--topic-prefix", prefix,
              "--consumers-file", consumers]
    exe = os.path.join(BIN, "embedstream")
    procs = Processes(work)

    def cli(*argv):
        subprocess.run([exe, *argv], check=True, stdout=subprocess.DEVNULL,
                       stderr=open(os.path.join(work, "cli.log"), "a"), env=procs.env)

    try:
        topic = f"{prefix}.embeddings.minilm-l6-v2.v1"
        print(f"filled {topic}: {fill_topic(args, topic, meta['dim'])}", file=sys.stderr)
        cli("models", "activate", *common, MODEL)
        cli("migrate", *common, "start", "--from", MODEL, "--to", NEW)
        cli("migrate", *common, "canary", "--consumer", "canaried", "--share", str(args.share))
        sink_port, router_port = free_port(), free_port()
        procs.start("sink", [exe, "sink", *common, "--model", MODEL, "--data-dir", os.path.join(work, "data"),
                             "--listen", f"127.0.0.1:{sink_port}"])
        procs.start("router", [exe, "router", *common, "--listen", f"127.0.0.1:{router_port}",
                               "--query-log", "false"])
        router = f"http://127.0.0.1:{router_port}"
        deadline = time.time() + 1800
        while True:
            time.sleep(2)
            try:
                s = http(f"http://127.0.0.1:{sink_port}/v1/stats")
                busy = any(x["compacting"] for x in s["shards"])
                if s["lag"] == 0 and not busy and s["items"] == meta["n"]:
                    http(f"{router}/v1/search", {"consumer": "plain", "vector": queries[0].tolist(), "k": 10})
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit(f"the sink did not settle; see {work}")

        def ask(consumer, q):
            body = {"consumer": consumer, "vector": q.tolist(), "k": 10, "unit_id": uuid.uuid4().hex}
            t = time.perf_counter()
            try:
                answer = http(f"{router}/v1/search", body)
            except OSError:
                answer = None
            return (time.perf_counter() - t) * 1000, answer

        for i in range(args.warmup):
            for c in ("canaried", "plain"):
                ask(c, queries[i % len(queries)])
        ms = {"canaried": [], "plain": []}
        other_arm = 0
        for i in range(args.queries):
            q = queries[i % len(queries)]
            # Alternate which consumer goes first, so neither always follows the other.
            order = ("canaried", "plain") if i % 2 == 0 else ("plain", "canaried")
            for c in order:
                t, answer = ask(c, q)
                if c == "canaried" and (answer is None or answer.get("arm") != "control"):
                    other_arm += 1
                    continue
                if answer is not None:
                    ms[c].append(t)
        metrics = urllib_get(f"{router}/metrics")
        written = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("embedstream_exposures_written_total"))
        result = {"queries": args.queries, "share": args.share, "ef": args.ef,
                  "canary_arm_or_failed": other_arm, "exposures_written": written,
                  **{c: quantiles(v) for c, v in ms.items()}}
        result["difference_ms"] = {k: result["canaried"][k] - result["plain"][k]
                                   for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")}
        print(json.dumps(result, indent=1))
    finally:
        procs.stop(timeout=30)
        delete_topics(args, prefix)


def urllib_get(url):
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


if __name__ == "__main__":
    main()
