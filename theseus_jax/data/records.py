"""The unit every reader returns: a text, its label (None when unlabelled) and where it came from."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Example:
    text: str
    label: int | None
    source: str  # "file:line", kept for error reports and error analysis

    @property
    def labelled(self) -> bool:
        return self.label is not None


class DataError(ValueError):
    """Bad input data; the message names the file and line or field."""
