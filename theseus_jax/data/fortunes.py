"""Debian's `fortunes` files: real, human-written English texts grouped by topic.

They give the demo both MLM text and a binary topic task without any user data
(`apt-get install fortunes`). A file holds entries separated by lines containing only
`%`; the topic is the file name.
"""

from __future__ import annotations

from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")


def read_fortunes(path: str | Path) -> list[tuple[str, int]]:
    """Entries of one fortune file with the line each starts on; whitespace normalised."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such fortune file (install Debian's 'fortunes' package)")
    entries, lines, start = [], [], 1
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="strict").splitlines(), start=1):
        if line.strip() == "%":
            text = " ".join(" ".join(lines).split())
            if text:
                entries.append((text, start))
            lines, start = [], number + 1
        else:
            lines.append(line)
    text = " ".join(" ".join(lines).split())
    if text:
        entries.append((text, start))
    return entries


def topic_files(directory: str | Path, topics: str) -> list[Path]:
    """Paths of '+'-joined topic names in `directory`, each checked to exist."""
    paths = [Path(directory) / name.strip() for name in topics.split("+") if name.strip()]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise FileNotFoundError(f"fortune topics not found: {missing or topics!r} (install Debian's 'fortunes' package)")
    return paths
