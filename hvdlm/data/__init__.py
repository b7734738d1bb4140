"""Corpus preparation (text, JSONL, compressed -> tokenizer + token shards + meta.json) and reading the shards back."""
from hvdlm.data.corpus import collect_text_files, default_corpus_files
from hvdlm.data.prepare import prepare
from hvdlm.data.shards import load_meta, open_tokens, verify_checksums
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
