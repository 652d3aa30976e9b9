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

OLDER = "## Older or superseded"  # BENCHMARKS.md's last part: earlier results, kept as a record


def machine_description() -> str:
    """CPU kind (model name, family and model, as lscpu shows them), core count and JAX
    backend/devices: every result says where it ran."""
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return f"{cpu_kind()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()} ({devices})"


def cpu_kind(cpuinfo: str | None = None) -> str:
    """`model name (family F, model M)` of the first processor in /proc/cpuinfo (or `cpuinfo`)."""
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


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
    """Replaces the `## {title}` section of a Markdown file, or adds it as the last current
    section: before the `## Older or superseded` part (whose sections are `###`, so a new
    run never overwrites them), else at the end."""
    file = Path(path)
    text = file.read_text() if file.exists() else "# Benchmarks\n"
    section = f"## {title}\n\nCommand: `{command}`\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    elif (older := re.search(rf"^{re.escape(OLDER)}", text, re.M)) is not None:
        text = text[: older.start()] + section + "\n" + text[older.start():]
    else:
        text = text.rstrip() + "\n\n" + section
    atomic.write_text(file, text.rstrip() + "\n")
