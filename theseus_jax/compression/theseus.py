"""Theseus Compression: predecessor modules replaced by one-layer successors at random.

The predecessor's N layers form n modules of r = N / n consecutive layers; module i has
a successor, one layer of the same width. A training step passes a replacement mask
`replace_mask` (bool [n], one Bernoulli draw per module shared by the whole batch, as in
the original method) and module i runs its successor where the mask is set, its r
predecessor layers otherwise. The choice is an `nn.cond`, so only the chosen branch is
computed. Without a mask the encoder is the successor alone (inference, evaluation).

Parameters live in one tree: `encoder/predecessor_{j}` (j < N) and `encoder/successor_{i}`
(i < n), beside the usual embeddings, pooler and heads of `theseus_jax.models.bert`.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from theseus_jax.models.bert import HEADS, BertConfig, BertModel, layer_class

Array = jax.Array
Params = dict[str, Any]
InitOffset = int | Literal["original"]


def module_size(num_predecessor_layers: int, num_successor_layers: int) -> int:
    """r = N / n, the predecessor layers one successor layer replaces."""
    if num_successor_layers <= 0 or num_predecessor_layers % num_successor_layers:
        raise ValueError(
            f"cannot split {num_predecessor_layers} predecessor layers into "
            f"{num_successor_layers} equal modules"
        )
    return num_predecessor_layers // num_successor_layers


class TheseusEncoder(nn.Module):
    """Predecessor layers grouped into modules, each with a successor layer."""

    config: BertConfig
    num_successor_layers: int

    def setup(self) -> None:
        n_pred = self.config.num_hidden_layers
        self.r = module_size(n_pred, self.num_successor_layers)
        layer = layer_class(self.config)
        self.predecessor = [layer(self.config) for _ in range(n_pred)]
        self.successor = [layer(self.config) for _ in range(self.num_successor_layers)]

    def run_predecessor(self, i: int, hidden: Array, bias: Array, deterministic: bool) -> Array:
        for layer in self.predecessor[i * self.r : (i + 1) * self.r]:
            hidden = layer(hidden, bias, deterministic)
        return hidden

    def run_successor(self, i: int, hidden: Array, bias: Array, deterministic: bool) -> Array:
        return self.successor[i](hidden, bias, deterministic)

    def __call__(
        self,
        hidden: Array,
        bias: Array,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        replace_mask: Array | None = None,
    ) -> tuple[Array, tuple[Array, ...]]:
        """Returns the last hidden state and, if asked, the input plus every module's output.

        `replace_mask` (bool [n]): True runs module i's successor, False its predecessor
        layers. None runs the successor alone.
        """
        if self.is_initializing():  # create every parameter, whichever path runs later
            for i in range(self.num_successor_layers):
                self.run_predecessor(i, hidden, bias, deterministic)
                self.run_successor(i, hidden, bias, deterministic)
        states = (hidden,)
        for i in range(self.num_successor_layers):
            if replace_mask is None:
                hidden = self.run_successor(i, hidden, bias, deterministic)
            else:
                hidden = nn.cond(
                    replace_mask[i],
                    lambda mdl, h, b, i=i: mdl.run_successor(i, h, b, deterministic),
                    lambda mdl, h, b, i=i: mdl.run_predecessor(i, h, b, deterministic),
                    self,
                    hidden,
                    bias,
                )
            states += (hidden,)
        return hidden, states if output_hidden_states else ()


def theseus_model(config: BertConfig, head: str, num_successor_layers: int) -> nn.Module:
    """The predecessor's head model (`mlm`, `classification` or `none`) with a Theseus encoder.

    Called like the plain model, plus `replace_mask=` (see `TheseusEncoder`).
    """
    module_size(config.num_hidden_layers, num_successor_layers)
    factory = functools.partial(TheseusEncoder, config, num_successor_layers)
    if head == "none":
        return BertModel(config, encoder_factory=factory)
    return HEADS[head](config, encoder_factory=factory)


def successor_sources(
    num_predecessor_layers: int, num_successor_layers: int, init_offset: InitOffset = 0
) -> list[int]:
    """Which predecessor layer initialises each successor layer.

    An integer k in [0, r) copies layer i*r + k into successor i (0, the lower layer of
    each module, worked best in the source study); "original" copies layer i, the
    bottom n layers, as BERT-of-Theseus did.
    """
    r = module_size(num_predecessor_layers, num_successor_layers)
    if init_offset == "original":
        return list(range(num_successor_layers))
    if isinstance(init_offset, bool) or not isinstance(init_offset, int) or not 0 <= init_offset < r:
        raise ValueError(f"init_offset must be 'original' or an integer in [0, {r}), got {init_offset!r}")
    return [i * r + init_offset for i in range(num_successor_layers)]


def _encoder_scope(params: Params) -> tuple[str, ...]:
    """Path to the encoder's parameters: heads nest the base model under `bert`."""
    return ("bert", "encoder") if "bert" in params else ("encoder",)


