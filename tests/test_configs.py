"""Every shipped config passes the schema (fields, types, values, stage order and rules), so
a renamed field or a stage-order slip in configs/ fails here rather than in a user's first
run. Paths that exist only on a study machine (a model folder, ../shared/data, fortunes,
MIMIC) are the one kind of problem allowed."""

import importlib
from pathlib import Path

import pytest

from theseus_jax.experiments.config_schema import ConfigError, validate_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem not in ("__init__", "base"))
MACHINE_PATHS = ("no such file or folder", "no such checkpoint folder", "empty; set")


def test_every_config_file_is_checked():
    assert {"demo", "germeval_e5", "germeval_e5_recipe"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_passes_the_schema(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    try:
        validate_config(config)
    except ConfigError as error:
        assert not [p for p in error.problems if not any(m in p for m in MACHINE_PATHS)]
