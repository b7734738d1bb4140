"""Corpus preparation: text files -> tokenizer + train.bin/val.bin/meta.json, and reading them back."""
from hvdlm.data.corpus import collect_text_files, default_corpus_files
from hvdlm.data.prepare import load_meta, open_tokens, prepare, verify_checksums
from hvdlm.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "collect_text_files",
    "default_corpus_files",
    "load_meta",
    "load_tokenizer",
    "open_tokens",
    "prepare",
    "save_tokenizer",
    "train_tokenizer",
    "verify_checksums",
]
