"""Offensive language, GermEval 2019 Task 2 / GermEval 2018 coarse (macro F1).

    python launch.py --config=configs/germeval.py --workdir=runs/germeval \
        --config.model.path=/models/bert-base-german-cased

The defaults read the GermEval 2018 copy in ../shared/data (training file split 80/20
for the LM and downstream stages, the official test file for evaluation).
"""

from configs.base import data_config, get_base_config

GERMEVAL = "../shared/data/germeval2018"


def get_config():
    config = get_base_config()
    config.model.path = ""  # a 12-layer German BERT checkpoint folder
    config.cls.metric = "macro_f1"
    config.cls.data = data_config(
        format="germeval",
        train_path=f"{GERMEVAL}/germeval2018.training.txt",
        test_path=f"{GERMEVAL}/germeval2018.test.txt",
    )
    # MLM on the same tweets (text only), evaluated on the test tweets' text.
    config.lm.data = data_config(
        format="germeval",
        train_path=f"{GERMEVAL}/germeval2018.training.txt",
        test_path=f"{GERMEVAL}/germeval2018.test.txt",
    )
    config.lm.max_length = 128
    config.cls.max_length = 128
    return config
