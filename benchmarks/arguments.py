"""Command-line argument types the benchmarks share."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Iterable


def comma_choices(known: Iterable[str]) -> Callable[[str], list[str]]:
    """An argparse `type`: a comma-separated subset of `known`; anything else is refused by
    argparse (exit 2) with the names to choose from."""
    known = list(known)

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if unknown := sorted(set(names) - set(known)):
            raise argparse.ArgumentTypeError(f"unknown {','.join(unknown)}; choose from {','.join(known)}")
        return names

    return parse


def existing_file(text: str) -> Path:
    """An argparse `type`: a file that exists, checked before the benchmark runs (a missing
    --notes would otherwise end an hour's timing at its last step)."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path
