"""Issue 21's study: can compression beat truncation on real weights? e5-small 12 -> 6 on GermEval 2018.

Against the first study (configs/germeval_e5.py: 2 epochs, p reaching 1 at 85% of 282 steps),
every model gets the longer budget the literature uses (Mosbach et al. 2021: 10% warm-up, many
more iterations, early stopping on validation; BERT-of-Theseus: a replacement phase, then the
successor alone), and task distillation from the same seed's fine-tuned predecessor is added:

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

Screening (seed 0, validation only): the teacher once, then every candidate of `SCREEN` below
as a single run from it, each at one learning rate, ranked on validation:

    nice python -m theseus_jax.analysis.screen --config=configs/germeval_e5_recipe.py \
        --root=~/.cache/theseus-jax/runs/e5_screen

`get_config()` is the recipe the screening chose. Results: BENCHMARKS.md ("e5-small 12 -> 6 on
GermEval 2018: the final table"); the screening, per-run values and diagnosis:
docs/benchmarks-studies.md.
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
    config.compression.replacing_epochs = 2.0  # 282 steps at GermEval 2018's 141 batches an epoch
    config.distillation.alpha = 0.5
    config.distillation.temperature = 2.0
    return config


_SEED0 = ["--config.seeds=0"]
_COMPRESS = [*_SEED0, "--config.pipeline=cls_compress", "--config.cls_model={teacher}"]
_TRUNCATED = [*_SEED0, "--config.pipeline=cls_baseline", "--config.cls_model=truncated"]
_KD = ["--config.distillation.alpha=0.5", "--config.distillation.temperature=2.0", "--config.distillation.teacher={teacher}"]
_CE = ["--config.distillation.alpha=0"]

# The screening's candidates (theseus_jax.analysis.screen): one learning rate each, seed 0.
SCREEN = {
    "teacher": ["--config.series.stages=cls_predecessor", *_SEED0, *_CE, "--config.cls.learning_rates=3e-5"],
    **{
        f"{name}_lr{rate}": [*base, *extra, f"--config.cls.learning_rates={rate}"]
        for rate in ("3e-5", "1e-4")
        for name, base, extra in (
            ("truncated", _TRUNCATED, _CE),
            ("truncated_kd", _TRUNCATED, _KD),
            ("compress", _COMPRESS, _CE),
            ("compress_kd", _COMPRESS, _KD),
        )
    },
    # The published constant-rate example's shape: p = 0.5 for the first 2 epochs, then 1.
    "compress_constant_lr1e-4": [*_COMPRESS, *_CE, "--config.compression.schedule=constant", "--config.cls.learning_rates=1e-4"],
    # A later start of the curriculum (b = 0.3, the paper's other value).
    "compress_b0.3_lr1e-4": [*_COMPRESS, *_CE, "--config.compression.starting_rate=0.3", "--config.cls.learning_rates=1e-4"],
    # Diagnosis (issue 21 item 4), to run with --only if the final table misses its goal:
    # successor i from the upper layer of its module instead of the lower one...
    "compress_offset1_lr1e-4": [*_COMPRESS, *_CE, "--config.compression.init_offset=1", "--config.cls.learning_rates=1e-4"],
    # ...the successor copied from the pretrained e5 layers instead of the fine-tuned teacher's...
    "compress_pretrained_init_lr1e-4": [
        *_COMPRESS, *_CE, "--config.compression.successor_init=pretrained", "--config.cls.learning_rates=1e-4",
    ],
    # ...and the embeddings, pooler and classifier training beside the successor.
    "compress_heads_lr1e-4": [
        *_COMPRESS, *_CE, "--config.compression.trainable=successor_embeddings_heads", "--config.cls.learning_rates=1e-4",
    ],
}
