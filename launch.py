"""Runs an experiment from a config file.

    python launch.py --config=configs/demo.py --workdir=runs/demo
    python launch.py --config=configs/germeval.py --workdir=runs/germeval \
        --config.cls.data.train_path=../shared/data/germeval2018/germeval2018.training.txt \
        --config.compression.starting_rate=0.3

Rerunning the same command resumes from the last checkpoint; a workdir that holds a run
with another config is refused unless --overwrite is given.
"""

import logging
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from theseus_jax.experiments.checkpoints import claim_workdir
from theseus_jax.experiments.pipelines import PIPELINES

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (a Python file with get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a workdir that holds a run with another config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("theseus_jax").setLevel(logging.INFO)
    config = _CONFIG.value
    if config.pipeline not in PIPELINES:
        raise app.UsageError(f"config.pipeline={config.pipeline!r}; choose one of {sorted(PIPELINES)}")
    workdir = Path(_WORKDIR.value)
    resumed = claim_workdir(workdir, config.to_dict(), _OVERWRITE.value)
    logging.info("%s run in %s", "resuming the" if resumed else "starting a new", workdir)
    result = PIPELINES[config.pipeline](config, workdir)
    logging.info("done: %s", workdir / "report.md")
    if "comparison" in result:
        for key, value in result["comparison"].items():
            logging.info("  %s: %s", key, value)


if __name__ == "__main__":
    app.run(main)
