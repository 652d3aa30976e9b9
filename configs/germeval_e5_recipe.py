"""Issue 21's study: can compression beat truncation on real weights? e5-small 12 -> 6 on GermEval 2018.

The first study (configs/germeval_e5.py: 2 epochs, p reaching 1 at 85% of 282 steps) found
the compressed models level with simply fine-tuning the bottom 6 layers. This one gives every
model the longer budget the literature uses (Mosbach et al. 2021: 10% warm-up, many more
iterations, early stopping on validation; BERT-of-Theseus: a replacement phase, then the
successor alone) and adds task distillation from the same seed's fine-tuned predecessor:

- `cls_predecessor`: the 12-layer teacher;
- `cls_truncated`: its bottom 6 layers fine-tuned (the baseline to beat); `cls_truncated_kd`:
  the same distilled from cls_predecessor (the literature's "vanilla KD");
- `cls_compress`: Theseus Compression from cls_predecessor; `cls_compress_kd`: plus distillation.

Every student gets the same budget: up to `cls.epochs` epochs, validation after each, early
stopping after `early_stopping.patience` evaluations without a gain, the same learning-rate
set (chosen per seed on validation). The recipe (schedule, b, replacing_steps, alpha, T,
rates) is chosen on seed 0's validation split only (the screening), then run for 3 seeds:

    python ../shared/tools/e5small_to_hf.py --out ~/.cache/theseus-jax/e5-small-hf
    nice python launch.py --config=configs/germeval_e5_recipe.py --workdir=~/.cache/theseus-jax/runs/e5_recipe

Screening: the teacher once (seed 0), then each candidate as a single run from its best model
(`--config.pipeline=cls_compress --config.cls_model=TEACHER/best`, or `cls_baseline` with
`--config.cls_model=truncated`, each with `--config.distillation.teacher=TEACHER/best` when
distilling); the table and commands are in BENCHMARKS.md.
"""

from configs.germeval_e5 import get_config as germeval_e5_config


def get_config():
    config = germeval_e5_config()
    config.series.stages = "cls_predecessor,cls_truncated,cls_truncated_kd,cls_compress,cls_compress_kd"
    config.compression.trainable = "successor"  # the original method: the successor layers alone train
    config.cls.epochs = 6
    config.cls.warmup_ratio = 0.1
    config.early_stopping.patience = 2
    # p = 0.1 + k s reaching 1 after 2 of the 6 epochs (282 steps), then the successor alone.
    config.compression.replacing_steps = 282
    config.distillation.alpha = 0.5
    config.distillation.temperature = 2.0
    return config
