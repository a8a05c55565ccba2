"""Latency of a text query on an old version's sink, three ways: its own model (`own`), the new
model's query through a Drift-Adapter (`adapted`), and fused reads (`fused`: both models embed
the text, side by side, and the adapted query is fused with the old one).

  python3 loadtest/fused_latency.py --adapter NAME [--sink http://127.0.0.1:9411]
      [--golden .dev/golden/golden.json] [--queries 200] [--fuse 0.5] [--out FILE.json]

Needs a running sink of the adapter's old model whose adapters folder holds NAME (`compose/dev
up` starts one on 9411; `embedstream adapter train` writes into `$EMBEDSTREAM_HOME/adapters`,
which that sink reads). Queries are the golden sets' texts, each sent once per mode, the modes
interleaved query by query so that they see the same machine; one request at a time, after 20
warm-up rounds. Reports p50/p95/p99 of the time the client waited and of the sink's own
`took_ms`, and `fused − own` beside `adapted` (one new-model query embedding plus the map): the
fused reads' added latency and its bound.
"""

import argparse
import json
import statistics
import sys
import time
import urllib.request


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        answer = json.load(r)
    return (time.perf_counter() - t) * 1000, answer


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--sink", default="http://127.0.0.1:9411")
    ap.add_argument("--golden", default=".dev/golden/golden.json")
    ap.add_argument("--consumer", default="search")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--fuse", type=float, default=0.5)
    ap.add_argument("--out")
    args = ap.parse_args()

    golden = json.load(open(args.golden))
    texts = []
    for set_ in golden.values():
        texts += [q["text"] for q in set_["queries"]]
    seen, unique = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    texts = unique[: args.queries + 20]
    if len(texts) <= 20:
        sys.exit(f"{args.golden}: too few query texts")
    url = args.sink.rstrip("/") + "/v1/search"
    modes = {
        "own": {},
        "adapted": {"adapter": args.adapter},
        "fused": {"adapter": args.adapter, "fuse": args.fuse},
    }
    client = {m: [] for m in modes}
    took = {m: [] for m in modes}
    for i, text in enumerate(texts):
        for mode, extra in modes.items():
            ms, answer = post(url, {"consumer": args.consumer, "text": text, "k": 10, **extra})
            if i >= 20:
                client[mode].append(ms)
                took[mode].append(answer["took_ms"])
    rows = {}
    for mode in modes:
        rows[mode] = {
            "queries": len(client[mode]),
            **{f"client_p{int(q * 100)}_ms": pct(client[mode], q) for q in (0.5, 0.95, 0.99)},
            **{f"took_p{int(q * 100)}_ms": pct(took[mode], q) for q in (0.5, 0.95, 0.99)},
            "took_mean_ms": statistics.fmean(took[mode]),
        }
    summary = {
        "sink": args.sink,
        "adapter": args.adapter,
        "fuse": args.fuse,
        "modes": rows,
        "fused_minus_own_p50_ms": rows["fused"]["took_p50_ms"] - rows["own"]["took_p50_ms"],
        "adapted_p50_ms": rows["adapted"]["took_p50_ms"],
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
