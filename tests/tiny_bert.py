"""The tiny 4-layer BERT the engine tests share (fast forwards, 2 modules of 2 layers at n = 2)."""

from theseus_jax.models.bert import BertConfig

TINY = BertConfig(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
)
