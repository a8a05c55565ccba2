#!/usr/bin/env python3
"""Produce reference sentence embeddings with the original implementation.

Runs sentence-transformers (PyTorch, CPU) on a fixed list of texts and writes
a JSON fixture that the Rust embedding engine is checked against:

    HF_HUB_OFFLINE=1 python pipeline/scripts/reference_vectors.py \
        --model-dir /tmp/models/minilm-l6-v2 --model-id minilm-l6-v2 \
        --out pipeline/tests/fixtures/reference/minilm-l6-v2.json

Every text is encoded on its own (batch of one, so no padding is involved),
exactly as ``model.encode(text)`` returns it to a user: the model's own module
pipeline (Transformer -> Pooling -> Normalize, per its modules.json) is run and
``normalize_embeddings=False`` so nothing extra is applied on top.

``input_ids`` are captured from the features actually passed to the
Transformer module during ``encode`` (i.e. after sentence-transformers'
truncation to ``max_seq_length``), and cross-checked against a direct call to
``model.tokenizer``.

Vectors are rounded to 7 significant digits. The fixed texts are defined
below; change them only together with the Rust tests that consume the fixture.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
import sentence_transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402


def _long_text() -> str:
    """A deterministic paragraph of real English words, well past 384 tokens.

    Built from fixed word lists with a tiny linear congruential generator, so it
    does not depend on Python's ``random`` module. The generated text itself is
    stored in the fixture, so consumers never need to regenerate it.
    """
    subjects = ["the maintainer", "a package", "the archive", "every mirror",
                "the build daemon", "our team", "the release manager", "this library",
                "the kernel", "a volunteer", "the security tracker", "the installer"]
    verbs = ["updates", "describes", "replaces", "verifies", "compiles", "documents",
             "downloads", "removes", "depends on", "signs", "uploads", "tests"]
    objects = ["the source tarball", "a shared library", "the manual pages",
               "several translations", "the default configuration", "a new upstream version",
               "the network service", "old compatibility links", "the graphical frontend",
               "a command line tool", "the development headers", "the test suite"]
    tails = ["before the freeze", "after a long review", "for every architecture",
             "without any warning", "during the weekly rebuild", "in the stable release",
             "on slow machines", "with careful attention", "because users asked for it",
             "when the mirror synchronises", "despite several bugs", "at the end of the year"]
    state = 12345
    sentences = []
    for _ in range(60):
        parts = []
        for words in (subjects, verbs, objects, tails):
            state = (1103515245 * state + 12345) % (2 ** 31)
            parts.append(words[(state >> 16) % len(words)])
        sentence = " ".join(parts)
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
    return " ".join(sentences)


TEXTS: list[tuple[str, str]] = [
    ("short_sentence", "The quick brown fox jumps over the lazy dog."),
    ("debian_synopsis", "GNU C Library: Shared libraries"),
    ("debian_synopsis_2", "fast, scalable, distributed revision control system (web interface)"),
    ("long_truncated", _long_text()),
    ("punctuation_heavy", "Wait... what?! (Really) -- yes: [1], {2}; \"quoted\" & 'single' <tag/> #hash @at $5.00 100% ~tilde^ *star* _under_ |pipe| \\back/slash"),
    ("accents_non_ascii", "Café crème à l'hôtel, Größe und Übermaß; 日本語のテキスト 中文 한국어; Привет, мир! 🚀🙂"),
    ("mixed_case_numbers", "OpenSSL 3.0.13 fixes CVE-2024-0727 in libSSL3 for x86_64 and ARM64 (v2.41, 1e-5, 0xFF)"),
    ("single_char", "a"),
    ("single_punct", "."),
    ("whitespace_padded", "  hello  "),
    ("newlines_tabs", "first line\nsecond\tline with\ttabs\r\n\n\tindented third line\n"),
    ("url_email", "See https://example.org/path/to/page?query=1&lang=en#section or mail jane.doe+tag@example.com"),
    ("all_caps", "THIS IS ALL UPPER CASE TEXT ABOUT A PACKAGE MANAGER"),
    ("repeated_words", "package package package package package"),
]


def round_sig(x: float, digits: int = 7) -> float:
    return float(f"{x:.{digits - 1}e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--model-id", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    torch.set_num_threads(2)
    model = SentenceTransformer(args.model_dir, device="cpu")
    model.eval()
    max_len = int(model.max_seq_length)
    module_types = [type(m).__name__ for m in model]

    # Capture the exact features handed to the Transformer module during encode.
    seen: list[list[int]] = []

    def hook(_module, hargs, hkwargs):
        features = hargs[0] if hargs else hkwargs.get("features")
        ids = features["input_ids"]
        mask = features.get("attention_mask")
        assert ids.shape[0] == 1, "expected a batch of one"
        if mask is not None:
            assert bool(mask.all()), "batch of one must not be padded"
        seen.append([int(t) for t in ids[0].tolist()])

    handle = model[0].register_forward_pre_hook(hook, with_kwargs=True)

    records = []
    total = 0.0
    for name, text in TEXTS:
        seen.clear()
        t0 = time.perf_counter()
        vec = model.encode(text, batch_size=1, normalize_embeddings=False,
                           convert_to_numpy=True, show_progress_bar=False)
        total += time.perf_counter() - t0
        assert vec.ndim == 1, vec.shape
        assert len(seen) == 1, f"{name}: transformer called {len(seen)} times"
        ids = seen[0]
        direct = model.tokenizer(text, truncation=True, max_length=max_len)["input_ids"]
        assert list(direct) == ids, f"{name}: tokenizer ids differ from ids seen by the model"
        records.append({
            "name": name,
            "text": text,
            "input_ids": ids,
            "vector": [round_sig(float(x)) for x in vec.tolist()],
        })
        print(f"{args.model_id}: {name}: {len(ids)} tokens, |v|={float((vec ** 2).sum()) ** 0.5:.6f}",
              file=sys.stderr)
    handle.remove()
    print(f"{args.model_id}: encode() of {len(TEXTS)} texts one by one took {total:.3f} s "
          f"({torch.get_num_threads()} threads)", file=sys.stderr)

    header = {
        "model_id": args.model_id,
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "max_seq_length": max_len,
        "dimension": int(getattr(model, "get_embedding_dimension",
                                 getattr(model, "get_sentence_embedding_dimension", None))()),
        "modules": module_types,
    }
    # Hand-written layout: one line per text field / id list / vector, to keep diffs readable.
    lines = ["{"]
    for k, v in header.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    lines.append('  "texts": [')
    for i, r in enumerate(records):
        lines.append("    {")
        lines.append(f'      "name": {json.dumps(r["name"])},')
        lines.append(f'      "text": {json.dumps(r["text"], ensure_ascii=False)},')
        lines.append(f'      "input_ids": {json.dumps(r["input_ids"], separators=(",", ":"))},')
        lines.append(f'      "vector": {json.dumps(r["vector"], separators=(",", ":"))}')
        lines.append("    }" + ("," if i + 1 < len(records) else ""))
    lines.append("  ]")
    lines.append("}")
    out = "\n".join(lines) + "\n"
    json.loads(out)  # sanity check
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
