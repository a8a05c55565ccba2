"""A retrieval golden set from WordNet 3.0, with relevance that comes from the dictionary itself
and from neither embedding model.

  python3 loadtest/eval_sets.py [--task example] [--out .dev/golden-wordnet]

Data: the Debian package `wordnet-base` (version 1:3.0-37; WordNet 3.0, Princeton
University's license), fetched with `apt-get download` into .dev/wordnet/ and unpacked with
`dpkg-deb -x` (or `--wordnet DIR`: an unpacked usr/share/wordnet). Each synset line of
data.{noun,verb,adj,adv} holds the synset's words and its gloss: a definition followed by
quoted usage examples.

Tasks (`--task`); the catalog is the same synsets for all of them:

- example (default): "what does the word mean here?" The query is one of a synset's usage
  examples, which uses one of the synset's words ("he climbed the steep slope"); the documents
  are definitions ("an elevated geological formation"), so the other senses of the word compete.
- masked-example: the same with every form of the synset's words in the example replaced by
  "___" ("he climbed the steep ___"): which meaning fits the blank.
- reverse-dictionary: the query is a definition; the documents are synsets' word lists
  ("slope, incline, side").
- lookup: the query is a word list; the documents are definitions.

Relevant: the query synset's document, plus any catalog document with the same text (case
folded; only word lists repeat, e.g. the senses of "bank"). The catalog (`--items`, default
12,000) is the query synsets (`--queries`, default 1,500) and other synsets drawn from all four
parts of speech; only synsets whose definition is unique in WordNet are used. Query synsets
have an example of at least four words in which a form of one of their words is found and
masked (inflections: regular suffixes and the .exc exception lists) and which is not only the
word. Everything is seeded and the input is a fixed package version, so a run is repeatable.

Writes DIR/items.jsonl ({"id", "text", "attributes": {"pos"}}: the catalog to index),
DIR/golden.json ({"search": {"metric": "recall@10", "k": 10, "queries": [{"id", "text",
"relevant", "exclude"}]}}, the format of loadtest/golden_sets.py) and DIR/queries.jsonl (the
golden queries' {"id", "text"}, input for `embedstream embed`) and DIR/query_like.jsonl (texts
made like the queries from other synsets, none of them a golden query's: what a query log gives
adapter training, `adapter_eval.py --query-like`). Measuring both models exactly:

  B=target/release/embedstream; D=.dev/golden-wordnet
  for m in minilm-l6-v2@1 mpnet-base-v2@1; do
    $B embed --model $m --input-type document --input $D/items.jsonl --output $D/items.$m.jsonl
    $B embed --model $m --input-type query --input $D/queries.jsonl --output $D/queries.$m.jsonl
  done
  .dev/evalvenv/bin/python loadtest/exact_recall.py --golden $D/golden.json \
      --run old $D/items.minilm-l6-v2@1.jsonl $D/queries.minilm-l6-v2@1.jsonl \
      --run new $D/items.mpnet-base-v2@1.jsonl $D/queries.mpnet-base-v2@1.jsonl
"""

import argparse
import glob
import json
import os
import random
import re
import subprocess
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "wordnet-base=1:3.0-37"
POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}


def fetch_wordnet(dest):
    """Downloads and unpacks the pinned `wordnet-base` into dest; returns its data directory."""
    data = os.path.join(dest, "root", "usr", "share", "wordnet")
    if os.path.exists(os.path.join(data, "data.noun")):
        return data
    os.makedirs(dest, exist_ok=True)
    subprocess.run(["apt-get", "download", PACKAGE], cwd=dest, check=True)
    deb = sorted(glob.glob(os.path.join(dest, "wordnet-base_*.deb")))[-1]
    subprocess.run(["dpkg-deb", "-x", deb, os.path.join(dest, "root")], check=True)
    return data


def read_synsets(wordnet):
    """Every synset, in file order: {"id", "pos", "words", "definition", "examples"}."""
    synsets = []
    for pos, letter in POS.items():
        with open(os.path.join(wordnet, f"data.{pos}"), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # the license header
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                count = int(fields[3], 16)
                words = [re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).replace("_", " ") for i in range(count)]
                gloss = gloss.strip()
                synsets.append({
                    "id": f"wn:{fields[0]}-{letter}",
                    "pos": pos,
                    "words": words,
                    "definition": re.split(r';\s*"', gloss)[0].strip().rstrip(";").strip(),
                    "examples": re.findall(r'"([^"]+)"', gloss),
                })
    return synsets


def read_exceptions(wordnet):
    """Base form -> its irregular inflections, from the .exc files (lower case)."""
    inflected = defaultdict(set)
    for pos in POS:
        with open(os.path.join(wordnet, f"{pos}.exc")) as f:
            for line in f:
                # "inflected base [base ...]", words joined by "_".
                parts = line.split()
                for base in parts[1:]:
                    inflected[base.replace("_", " ").lower()].add(parts[0].replace("_", " ").lower())
    return inflected


