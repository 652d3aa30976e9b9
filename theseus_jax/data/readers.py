"""Every reader in one namespace, for callers that pick one by a config's `format`."""

from theseus_jax.data.generic import parse_label_map, read_table, read_text_lines
from theseus_jax.data.germeval import GERMEVAL_LABELS, read_germeval
from theseus_jax.data.mimic import read_mimic
from theseus_jax.data.nohate import read_nohate, read_nohate_lm

__all__ = [
    "GERMEVAL_LABELS",
    "parse_label_map",
    "read_germeval",
    "read_mimic",
    "read_nohate",
    "read_nohate_lm",
    "read_table",
    "read_text_lines",
]