def _get(tree: Params, path: tuple[str, ...]) -> Params:
    for key in path:
        tree = tree[key]
    return tree


def _with_encoder(params: Params, encoder: Params) -> Params:
    """A shallow copy of `params` with the encoder subtree replaced."""
    if "bert" in params:
        return {**params, "bert": {**params["bert"], "encoder": encoder}}
    return {**params, "encoder": encoder}


def _encoder_params(params: Params) -> Params:
    """The encoder's parameters of a plain BERT, with or without a head."""
    return _get(params, _encoder_scope(params))


def _encoder_layers(params: Params, num_layers: int) -> Params:
    layers = _encoder_params(params)
    if sorted(layers) != sorted(f"layer_{j}" for j in range(num_layers)):
        raise ValueError(f"expected encoder layers layer_0..layer_{num_layers - 1}, found {sorted(layers)}")
    return layers


def init_theseus_params(
    predecessor_params: Params,
    config: BertConfig,
    num_successor_layers: int,
    init_offset: InitOffset = 0,
    successor_params: Params | None = None,
) -> Params:
    """Theseus parameters from a plain BERT's: its layers become the predecessor and
    copies of one layer per module become the successor.

    `successor_params` (a BERT of the same shape, e.g. the pretrained checkpoint a
    fine-tuned predecessor started from) supplies the copied layers instead of the
    predecessor itself.
    """
    n_pred = config.num_hidden_layers
    layers = sources = _encoder_layers(predecessor_params, n_pred)
    if successor_params is not None:
        sources = _encoder_layers(successor_params, n_pred)
        if jax.tree.map(jnp.shape, sources) != jax.tree.map(jnp.shape, layers):
            raise ValueError("its encoder layers differ in shape from the predecessor's")
    encoder = {f"predecessor_{j}": layers[f"layer_{j}"] for j in range(n_pred)}
    for i, source in enumerate(successor_sources(n_pred, num_successor_layers, init_offset)):
        # A real copy: the successor trains while the predecessor stays as it was.
        encoder[f"successor_{i}"] = jax.tree.map(jnp.array, sources[f"layer_{source}"])
    return _with_encoder(predecessor_params, encoder)


def _plain_model(config: BertConfig, params: Params, layers: list[Params]) -> tuple[BertConfig, Params]:
    encoder = {f"layer_{j}": layer for j, layer in enumerate(layers)}
    return config.replace(num_hidden_layers=len(layers)), _with_encoder(params, encoder)


def _numbered(encoder: Params, prefix: str) -> list[Params]:
    count = sum(1 for key in encoder if re.fullmatch(rf"{prefix}_\d+", key))
    return [encoder[f"{prefix}_{j}"] for j in range(count)]


def extract_successor(config: BertConfig, params: Params) -> tuple[BertConfig, Params]:
    """The compressed model as a plain n-layer BERT (same embeddings, pooler and heads),
    ready for `theseus_jax.convert.save_hf_checkpoint`; the predecessor is dropped."""
    return _plain_model(config, params, _numbered(_encoder_params(params), "successor"))


def extract_predecessor(config: BertConfig, params: Params) -> tuple[BertConfig, Params]:
    """The predecessor as a plain N-layer BERT (to evaluate or export the teacher)."""
    return _plain_model(config, params, _numbered(_encoder_params(params), "predecessor"))


def truncate_layers(config: BertConfig, params: Params, num_layers: int) -> tuple[BertConfig, Params]:
    """Keeps the bottom `num_layers` layers: the "truncated fine-tuning" baseline that
    BERT-of-Theseus compares against (same size as the successor, no compression)."""
    layers = _numbered(_encoder_params(params), "layer")
    if not 0 < num_layers <= len(layers):
        raise ValueError(f"cannot keep {num_layers} of {len(layers)} layers")
    return _plain_model(config, params, layers[:num_layers])


def count_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def compression_ratio(predecessor_params: Params, successor_params: Params) -> float:
    """CR = params(predecessor model) / params(successor model); about 1.67 for bert-base 12->6."""
    return count_params(predecessor_params) / count_params(successor_params)

