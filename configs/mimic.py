"""In-hospital mortality from MIMIC-III admission notes (ROC AUC), the source study's setup.

Bring your own credentialed MIMIC-III v1.4 copy:
    python launch.py --config=configs/mimic.py --workdir=runs/mimic \
        --config.cls.data.train_path=/data/mimic-iii-1.4 --config.model.path=/models/bert-base-uncased
`train_path` is the folder holding NOTEEVENTS.csv(.gz) and ADMISSIONS.csv(.gz); the same
admission notes serve as the LM text (MLM on the training split only).
"""

from configs.base import data_config, get_base_config


def get_config():
    config = get_base_config()
    config.model.path = ""  # a 12-layer BERT checkpoint folder (e.g. bert-base-uncased, clinical BERT)
    config.compression.num_successor_layers = 6
    config.cls.metric = "roc_auc"
    config.cls.data = data_config(format="mimic", train_path="")
    config.lm.data = data_config(format="mimic", train_path="")
    return config
