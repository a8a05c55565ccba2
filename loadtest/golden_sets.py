"""Golden query sets per consumer, from Debian's package catalog, with relevance that comes
from neither embedding model.

  python3 loadtest/golden_sets.py --catalog CATALOG.jsonl --items 1500 --out DIR

CATALOG is `loadtest/debian_catalog.py`'s output. Writes:

- DIR/items.jsonl — the catalog to index: {"id", "text", "attributes"} where text is the long
  description only (the synopsis is held out: it is the search query).
- DIR/golden.json — {consumer: {"metric", "k", "queries": [{"id", "text", "relevant",
  "exclude"}]}}:
  - search, recall@10: a package's synopsis → that package (and any package with the same
    synopsis).
  - ads, recall@5: a package's synopsis → every package built from the same source package
    (the "advertiser's" product family).
  - recsys, recall@50: a package's description → the other packages of its source family
    ("more like this"; the query item itself is excluded from the results).
  - dedup, precision@1: a package's description → its near-duplicates: other packages whose
    descriptions share ≥ 60% of their words (Jaccard) without being identical; the top result
    other than the item itself must be one.

The catalog is mostly whole source families (so ads and recsys have relevant sets), filled up
with single packages; everything is seeded, so a run is repeatable on one machine.
"""

import argparse
import json
import os
import random
import re
from collections import defaultdict


def words(text):
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--items", type=int, default=1500)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--search", type=int, default=500)
    ap.add_argument("--ads", type=int, default=400)
    ap.add_argument("--recsys", type=int, default=300)
    ap.add_argument("--dedup", type=int, default=300)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    packages = []
    for line in open(args.catalog):
        p = json.loads(line)
        synopsis = p["title"].strip()
        text = p["text"]
        long = text[len(synopsis) + 2 :] if text.startswith(synopsis + ". ") else ""
        if len(long.split()) < 8 or len(synopsis.split()) < 2:
            continue
        source = (p.get("attributes") or {}).get("source") or p["id"]
        packages.append({"id": p["id"], "synopsis": synopsis, "long": long, "source": source,
                         "attributes": p.get("attributes") or {}})
    families = defaultdict(list)
    for p in packages:
        families[p["source"]].append(p)

    # Whole families of 2..8 packages for ~70% of the catalog, then single packages.
    multi = [f for f in families.values() if 2 <= len(f) <= 8]
    rng.shuffle(multi)
    chosen, ids = [], set()
    for f in multi:
        if len(chosen) + len(f) > int(args.items * 0.7):
            continue
        chosen.extend(f)
        ids.update(p["id"] for p in f)
    singles = [p for p in packages if p["id"] not in ids]
    rng.shuffle(singles)
    for p in singles[: args.items - len(chosen)]:
        chosen.append(p)
        ids.add(p["id"])
    rng.shuffle(chosen)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "items.jsonl"), "w") as out:
        for p in chosen:
            out.write(json.dumps({"id": p["id"], "text": p["long"], "attributes": p["attributes"]}) + "\n")

    family = defaultdict(list)
    by_synopsis = defaultdict(list)
    for p in chosen:
        family[p["source"]].append(p["id"])
        by_synopsis[p["synopsis"].lower()].append(p["id"])

    # Near-duplicates: candidates share the description's first 40 characters (cheap
    # blocking), then word Jaccard >= 0.6, identical texts left out.
    blocks = defaultdict(list)
    for p in chosen:
        blocks[p["long"][:40].lower()].append(p)
    near = defaultdict(set)
    for block in blocks.values():
        for i, a in enumerate(block):
            wa = words(a["long"])
            for b in block[i + 1 :]:
                if a["long"] == b["long"]:
                    continue
                wb = words(b["long"])
                if len(wa & wb) / max(1, len(wa | wb)) >= 0.6:
                    near[a["id"]].add(b["id"])
                    near[b["id"]].add(a["id"])

    def sample(pool, n):
        pool = list(pool)
        rng.shuffle(pool)
        return pool[:n]

    golden = {}
    golden["search"] = {"metric": "recall@10", "k": 10, "queries": [
        {"id": f"search:{p['id']}", "text": p["synopsis"],
         "relevant": sorted(by_synopsis[p["synopsis"].lower()]), "exclude": []}
        for p in sample(chosen, args.search)]}
    in_family = [p for p in chosen if len(family[p["source"]]) >= 2]
    golden["ads"] = {"metric": "recall@5", "k": 5, "queries": [
        {"id": f"ads:{p['id']}", "text": p["synopsis"], "relevant": sorted(family[p["source"]]), "exclude": []}
        for p in sample(in_family, args.ads)]}
    golden["recsys"] = {"metric": "recall@50", "k": 50, "queries": [
        {"id": f"recsys:{p['id']}", "text": p["long"],
         "relevant": sorted(i for i in family[p["source"]] if i != p["id"]), "exclude": [p["id"]]}
        for p in sample(in_family, args.recsys)]}
    with_near = [p for p in chosen if near[p["id"]]]
    golden["dedup"] = {"metric": "precision@1", "k": 1, "queries": [
        {"id": f"dedup:{p['id']}", "text": p["long"], "relevant": sorted(near[p["id"]]), "exclude": [p["id"]]}
        for p in sample(with_near, args.dedup)]}
    with open(os.path.join(args.out, "golden.json"), "w") as out:
        json.dump(golden, out)
    sizes = {c: len(g["queries"]) for c, g in golden.items()}
    print(f"{len(chosen)} items ({len(ids & set(i for f in multi for i in (p['id'] for p in f)))} in families); queries {sizes}")


if __name__ == "__main__":
    main()