def suffixed(word):
    """Regular inflections and derived forms of one word (a superset; used to find it)."""
    out = {word + s for s in ("", "s", "es", "ed", "d", "ing", "er", "est", "r", "st", "'s")}
    if word.endswith("e"):
        out |= {word[:-1] + "ing", word[:-1] + "ed"}
    if word.endswith("y"):
        out |= {word[:-1] + s for s in ("ies", "ied", "ier", "iest", "ily")}
    if len(word) > 2:
        out |= {word + word[-1] + s for s in ("ed", "ing", "er", "est")}
    return out


def forms(lemma, inflected):
    """The forms of a (possibly multi-word) lemma to mask: the first or last word inflected."""
    lemma = lemma.lower()
    tokens = lemma.split(" ")
    out = {lemma} | inflected.get(lemma, set())
    if len(tokens) == 1:
        return out | suffixed(lemma)
    for v in suffixed(tokens[0]) | inflected.get(tokens[0], set()):
        out.add(" ".join([v] + tokens[1:]))
    for v in suffixed(tokens[-1]):
        out.add(" ".join(tokens[:-1] + [v]))
    return out


def masked_example(synset, inflected):
    """(example, masked example) for the synset's first usable example, or None."""
    patterns = set()
    for w in synset["words"]:
        patterns |= forms(w, inflected)
    alternatives = "|".join(re.escape(p) for p in sorted(patterns, key=lambda p: (-len(p), p)))
    rx = re.compile(r"(?<![A-Za-z])(" + alternatives + r")(?![A-Za-z])", re.I)
    for example in synset["examples"]:
        if len(example.split()) < 4:
            continue
        masked, n = rx.subn("___", example)
        if n and masked.strip() != "___":
            return example, masked
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="example",
                    choices=["masked-example", "example", "reverse-dictionary", "lookup"])
    ap.add_argument("--out", default=os.path.join(ROOT, ".dev", "golden-wordnet"))
    ap.add_argument("--wordnet", help="an unpacked usr/share/wordnet (default: fetch the package)")
    ap.add_argument("--items", type=int, default=12000)
    ap.add_argument("--queries", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--query-like", type=int, default=5000,
                    help="texts like the queries, of synsets that are not golden queries (query_like.jsonl)")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    wordnet = args.wordnet or fetch_wordnet(os.path.join(ROOT, ".dev", "wordnet"))
    synsets = read_synsets(wordnet)
    inflected = read_exceptions(wordnet)
    definitions = defaultdict(int)
    for s in synsets:
        definitions[s["definition"].lower()] += 1
    usable = [s for s in synsets if s["definition"] and definitions[s["definition"].lower()] == 1]

    pool = []
    for s in usable:
        found = masked_example(s, inflected)
        if found:
            s["example"], s["masked"] = found
            pool.append(s)
    rng.shuffle(pool)
    queries = pool[: args.queries]
    chosen = {s["id"] for s in queries}
    others = [s for s in usable if s["id"] not in chosen]
    rng.shuffle(others)
    catalog = queries + others[: args.items - len(queries)]
    rng.shuffle(catalog)

    words_doc = args.task == "reverse-dictionary"

    def document(s):
        return ", ".join(s["words"]) if words_doc else s["definition"]

    def query(s):
        return {"masked-example": s["masked"], "example": s["example"],
                "reverse-dictionary": s["definition"], "lookup": ", ".join(s["words"])}[args.task]

    os.makedirs(args.out, exist_ok=True)
    same_text = defaultdict(list)
    with open(os.path.join(args.out, "items.jsonl"), "w") as out:
        for s in catalog:
            out.write(json.dumps({"id": s["id"], "text": document(s), "attributes": {"pos": s["pos"]}}) + "\n")
            same_text[document(s).lower()].append(s["id"])
    golden = {"search": {"metric": "recall@10", "k": 10, "queries": [
        {"id": f"search:{s['id']}", "text": query(s), "relevant": sorted(same_text[document(s).lower()]),
         "exclude": []}
        for s in queries]}}
    with open(os.path.join(args.out, "golden.json"), "w") as out:
        json.dump(golden, out)
    with open(os.path.join(args.out, "queries.jsonl"), "w") as out:
        for q in golden["search"]["queries"]:
            out.write(json.dumps({"id": q["id"], "text": q["text"]}) + "\n")
    # Texts like the queries, of other synsets: what a query log would give adapter training.
    with open(os.path.join(args.out, "query_like.jsonl"), "w") as out:
        for s in pool[args.queries: args.queries + args.query_like]:
            out.write(json.dumps({"id": f"ql:{s['id']}", "text": query(s)}) + "\n")
    shared = sum(len(q["relevant"]) > 1 for q in golden["search"]["queries"])
    print(f"{args.task}: {len(catalog)} items, {len(queries)} queries "
          f"({shared} with more than one relevant item); pool {len(pool)} synsets")


if __name__ == "__main__":
    main()
