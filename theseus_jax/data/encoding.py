"""Tokenise once: batched fast tokenisation to variable-length id arrays, cached on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

MAX_LENGTH = 512


@dataclasses.dataclass
class Encoded:
    """Token ids per text (truncated to `max_length`, [CLS] ... [SEP] kept) and the untruncated lengths.

    The untruncated lengths feed the statistics' "share truncated"; the ids feed batching.
    """

    ids: list[np.ndarray]
    full_lengths: np.ndarray
    max_length: int

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids], np.int64)


def _cache_path(cache_dir: Path, texts: Sequence[str], vocabulary: str, max_length: int) -> Path:
    digest = hashlib.sha256(json.dumps([list(texts), vocabulary, max_length]).encode()).hexdigest()[:24]
    return cache_dir / f"tokens-{digest}.npz"


def encode(texts: Sequence[str], tokenizer, max_length: int = MAX_LENGTH, cache_dir: str | Path | None = None) -> Encoded:
    """Encodes `texts` with a fast (HF) tokenizer in one batched call.

    Long texts keep their first `max_length - 1` tokens and the final [SEP]. With
    `cache_dir`, the result is stored under a key of the texts, the whole tokenizer
    definition and `max_length`, so a rerun loads it instead of tokenising again.
    """
    definition = tokenizer.backend_tokenizer.to_str()
    cache = _cache_path(Path(cache_dir), texts, definition, max_length) if cache_dir is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            flat, offsets, full_lengths = data["flat"], data["offsets"], data["full_lengths"]
        return Encoded([flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])], full_lengths, max_length)
    backend = Tokenizer.from_str(definition)  # a copy: the caller's truncation/padding settings stay as they are
    backend.no_truncation()
    backend.no_padding()
    encodings = backend.encode_batch(list(texts), add_special_tokens=True)
    sep = tokenizer.sep_token_id
    full_lengths = np.array([len(e.ids) for e in encodings], np.int32)
    ids = [np.asarray(e.ids if len(e.ids) <= max_length else e.ids[: max_length - 1] + [sep], np.int32) for e in encodings]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids], dtype=np.int64)])
        flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, flat=flat, offsets=offsets, full_lengths=full_lengths)
        tmp.replace(cache)
    return Encoded(ids, full_lengths, max_length)
