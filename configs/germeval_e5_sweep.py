"""Issue 32's depth sweep: e5-small 12 -> 6, 4 and 3 layers on GermEval 2018, Theseus against truncation.

The recipe of configs/germeval_e5_recipe.py (curriculum p = 0.1 + k s for 2 epochs, then the
successor alone; 10% warm-up; the successor layers alone train) at every depth, with a budget
long enough that early stopping, not the cap, ends the runs: up to 12 epochs, stopping after 3
validations without a gain. The 12-layer teacher runs once per seed; every student at every
depth gets the same budget and learning-rate set. To fit the study in about 12 h, seed 0 of each
model runs the whole rate set and seeds 1 and 2 only the rate seed 0 chose on validation
(`rate_choice="first_seed"`, the same rule for every model). The report adds the Pareto table,
the figure and the measured inference speed of each depth's export:

    python ../shared/tools/e5small_to_hf.py --out ~/.cache/theseus-jax/e5-small-hf
    nice python launch.py --config=configs/germeval_e5_sweep.py --workdir=~/.cache/theseus-jax/runs/e5_sweep

Results: BENCHMARKS.md ("Depth sweep").
"""

from configs.germeval_e5_recipe import get_config as recipe_config


def get_config():
    config = recipe_config()
    config.series.stages = "cls_predecessor,cls_truncated,cls_compress"
    config.compression.depths = "6,4,3"
    config.cls.epochs = 12
    config.early_stopping.patience = 3
    config.rate_choice = "first_seed"
    config.distillation.alpha = 0.0  # no distilling stage in this series
    return config
