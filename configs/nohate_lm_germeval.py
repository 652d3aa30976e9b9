"""MLM (and compression) on unlabelled NOHATE LM comments, downstream on GermEval.

    python launch.py --config=configs/nohate_lm_germeval.py --workdir=runs/nohate_lm \
        --config.lm.data.train_path=/data/nohate/lm_comments.txt --config.model.path=/models/gbert
"""

from configs.base import data_config
from configs.germeval import get_config as germeval_config


def get_config():
    config = germeval_config()
    config.lm.data = data_config(format="nohate_lm", train_path="", text_column="text")
    return config
