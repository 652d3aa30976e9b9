"""Encoder families: what RoBERTa, XLM-RoBERTa, ELECTRA and DistilBERT change about BERT.

All five are the same post-LayerNorm transformer encoder; they differ in a few switches
(where position ids start, token types, an embedding projection, the shape of the
classification and MLM heads) and in the names of their tensors and config fields. A
family is exactly that: the switches `theseus_jax.models.bert` reads, and the tables
`theseus_jax.convert` uses to map a family's checkpoint names onto BERT's (and back).

Name rules are `(family prefix, BERT prefix)` pairs, tried in order; `{i}` stands for a
layer index, and a rule whose pattern does not end in "." matches the whole name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

# BertConfig fields that BERT-like config.json files hold under the same name.
BERT_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "classifier_dropout",
)


def _classes(stem: str) -> dict[str, str]:
    """transformers' class names per head: `Bert` -> BertForMaskedLM, ..., BertModel."""
    return {"mlm": f"{stem}ForMaskedLM", "classification": f"{stem}ForSequenceClassification", "none": f"{stem}Model"}


def _same(*fields: str) -> tuple[tuple[str, str], ...]:
    return tuple((f, f) for f in fields)


@dataclasses.dataclass(frozen=True)
class Family:
    """One encoder family: its Hugging Face names and the switches that really differ."""

    model_type: str
    # Hugging Face class per head ("mlm", "classification", "none").
    architectures: dict[str, str]
    # The base model's prefix (`bert.`, `roberta.`, ...), absent in base-model checkpoints.
    prefix: str
    # (family name, BERT name) prefix rules, see the module docstring.
    names: tuple[tuple[str, str], ...]
    # Heads of other objectives, skipped on load (BERT's next-sentence head, ELECTRA's
    # replaced-token detector).
    ignored: tuple[str, ...] = ()
    # (config.json key, BertConfig field).
    config_keys: tuple[tuple[str, str], ...] = _same(*BERT_CONFIG_FIELDS)
    # BertConfig values where the family's config class defaults differ from BERT's, or
    # that its config.json never holds.
    config_defaults: tuple[tuple[str, Any], ...] = ()
    # RoBERTa: real tokens get positions pad_token_id + 1, + 2, ...; padding keeps pad_token_id.
    positions_from_padding: bool = False
    # The base model has BERT's pooler (tanh(dense(first token))).
    pooler: bool = True
    # "pooler": BERT's classifier on the pooler output; "head": classifier.dense ->
    # activation -> classifier.out_proj on the first token.
    classifier: Literal["pooler", "head"] = "pooler"
    classifier_activation: str = "tanh"
    # RoBERTa/ELECTRA drop out the first token's state before classifier.dense too.
    classifier_input_dropout: bool = True
    # Activation of the MLM head's transform; None: the encoder's hidden_act.
    mlm_activation: str | None = None
    # Logged when an MLM objective starts from a checkpoint without an MLM head.
    missing_mlm_head: str = ""


_BERT_LIKE_HEADS = (("classifier.", "classifier."),)

