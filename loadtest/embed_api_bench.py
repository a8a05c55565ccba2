"""The embeddings APIs' cost: texts/s, requests/s and request latency of the router's
`POST /v1/embeddings` (OpenAI's shape) and `POST /embed` (TEI's) at 1, 8 and 32 texts per
request, beside the bare `embedstream embed` on the same texts with the same engine settings
(replicas, batch limits), in one run. Runs against a running broker and registry
(`compose/dev infra`).

  python3 loadtest/embed_api_bench.py [--texts 2000] [--max-chars 700] [--replicas 2]
      [--inflight 64] [--latency-texts 320] [--out loadtest/reports/embed-api.json]

The texts are the Debian catalog's, each cut to `--max-chars` characters so that it fits the
model's token limit (the OpenAI shape refuses a longer text).

1. Bare model: `embedstream embed` over the texts, before and after the HTTP runs; its
   start-up (a one-text file) is subtracted. Texts/s is the peer's number.
2. HTTP path: `embedstream up` (its own topic prefix and ports; no drift consumer) with
   `--sink-embed-replicas` = the bare run's replicas; one warm-up request; then for each API
   and batch size, `target/release/embed-load` sends every text once, closed loop, with about
   `--inflight` texts in flight (batch 1: 64 clients; 8: 8; 32: 2), so the engine can batch
   across requests as the bare run batches its input.
   Overhead = 1 - HTTP texts/s / bare texts/s (mean of the two bare runs). Then the latency
   of one client alone (one request at a time) on the first `--latency-texts` texts.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/embedstream")
LOAD = os.path.join(ROOT, "target/release/embed-load")
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
REGISTRY = os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081")
MODEL = "minilm-l6-v2@1"
# The sink's engine limits (EngineConfig's defaults), given to the bare run too.
BATCH_SIZE, BATCH_TOKENS = 64, 16384


def texts_file(n, path, max_chars):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "loadtest/debian_catalog.py"), "--limit", str(n)],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    with open(path, "w") as f:
        for line in out:
            item = json.loads(line)
            # Cut so that every text fits the model's 256 tokens: the OpenAI shape refuses longer
            # ones, as OpenAI does, and both sides must embed the same texts.
            f.write(json.dumps({"id": item["id"], "text": item["text"][:max_chars]}) + "\n")
    return len(out)


def bare(path, n, replicas):
    """texts/s of `embed`, its start-up (load, measured on a one-text file) excluded."""
    one = path + ".one"
    with open(path) as f, open(one, "w") as g:
        g.write(f.readline())
    cmd = [BIN, "embed", "--model", MODEL, "--batch-size", str(BATCH_SIZE),
           "--batch-tokens", str(BATCH_TOKENS), "--replicas", str(replicas),
           "--output", os.devnull]
    t = time.monotonic()
    subprocess.run(cmd + ["--input", one], check=True, stderr=subprocess.DEVNULL)
    startup = time.monotonic() - t
    t = time.monotonic()
    subprocess.run(cmd + ["--input", path], check=True, stderr=subprocess.DEVNULL)
    return n / (time.monotonic() - t - startup)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_up(replicas, tmp):
    prefix = f"embedbench{uuid.uuid4().hex[:8]}"
    query, metrics, sink = free_port(), free_port(), free_port()
    log_path = os.path.join(tmp, "up.log")
    log = open(log_path, "w")
    env = dict(os.environ, KAFKA_BOOTSTRAP=BOOTSTRAP, SCHEMA_REGISTRY_URL=REGISTRY,
               EMBEDSTREAM_TOPIC_PREFIX=prefix, NO_COLOR="1")
    proc = subprocess.Popen(
        [BIN, "up", "--group", f"{prefix}-stage", "--listen", f"127.0.0.1:{metrics}",
         "--query-listen", f"127.0.0.1:{query}", "--sink-listen", f"127.0.0.1:{sink}",
         "--sink-data-dir", os.path.join(tmp, "sink"), "--drift-interval-secs", "0",
         "--sink-embed-replicas", str(replicas)],
        env=env, stdout=log, stderr=log,
    )
    url = f"http://127.0.0.1:{query}"
    body = json.dumps({"input": "warm-up", "model": MODEL}).encode()
    deadline = time.monotonic() + 180
    while True:
        try:
            req = urllib.request.Request(f"{url}/v1/embeddings", data=body, method="POST",
                                         headers={"content-type": "application/json"})
            urllib.request.urlopen(req, timeout=30).read()
            return proc, url
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit(f"the platform gave no embeddings in 180 s; see {log_path}")
            time.sleep(0.5)


def load(url, api, path, batch, clients, limit=None):
    cmd = [LOAD, "--url", url, "--api", api, "--model", MODEL, "--texts", path,
           "--batch", str(batch), "--concurrency", str(clients)]
    if limit:
        cmd += ["--limit", str(limit)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--max-chars", type=int, default=700)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--latency-texts", type=int, default=320)
    ap.add_argument("--out")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "texts.jsonl")
        n = texts_file(a.texts, path, a.max_chars)
        before = bare(path, n, a.replicas)
        print(f"bare embed: {before:.1f} texts/s", file=sys.stderr)
        proc, url = start_up(a.replicas, tmp)
        runs = []
        try:
            for api in ("openai", "tei"):
                for batch in (1, 8, 32):
                    r = load(url, api, path, batch, max(1, a.inflight // batch))
                    print(json.dumps(r), file=sys.stderr)
                    runs.append(r)
            # Unloaded latency: one client, one request at a time.
            alone = []
            for batch in (1, 8, 32):
                r = load(url, "openai", path, batch, 1, limit=a.latency_texts)
                print(json.dumps(r), file=sys.stderr)
                alone.append(r)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        after = bare(path, n, a.replicas)
        print(f"bare embed again: {after:.1f} texts/s", file=sys.stderr)
    peer = statistics.mean([before, after])
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    report = {
        "date": time.strftime("%Y-%m-%d"), "cpu": cpu, "cores": os.cpu_count(),
        "texts": n, "replicas": a.replicas, "inflight": a.inflight,
        "bare_texts_per_s": [before, after], "runs": runs, "alone": alone,
    }
    for r in runs + alone:
        if r.get("first_error"):
            print(f"{r['api']} batch {r['batch']}: {r['errors']} errors, e.g. {r['first_error']}",
                  file=sys.stderr)
    print("| API | texts/request | clients | requests/s | texts/s | p50 ms | p99 ms | errors | overhead vs bare |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        overhead = 1 - r["texts_per_s"] / peer
        print(f"| {r['api']} | {r['batch']} | {r['concurrency']} | {r['requests_per_s']:.1f} | "
              f"{r['texts_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | "
              f"{overhead:+.1%} |")
    print(f"| bare `embed` | — | — | — | {before:.1f} / {after:.1f} | — | — | — | — |")
    print()
    print("| one client, openai | texts/request | requests | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for r in alone:
        print(f"| | {r['batch']} | {r['requests']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
