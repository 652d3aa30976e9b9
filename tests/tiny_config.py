"""A tiny experiment for end-to-end tests: random 4-layer BERT, GermEval-format data.

The data paths are overridden by the tests (`--config.cls.data.train_path=...`).
"""

import ml_collections

from configs.base import data_config, get_base_config


def get_config():
    config = get_base_config()
    config.model.path = "packaged"  # only its tokenizer is used: random_config is set
    config.model.random_config = ml_collections.ConfigDict(
        dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=48, max_position_embeddings=64)
    )
    config.compression.num_successor_layers = 2
    config.cls.data = data_config(format="germeval", train_path="")
    config.lm.data = data_config(format="germeval", train_path="")
    for stage in (config.cls, config.lm):
        stage.epochs = 2
        stage.batch_size = 8
        stage.eval_batch_size = 16
        stage.max_length = 32
        stage.buckets = (16, 32)
        stage.learning_rate = 1e-3
    config.checkpoint_every_steps = 5
    return config