FAMILIES: dict[str, Family] = {
    "bert": Family(
        model_type="bert",
        architectures=_classes("Bert"),
        prefix="bert.",
        names=(("bert.", "bert."), ("cls.predictions.", "cls.predictions."), *_BERT_LIKE_HEADS),
        ignored=("cls.seq_relationship.",),
    ),
    "roberta": Family(
        model_type="roberta",
        architectures=_classes("Roberta"),
        prefix="roberta.",
        names=(
            ("roberta.", "bert."),
            ("lm_head.dense.", "cls.predictions.transform.dense."),
            ("lm_head.layer_norm.", "cls.predictions.transform.LayerNorm."),
            ("lm_head.decoder.", "cls.predictions.decoder."),
            ("lm_head.bias", "cls.predictions.bias"),
            *_BERT_LIKE_HEADS,
        ),
        config_defaults=(("pad_token_id", 1),),
        positions_from_padding=True,
        classifier="head",
        mlm_activation="gelu",
    ),
    "electra": Family(
        model_type="electra",
        architectures=_classes("Electra"),
        prefix="electra.",
        names=(
            ("electra.", "bert."),
            ("generator_predictions.dense.", "cls.predictions.transform.dense."),
            ("generator_predictions.LayerNorm.", "cls.predictions.transform.LayerNorm."),
            ("generator_lm_head.weight", "cls.predictions.decoder.weight"),
            ("generator_lm_head.bias", "cls.predictions.bias"),
            *_BERT_LIKE_HEADS,
        ),
        ignored=("discriminator_predictions.",),
        config_keys=_same(*BERT_CONFIG_FIELDS, "embedding_size"),
        config_defaults=(("embedding_size", 128),),
        pooler=False,
        classifier="head",
        classifier_activation="gelu",
        mlm_activation="gelu",
        missing_mlm_head=(
            "an ELECTRA discriminator has no MLM head: the MLM objective trains a fresh one "
            "(generator_predictions, generator_lm_head.bias)"
        ),
    ),
    "distilbert": Family(
        model_type="distilbert",
        architectures=_classes("DistilBert"),
        prefix="distilbert.",
        names=(
            ("distilbert.transformer.layer.{i}.attention.q_lin.", "bert.encoder.layer.{i}.attention.self.query."),
            ("distilbert.transformer.layer.{i}.attention.k_lin.", "bert.encoder.layer.{i}.attention.self.key."),
            ("distilbert.transformer.layer.{i}.attention.v_lin.", "bert.encoder.layer.{i}.attention.self.value."),
            ("distilbert.transformer.layer.{i}.attention.out_lin.", "bert.encoder.layer.{i}.attention.output.dense."),
            ("distilbert.transformer.layer.{i}.sa_layer_norm.", "bert.encoder.layer.{i}.attention.output.LayerNorm."),
            ("distilbert.transformer.layer.{i}.ffn.lin1.", "bert.encoder.layer.{i}.intermediate.dense."),
            ("distilbert.transformer.layer.{i}.ffn.lin2.", "bert.encoder.layer.{i}.output.dense."),
            ("distilbert.transformer.layer.{i}.output_layer_norm.", "bert.encoder.layer.{i}.output.LayerNorm."),
            ("distilbert.", "bert."),
            ("vocab_transform.", "cls.predictions.transform.dense."),
            ("vocab_layer_norm.", "cls.predictions.transform.LayerNorm."),
            ("vocab_projector.weight", "cls.predictions.decoder.weight"),
            ("vocab_projector.bias", "cls.predictions.bias"),
            ("pre_classifier.", "classifier.dense."),
            ("classifier.", "classifier.out_proj."),
        ),
        config_keys=(
            ("vocab_size", "vocab_size"),
            ("dim", "hidden_size"),
            ("n_layers", "num_hidden_layers"),
            ("n_heads", "num_attention_heads"),
            ("hidden_dim", "intermediate_size"),
            ("activation", "hidden_act"),
            ("dropout", "hidden_dropout_prob"),
            ("attention_dropout", "attention_probs_dropout_prob"),
            ("max_position_embeddings", "max_position_embeddings"),
            ("initializer_range", "initializer_range"),
            ("pad_token_id", "pad_token_id"),
            ("seq_classif_dropout", "classifier_dropout"),
        ),
        # No token types; LayerNorm eps is fixed in DistilBERT's code.
        config_defaults=(("type_vocab_size", 0), ("layer_norm_eps", 1e-12), ("classifier_dropout", 0.2)),
        pooler=False,
        classifier="head",
        classifier_activation="relu",
        classifier_input_dropout=False,
    ),
}
# XLM-RoBERTa is RoBERTa under other class names.
FAMILIES["xlm-roberta"] = dataclasses.replace(
    FAMILIES["roberta"],
    model_type="xlm-roberta",
    architectures=_classes("XLMRoberta"),
)


def family(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(f"model_type={model_type!r} is not supported; use one of {sorted(FAMILIES)}") from None
