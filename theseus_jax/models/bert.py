"""BERT in Flax linen, with submodules named as in Hugging Face's `modeling_bert`.

The names matter: converting a PyTorch checkpoint is then a short table
(`theseus_jax.convert`), and the encoder keeps its layers as a list of modules
(`encoder/layer_{i}`) so that Theseus Compression can run them one module at a time.

The same modules are RoBERTa, XLM-RoBERTa, ELECTRA and DistilBERT: `config.model_type`
selects a `theseus_jax.models.families.Family`, whose few switches (position ids,
token types, embedding projection, head shapes) are read here. Every family keeps
BERT's parameter tree (`bert/embeddings`, `bert/encoder/layer_{i}`, `cls`, `classifier`).

All heads take an optional encoder factory (`encoder_factory=`), which is how the
Theseus encoder (`theseus_jax.compression.theseus`) plugs in without copying the
embeddings, pooler or heads.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from theseus_jax.models.dense import dense_dot_general
from theseus_jax.models.dropout import Dropout
from theseus_jax.models.families import Family, family

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Mirror of Hugging Face's `BertConfig` fields, plus the family and the compute dtype."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    # Dropout rates; `models.dropout` draws one random byte per element, so what it drops is
    # each rate rounded to a multiple of 1/256 (`dropout_rate`: 0.1 -> 26/256 = 0.1016).
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    num_labels: int = 2
    # The encoder family (`theseus_jax.models.families.FAMILIES`): names and switches.
    model_type: str = "bert"
    # ELECTRA: the embeddings' width when it differs from hidden_size (then projected).
    embedding_size: int | None = None
    # Compute dtype of matmuls ("float32" or "bfloat16"); parameters stay float32 and
    # LayerNorm, softmax and losses are computed in float32.
    dtype: str = "float32"
    # Recompute each layer's activations in the backward pass (long sequences, small memory).
    remat: bool = False

    def __post_init__(self) -> None:
        family(self.model_type)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}"
            )

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def family(self) -> Family:
        return family(self.model_type)

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def max_sequence_length(self) -> int:
        """Longest input the position embeddings cover (RoBERTa's start after pad_token_id)."""
        offset = self.pad_token_id + 1 if self.family.positions_from_padding else 0
        return self.max_position_embeddings - offset

    def replace(self, **changes: Any) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], num_labels: int | None = None) -> "BertConfig":
        """Builds a config from a Hugging Face `config.json` dictionary of any supported family."""
        fam = family(d.get("model_type", "bert"))
        kwargs: dict[str, Any] = dict(fam.config_defaults)
        kwargs.update({field: d[key] for key, field in fam.config_keys if key in d})
        if kwargs.get("embedding_size") == kwargs.get("hidden_size", cls.hidden_size):
            kwargs["embedding_size"] = None
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        elif "id2label" in d:
            kwargs["num_labels"] = len(d["id2label"])
        return cls(model_type=fam.model_type, **kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` contents that transformers' config class of the family reads back."""
        fam = self.family
        values = dataclasses.replace(self, embedding_size=self.embedding_width)
        d = {key: getattr(values, field) for key, field in fam.config_keys}
        d.update(
            model_type=fam.model_type,
            id2label={str(i): f"LABEL_{i}" for i in range(self.num_labels)},
            label2id={f"LABEL_{i}": i for i in range(self.num_labels)},
        )
        if fam.model_type != "distilbert":
            d["position_embedding_type"] = "absolute"
        return d


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # BERT's "gelu" is the exact erf form; jax.nn.gelu defaults to the tanh approximation.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def _dense(config: BertConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dot_general=dense_dot_general,
        dtype=config.compute_dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(config.initializer_range),
        name=name,
    )


def _layer_norm(config: BertConfig, name: str = "LayerNorm") -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.float32, name=name)


def attention_bias(attention_mask: Array, dtype: jnp.dtype = jnp.float32) -> Array:
    """HF's additive mask: 0 where attended, the dtype's minimum where padded; [B, 1, 1, L]."""
    mask = attention_mask[:, None, None, :].astype(dtype)
    return (1.0 - mask) * jnp.finfo(dtype).min


def position_ids(input_ids: Array, config: BertConfig) -> Array:
    """0, 1, 2, ... (BERT); RoBERTa counts real tokens from pad_token_id + 1 and gives
    padding pad_token_id, as fairseq does."""
    if not config.family.positions_from_padding:
        return jnp.arange(input_ids.shape[-1])[None, :]
    real = (input_ids != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=-1) * real + config.pad_token_id


class BertEmbeddings(nn.Module):
    """Word + position (+ token type) embeddings, LayerNorm, dropout; `embedding_width` wide."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool) -> Array:
        cfg = self.config
        width = cfg.embedding_width
        init = nn.initializers.normal(cfg.initializer_range)
        word = nn.Embed(cfg.vocab_size, width, embedding_init=init, name="word_embeddings")
        position = nn.Embed(cfg.max_position_embeddings, width, embedding_init=init, name="position_embeddings")
        hidden = word(input_ids) + position(position_ids(input_ids, cfg))
        if cfg.type_vocab_size:  # DistilBERT has no token types
            hidden += nn.Embed(cfg.type_vocab_size, width, embedding_init=init, name="token_type_embeddings")(token_type_ids)
        hidden = _layer_norm(cfg)(hidden)
        return Dropout(cfg.hidden_dropout_prob)(hidden, deterministic=deterministic)


def scaled_dot_product_attention(
    query: Array, key: Array, value: Array, bias: Array, dropout: Callable[[Array], Array]
) -> Array:
    """[B, L, heads, d] query, key, value -> [B, L, heads * d] context, as HF's eager
    attention computes it (scores and softmax in float32, `bias` the additive mask)."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(query.shape[-1])) + bias
    probs = dropout(jax.nn.softmax(scores, axis=-1))
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(value.dtype), value)
    return context.reshape(context.shape[:2] + (-1,))


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, bias: Array, deterministic: bool) -> Array:
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads

        def split(x: Array) -> Array:  # [B, L, H] -> [B, L, heads, head_dim]
            return x.reshape(x.shape[:-1] + (heads, head_dim))

        query = split(_dense(cfg, cfg.hidden_size, "query")(hidden))
        key = split(_dense(cfg, cfg.hidden_size, "key")(hidden))
        value = split(_dense(cfg, cfg.hidden_size, "value")(hidden))
        dropout = Dropout(cfg.attention_probs_dropout_prob, deterministic=deterministic)
        return scaled_dot_product_attention(query, key, value, bias, dropout)


class BertOutput(nn.Module):
    """Projection to the hidden size, dropout, residual and LayerNorm: HF's `BertOutput`,
    also serving as its identical `BertSelfOutput` (`attention/output`)."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, residual: Array, deterministic: bool) -> Array:
        cfg = self.config
        hidden = _dense(cfg, cfg.hidden_size, "dense")(hidden)
        hidden = Dropout(cfg.hidden_dropout_prob)(hidden, deterministic=deterministic)
        return _layer_norm(cfg)(hidden + residual)


class BertAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, bias: Array, deterministic: bool) -> Array:
        context = BertSelfAttention(self.config, name="self")(hidden, bias, deterministic)
        return BertOutput(self.config, name="output")(context, hidden, deterministic)


class BertIntermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        hidden = _dense(self.config, self.config.intermediate_size, "dense")(hidden)
        return ACTIVATIONS[self.config.hidden_act](hidden)


class BertLayer(nn.Module):
    """One transformer block: `hidden [B, L, H] -> hidden [B, L, H]`."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, bias: Array, deterministic: bool = True) -> Array:
        attended = BertAttention(self.config, name="attention")(hidden, bias, deterministic)
        intermediate = BertIntermediate(self.config, name="intermediate")(attended)
        return BertOutput(self.config, name="output")(intermediate, attended, deterministic)


def layer_class(config: BertConfig) -> type[nn.Module]:
    """`BertLayer`, rematerialised when `config.remat` (parameter names are unchanged)."""
    return nn.remat(BertLayer, static_argnums=(3,)) if config.remat else BertLayer


class BertEncoder(nn.Module):
    """The plain stack of `num_hidden_layers` layers (`layer_0`, `layer_1`, ...)."""

    config: BertConfig

    def setup(self) -> None:
        layer = layer_class(self.config)
        self.layer = [layer(self.config) for _ in range(self.config.num_hidden_layers)]

    def __call__(
        self, hidden: Array, bias: Array, deterministic: bool = True, output_hidden_states: bool = False
    ) -> tuple[Array, tuple[Array, ...]]:
        """Returns the last hidden state and, if asked, the input plus every layer's output."""
        states = (hidden,)
        for layer in self.layer:
            hidden = layer(hidden, bias, deterministic)
            states += (hidden,)
        return hidden, states if output_hidden_states else ()


class BertPooler(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        return jnp.tanh(_dense(self.config, self.config.hidden_size, "dense")(hidden[:, 0]))


@dataclasses.dataclass
class BertOutputs:
    last_hidden_state: Array
    pooler_output: Array | None
    hidden_states: tuple[Array, ...]


jax.tree_util.register_dataclass(
    BertOutputs, data_fields=["last_hidden_state", "pooler_output", "hidden_states"], meta_fields=[]
)


class BertModel(nn.Module):
    """Embeddings (projected to hidden_size if narrower: ELECTRA), encoder and pooler
    (if `add_pooling_layer` and the family has one).

    `encoder_factory(name=...)` builds a replacement for the plain `BertEncoder`; it is
    called as `encoder(hidden, bias, deterministic, output_hidden_states, **encoder_kwargs)`.
    """

    config: BertConfig
    add_pooling_layer: bool = True
    encoder_factory: Callable[..., nn.Module] | None = None

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        **encoder_kwargs: Any,
    ) -> BertOutputs:
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        hidden = BertEmbeddings(cfg, name="embeddings")(input_ids, token_type_ids, deterministic)
        hidden = hidden.astype(cfg.compute_dtype)
        if cfg.embedding_width != cfg.hidden_size:
            hidden = _dense(cfg, cfg.hidden_size, "embeddings_project")(hidden)
        make_encoder = self.encoder_factory or functools.partial(BertEncoder, cfg)
        encoder = make_encoder(name="encoder")
        bias = attention_bias(attention_mask)
        hidden, states = encoder(hidden, bias, deterministic, output_hidden_states, **encoder_kwargs)
        with_pooler = self.add_pooling_layer and cfg.family.pooler
        pooled = BertPooler(cfg, name="pooler")(hidden) if with_pooler else None
        return BertOutputs(hidden, pooled, states)


class BertPredictionHeadTransform(nn.Module):
    """Dense to the embedding width, activation, LayerNorm (all families' MLM heads)."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        cfg = self.config
        hidden = _dense(cfg, cfg.embedding_width, "dense")(hidden)
        hidden = ACTIVATIONS[cfg.family.mlm_activation or cfg.hidden_act](hidden)
        return _layer_norm(cfg)(hidden)


class BertLMPredictionHead(nn.Module):
    """Transform, then the decoder tied to the word embeddings, plus an output bias."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, word_embeddings: Array) -> Array:
        hidden = BertPredictionHeadTransform(self.config, name="transform")(hidden)
        bias = self.param("bias", nn.initializers.zeros, (self.config.vocab_size,), jnp.float32)
        logits = jnp.einsum(
            "blh,vh->blv",
            hidden.astype(self.config.compute_dtype),
            word_embeddings.astype(self.config.compute_dtype),
            preferred_element_type=jnp.float32,
        )
        return logits + bias


class BertOnlyMLMHead(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, word_embeddings: Array) -> Array:
        return BertLMPredictionHead(self.config, name="predictions")(hidden, word_embeddings)


class BertForMaskedLM(nn.Module):
    """Returns MLM logits `[B, L, vocab]` (float32), or `[B, P, vocab]` at `masked_positions`.

    Training needs logits only where tokens were masked: `masked_positions` [B, P] index the
    batch's flattened tokens [B * L] (data.masking.gather_masked_positions), so the
    vocabulary projection (as costly as several encoder layers) runs on B * P << B * L rows.
    """

    config: BertConfig
    encoder_factory: Callable[..., nn.Module] | None = None

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
        masked_positions: Array | None = None,
        **encoder_kwargs: Any,
    ) -> Array:
        bert = BertModel(self.config, add_pooling_layer=False, encoder_factory=self.encoder_factory, name="bert")
        hidden = bert(input_ids, attention_mask, token_type_ids, deterministic, **encoder_kwargs).last_hidden_state
        if masked_positions is not None:
            hidden = hidden.reshape(-1, hidden.shape[-1])[masked_positions]
        word_embeddings = bert.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
        return BertOnlyMLMHead(self.config, name="cls")(hidden, word_embeddings)


class ClassificationHead(nn.Module):
    """RoBERTa's, ELECTRA's and DistilBERT's head: first token -> dense -> activation ->
    out_proj (BERT instead puts its classifier on the pooler)."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, rate: float, deterministic: bool) -> Array:
        cfg = self.config
        x = hidden[:, 0]
        if cfg.family.classifier_input_dropout:
            x = Dropout(rate)(x, deterministic=deterministic)
        x = ACTIVATIONS[cfg.family.classifier_activation](_dense(cfg, cfg.hidden_size, "dense")(x))
        x = Dropout(rate)(x, deterministic=deterministic)
        return _dense(cfg, cfg.num_labels, "out_proj")(x)


class BertForSequenceClassification(nn.Module):
    """Returns class logits `[B, num_labels]` (float32): BERT's from the pooled [CLS]
    state, the other families' from their `ClassificationHead`."""

    config: BertConfig
    encoder_factory: Callable[..., nn.Module] | None = None

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
        **encoder_kwargs: Any,
    ) -> Array:
        cfg = self.config
        rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        on_pooler = cfg.family.classifier == "pooler"
        bert = BertModel(cfg, add_pooling_layer=on_pooler, encoder_factory=self.encoder_factory, name="bert")
        outputs = bert(input_ids, attention_mask, token_type_ids, deterministic, **encoder_kwargs)
        if on_pooler:
            pooled = Dropout(rate)(outputs.pooler_output, deterministic=deterministic)
            logits = _dense(cfg, cfg.num_labels, "classifier")(pooled)
        else:
            logits = ClassificationHead(cfg, name="classifier")(outputs.last_hidden_state, rate, deterministic)
        return logits.astype(jnp.float32)


HEADS: dict[str, type[nn.Module]] = {
    "mlm": BertForMaskedLM,
    "classification": BertForSequenceClassification,
}
