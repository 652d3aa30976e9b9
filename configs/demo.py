"""The embedded default: compress the packaged all-MiniLM-L6-v2 (6 -> 3 layers) on real text.

No user data: Debian's `fortunes` package supplies real, human-written English texts
grouped by topic (`apt-get install fortunes`). The LM stage fine-tunes the masked LM on
six other topics; the downstream task tells science, medicine and education fortunes
from politics, law and news. The series compares the predecessor, the successor
compressed during MLM fine-tuning, the successor compressed during downstream training
(BERT-of-Theseus' setting, from the fine-tuned predecessor, also learning from its
logits: task distillation) and the truncated predecessor (its bottom 3 layers,
fine-tuned for the same steps).

Protocol: every stage holds out a stratified 10% of its training texts for validation;
best steps and the learning rate of each downstream stage (5e-5 or 1.5e-4, the same set
for every model) are chosen on validation, and the test texts are evaluated at the chosen
steps only. The default is one seed (the downstream stages run 3 epochs at 2 rates); the
3-seed results are in BENCHMARKS.md ("The demo with that recipe, 3 seeds"):

    python launch.py --config=configs/demo.py --workdir=runs/demo
    python launch.py --config=configs/demo.py --workdir=runs/demo3 --config.seeds=0,1,2
"""

from configs.base import data_config, get_base_config
from theseus_jax.data.fortunes import FORTUNES_DIR

FORTUNES = str(FORTUNES_DIR)


def get_config():
    config = get_base_config()
    config.model.path = "packaged"
    config.compression.num_successor_layers = 3
    config.compression.init_offset = "0"  # successor i <- predecessor layer 2i
    # all-MiniLM-L6-v2 ships without an MLM head: it starts from a random init, so it must
    # train beside the successor (with the successor alone it would stay random).
    config.compression.trainable = "successor_embeddings_heads"

    config.lm.data = data_config(
        format="fortunes",
        train_path=FORTUNES,
        topics="people+wisdom+work+men-women+art+literature",
        test_share=0.1,
        max_examples=1200,
    )
    config.lm.epochs = 2
    config.lm.max_length = 64
    config.lm.buckets = (32, 64)
    config.lm.learning_rate = 1e-4

    config.cls.data = data_config(
        format="fortunes", train_path=FORTUNES, topics="science+medicine+education/politics+law+news"
    )
    config.cls.metric = "macro_f1"
    config.cls.epochs = 3
    config.cls.max_length = 64
    config.cls.buckets = (32, 64)
    config.cls.learning_rates = "5e-5,1.5e-4"  # each chosen per seed on validation
    config.cls.warmup_ratio = 0.1

    # The recipe chosen on seed 0's validation split (issue 21; docs/benchmarks-studies.md,
    # "Demo recipe"): Theseus Compression distilled from the fine-tuned predecessor (alpha 0.5, T 2).
    config.series.stages = "lm_baseline,lm_compress,cls_predecessor,cls_successor,cls_compress_kd,cls_truncated"
    config.distillation.alpha = 0.5
    config.distillation.temperature = 2.0
    config.checkpoint_every_steps = 50
    return config
