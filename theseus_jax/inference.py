"""Raw texts in, class probabilities out: the whole prediction chain, jitted once per bucket.

    python -m theseus_jax.inference --model runs/demo/cls_successor/best --text "Some text"

The same code runs on CPU and GPU (JAX's default device decides); float32 by default,
bfloat16 compute as an option (worth it on GPUs only).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from theseus_jax.data.batching import BUCKETS, bucket_length
from theseus_jax.data.generic import read_text_lines
from theseus_jax.errors import ArgumentParser, run_cli
from theseus_jax.models.bert import BertConfig, BertForSequenceClassification
from theseus_jax.models.hub import resolve_model
from theseus_jax.tokenization import load_tokenizer


class Predictor:
    """A classifier from a Hugging Face checkpoint (ours or anyone's, any supported family;
    a folder or a Hub ID `org/name[@revision]`) with its tokenizer."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        max_length: int = 512,
        buckets: Sequence[int] = BUCKETS,
        dtype: str = "float32",
        config: BertConfig | None = None,
        params: dict | None = None,
    ) -> None:
        """`config`/`params` given: use them (e.g. random weights for timing) with the folder's tokenizer.

        `max_length` is capped at the model's position embeddings: longer texts are truncated.
        """
        model_dir = resolve_model(model_dir)
        if params is None:
            from theseus_jax.convert import load_hf_checkpoint

            config, params = load_hf_checkpoint(model_dir, head="classification")
        self.config = config.replace(dtype=dtype)
        self.max_length = min(max_length, config.max_sequence_length)
        self.tokenizer = load_tokenizer(model_dir, self.max_length)
        self.buckets = tuple(sorted({b for b in buckets if b < self.max_length} | {self.max_length}))
        self.params = jax.device_put(params)
        model = BertForSequenceClassification(self.config)

        @jax.jit
        def probabilities(params, input_ids, attention_mask):
            logits = model.apply({"params": params}, input_ids, attention_mask, jnp.zeros_like(input_ids))
            return jax.nn.softmax(logits, axis=-1)

        self._probabilities = probabilities

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, padded to the smallest bucket that fits the batch."""
        encodings = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        length = bucket_length(max(len(ids) for ids in encodings), self.buckets)
        input_ids = np.full((len(texts), length), self.tokenizer.pad_token_id, np.int32)
        attention_mask = np.zeros((len(texts), length), np.int32)
        for row, ids in enumerate(encodings):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Device transfer, forward pass and probabilities back on the host."""
        return np.asarray(self._probabilities(self.params, input_ids, attention_mask))

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """[N, num_labels] probabilities for raw texts."""
        if isinstance(texts, str) or not len(texts):
            raise ValueError("predict_proba needs a non-empty list of texts")
        return np.concatenate(
            [self.forward(*self.encode(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", required=True, help="HF checkpoint folder (config.json, weights, tokenizer) or Hub ID org/name[@revision]"
    )
    parser.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    parser.add_argument("--file", help="a file with one text per line")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    texts = list(args.text)
    if args.file:
        texts += [e.text for e in read_text_lines(args.file)]
    if not texts:
        parser.error("give --text or --file")
    probabilities = Predictor(args.model, dtype=args.dtype).predict_proba(texts, args.batch_size)
    for text, probs in zip(texts, probabilities):
        print("\t".join(f"{p:.4f}" for p in probs) + "\t" + text)


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m theseus_jax.inference"))
