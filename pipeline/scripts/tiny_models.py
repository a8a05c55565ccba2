#!/usr/bin/env python3
"""Make tiny random-weight sentence-transformers models, one per supported family and
pooling mode, and their reference vectors.

Each model is built with ``transformers`` (random weights from a fixed seed, LayerNorm
gains and biases perturbed too so that every tensor's mapping is exercised) and wrapped by
``sentence-transformers`` (Transformer -> Pooling -> optional Normalize), then saved as a
sentence-transformers folder exactly as a user's own model would be. Its tokenizer is
trained here on the reference texts (WordPiece for BERT and MPNet, byte-level BPE for
RoBERTa, Unigram for XLM-RoBERTa), so no model hub is needed.

    python pipeline/scripts/tiny_models.py --out pipeline/tests/fixtures/tiny

writes ``<out>/<name>/`` (the model folder) and ``<out>/<name>.json`` (the reference
vectors, made by ``reference_vectors.py``'s code from the saved folder).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import (  # noqa: E402
    Normalize,
    Pooling,
    Transformer,
)
from tokenizers import (  # noqa: E402
    BertWordPieceTokenizer,
    ByteLevelBPETokenizer,
    SentencePieceUnigramTokenizer,
)
from tokenizers.processors import TemplateProcessing  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("reference_vectors", os.path.join(HERE, "reference_vectors.py"))
reference_vectors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference_vectors)
TEXTS = reference_vectors.TEXTS

HIDDEN, LAYERS, HEADS, INNER = 32, 2, 4, 64
MAX_SEQ = 48  # the long text is truncated


def corpus() -> list[str]:
    texts = [t for _, t in TEXTS]
    return texts * 3


BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def template(tok, cls: str, sep: str):
    """``cls text sep``, as the family's own tokenizer wraps a text."""
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} {sep} $B {sep}",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])


def wordpiece(family: str):
    special = BERT_SPECIAL if family == "bert" else ROBERTA_SPECIAL
    tok = BertWordPieceTokenizer(lowercase=False, strip_accents=False, unk_token=special[1 if family == "bert" else 3])
    tok.train_from_iterator(corpus(), vocab_size=400, min_frequency=1, special_tokens=special)
    if family == "bert":
        template(tok, "[CLS]", "[SEP]")
        return transformers.BertTokenizerFast(
            tokenizer_object=tok._tokenizer, cls_token="[CLS]", sep_token="[SEP]",
            pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]", do_lower_case=False)
    template(tok, "<s>", "</s>")
    return transformers.MPNetTokenizerFast(
        tokenizer_object=tok._tokenizer, bos_token="<s>", eos_token="</s>", cls_token="<s>",
        sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        do_lower_case=False)


def roberta_like(family: str):
    if family == "roberta":
        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator(corpus(), vocab_size=420, min_frequency=1, special_tokens=ROBERTA_SPECIAL)
        cls = transformers.RobertaTokenizerFast
    else:
        tok = SentencePieceUnigramTokenizer()
        tok.train_from_iterator(corpus(), vocab_size=300, special_tokens=ROBERTA_SPECIAL, unk_token="<unk>")
        cls = transformers.XLMRobertaTokenizerFast
    template(tok, "<s>", "</s>")
    return cls(tokenizer_object=tok._tokenizer, bos_token="<s>", eos_token="</s>", cls_token="<s>",
               sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


MODELS = [
    # name, family, pooling, normalize, legacy: saved as sentence-transformers 2-5 wrote
    # folders (limit and lower-casing in sentence_bert_config.json, pooling_mode_* flags)
    ("bert-mean", "bert", "mean", True, False),
    ("bert-cls", "bert", "cls", True, True),
    ("bert-max", "bert", "max", False, False),
    ("bert-lasttoken", "bert", "lasttoken", True, False),
    ("roberta-mean", "roberta", "mean", True, False),
    ("xlm-roberta-cls", "xlm-roberta", "cls", True, False),
    ("mpnet-max", "mpnet", "max", True, False),
]


def build(name, family, pooling, normalize, legacy, work, out_dir, seed):
    hf_dir = os.path.join(work, name + "-hf")
    os.makedirs(hf_dir)
    if family == "bert":
        tokenizer = wordpiece(family)
        config = transformers.BertConfig(max_position_embeddings=64)
        model_cls = transformers.BertModel
    elif family == "mpnet":
        tokenizer = wordpiece(family)
        config = transformers.MPNetConfig(max_position_embeddings=64 + 2, relative_attention_num_buckets=32)
        model_cls = transformers.MPNetModel
    elif family == "roberta":
        tokenizer = roberta_like(family)
        config = transformers.RobertaConfig(max_position_embeddings=64 + 2, type_vocab_size=1)
        model_cls = transformers.RobertaModel
    else:
        tokenizer = roberta_like(family)
        config = transformers.XLMRobertaConfig(max_position_embeddings=64 + 2, type_vocab_size=1)
        model_cls = transformers.XLMRobertaModel
    config.vocab_size = len(tokenizer)
    config.hidden_size, config.num_hidden_layers = HIDDEN, LAYERS
    config.num_attention_heads, config.intermediate_size = HEADS, INNER
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = model_cls(config, add_pooling_layer=False)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "LayerNorm.weight" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)

    transformer = Transformer(hf_dir, max_seq_length=MAX_SEQ)
    modules = [transformer, Pooling(HIDDEN, pooling_mode=pooling)]
    if normalize:
        modules.append(Normalize())
    st = SentenceTransformer(modules=modules, device="cpu")
    folder = os.path.join(out_dir, name)
    shutil.rmtree(folder, ignore_errors=True)
    st.save(folder)
    # Only what a model folder needs: no training leftovers, no README card.
    for extra in ("README.md",):
        path = os.path.join(folder, extra)
        if os.path.exists(path):
            os.remove(path)
    if legacy:
        with open(os.path.join(folder, "sentence_bert_config.json"), "w") as f:
            json.dump({"max_seq_length": MAX_SEQ - 8, "do_lower_case": True}, f, indent=2)
        flags = {f"pooling_mode_{m}": m == pooling for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")}
        flags[{"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens"}[pooling]] = True
        with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
            json.dump({"word_embedding_dimension": HIDDEN, **flags}, f, indent=2)
    subprocess.run([sys.executable, os.path.join(HERE, "reference_vectors.py"),
                    "--model-dir", folder, "--model-id", f"tiny-{name}",
                    "--out", os.path.join(out_dir, f"{name}.json")], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", action="append", help="make only these models")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for seed, m in enumerate(MODELS):
            if args.only and m[0] not in args.only:
                continue
            build(*m, work, args.out, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
