"""Hate speech in NOHATE comments, multi-class labels mapped to OFFENSE/OTHER (macro F1).

    python launch.py --config=configs/nohate.py --workdir=runs/nohate \
        --config.cls.data.train_path=/data/nohate/comments.csv --config.model.path=/models/gbert
"""

from configs.base import data_config, get_base_config


def get_config():
    config = get_base_config()
    config.model.path = ""
    config.cls.metric = "macro_f1"
    config.cls.data = data_config(
        format="nohate",
        train_path="",
        text_column="text",
        label_column="label",
        # NOHATE's classes; anything offensive counts as the positive class.
        label_map="hate=1,offensive=1,abusive=1,insult=1,none=0,other=0,neutral=0",
    )
    config.lm.data = data_config(format="nohate", train_path="", text_column="text", label_column="label")
    return config
