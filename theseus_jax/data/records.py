"""The unit every reader returns: a text, its label (None when unlabelled) and where it came from."""

from __future__ import annotations

import dataclasses

from theseus_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Example:
    """One observation; `source` ("file:line") survives cleaning and splitting for error analysis."""

    text: str
    label: int | None
    source: str

    @property
    def labelled(self) -> bool:
        return self.label is not None


class DataError(UserError, ValueError):
    """Bad input data; the message names the file and the line or field."""
