"""Writing benchmark results into BENCHMARKS.md: one section per benchmark, replaced in place."""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path
from typing import Sequence

import jax

from theseus_jax import atomic


def machine_description() -> str:
    """CPU model, core count and JAX backend/devices: every result says where it ran."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()} ({devices})"


def publish(body: str, title: str, module: str, argv: Sequence[str] | None,
            output: str | os.PathLike | None, notes: Path | None) -> None:
    """Prints a benchmark's section body and, with `output`, writes it there (notes
    appended) under `title`, with the command line that produced it."""
    print(body)
    if notes:
        body += "\n\n" + notes.read_text()
    if output:
        command = f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)
        write_section(output, title, command.strip(), body)


def write_section(path: str | os.PathLike, title: str, command: str, body: str) -> None:
    """Replaces (or appends) the `## {title}` section of a Markdown file."""
    file = Path(path)
    text = file.read_text() if file.exists() else "# Benchmarks\n"
    section = f"## {title}\n\nCommand: `{command}`\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    atomic.write_text(file, text.rstrip() + "\n")
