"""MIMIC-III in-hospital mortality from admission notes (users bring their own MIMIC-III v1.4).

Built as in the clinical-outcome-prediction setup the source study follows: discharge
summaries of non-newborn admissions, duplicates dropped keeping the latest, each
report joined with its addenda, then cut down to the sections known at admission.
The 4 GB NOTEEVENTS file is streamed in chunks; the result is cached as JSONL keyed by
the input files' paths, sizes and mtimes, so a rerun reads a few MB instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from theseus_jax.data.records import DataError, Example

# Bump when the build below changes, so stale caches are not reused.
BUILD_VERSION = 1
NOTE_COLUMNS = ("ROW_ID", "HADM_ID", "CHARTDATE", "CATEGORY", "DESCRIPTION", "TEXT")
ADMISSION_COLUMNS = ("HADM_ID", "ADMISSION_TYPE", "HOSPITAL_EXPIRE_FLAG")
CHUNK_ROWS = 20_000

# Sections known at admission, in output order, with the header wordings that name them.
ADMISSION_SECTIONS: dict[str, str] = {
    "CHIEF COMPLAINT": r"chief complaints?",
    "PRESENT ILLNESS": r"(history of (the )?)?present illness|hpi",
    "MEDICAL HISTORY": r"(past )?medical history|(past )?medical( and |/| & )surgical history|pmh",
    "MEDICATIONS ON ADMISSION": r"medications? (on|at|prior to) admission|(pre-?)?admission medications?|home medications?",
    "ALLERGIES": r"allerg(y|ies)",
    "PHYSICAL EXAM": r"(admission )?physical exam(ination)?( (on|at) admission)?|(admission )?exam (on|at) admission",
    "FAMILY HISTORY": r"family history|fhx?",
    "SOCIAL HISTORY": r"social history|shx?",
}
REQUIRED_SECTIONS = ("CHIEF COMPLAINT", "PRESENT ILLNESS", "MEDICAL HISTORY")
# Later sections, recognised as headers even where no blank line precedes them.
OTHER_HEADERS = (
    r"admission date|discharge date|date of birth|sex|service|attending|"
    r"major surgical or invasive procedures?|pertinent results|(brief )?hospital course|labs?|"
    r"discharge (medications?|diagnos[ie]s|disposition|condition|instructions|exam(ination)?)|"
    r"follow-?up instructions|review of systems|past surgical history|impression|facility"
)
_KNOWN = [(name, re.compile(pattern, re.I)) for name, pattern in ADMISSION_SECTIONS.items()]
_OTHER = re.compile(OTHER_HEADERS, re.I)
# "Title:" at the start of a line: letters and a little punctuation, no digits (so "BP 120/80:" is text).
_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z ,/&()'\-]{0,60}?)[ \t]*:(.*)$")
_MAX_TITLE_WORDS = 6


def _header(line: str, after_blank: bool) -> tuple[str, str] | None:
    """(normalised title, rest of the line) if `line` opens a section.

    A known title opens a section anywhere; an unknown one only after a blank line, since
    inside a section "Gen: NAD" or "Lungs: clear" are findings, not headers.
    """
    match = _HEADER.match(line)
    if not match:
        return None
    title = " ".join(match.group(1).split()).lower()
    known = any(p.fullmatch(title) for _, p in _KNOWN) or _OTHER.fullmatch(title)
    if known or (after_blank and len(title.split()) <= _MAX_TITLE_WORDS):
        return title, match.group(2)
    return None


def split_sections(note: str) -> list[tuple[str, str]]:
    """(title, body) per section, a section running from its header line to the next header line.

    Titles are lower case with single spaces; bodies have their whitespace collapsed.
    Text before the first header is dropped.
    """
    sections: list[tuple[str, list[str]]] = []
    after_blank = True
    for line in note.splitlines():
        header = _header(line, after_blank)
        if header:
            sections.append((header[0], [header[1]]))
        elif sections:
            sections[-1][1].append(line)
        after_blank = not line.strip()
    return [(title, " ".join(" ".join(body).split())) for title, body in sections]


def admission_text(note: str) -> str | None:
    """The note cut to the sections known at admission, "NAME: body" joined by blank lines.

    The first non-empty occurrence of each section counts; None when the note has none of
    chief complaint, present illness and medical history.
    """
    found: dict[str, str] = {}
    for title, body in split_sections(note):
        name = next((name for name, p in _KNOWN if p.fullmatch(title)), None)
        if name and body and name not in found:
            found[name] = body
    if not any(name in found for name in REQUIRED_SECTIONS):
        return None
    return "\n\n".join(f"{name}: {found[name]}" for name in ADMISSION_SECTIONS if name in found)


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.csv.gz", f"{stem}.csv"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {stem}.csv.gz or {stem}.csv (MIMIC-III v1.4 files)")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turns pandas' and the codec's errors into `DataError`s that name the file."""
    try:
        yield
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason})") from None  # notes span many lines: name the file
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: unreadable CSV ({err})") from None


def _read_csv(path: Path, columns: Iterable[str], **kwargs):
    """pandas.read_csv restricted to `columns`, after checking the header has them."""
    columns = list(columns)
    with _reading(path):
        header = pd.read_csv(path, nrows=0).columns
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (found {list(header)})")
    with _reading(path):
        return pd.read_csv(path, usecols=columns, **kwargs)


def _mortality_labels(path: Path) -> dict[int, int]:
    """HADM_ID -> HOSPITAL_EXPIRE_FLAG for every admission that is not NEWBORN."""
    admissions = _read_csv(path, ADMISSION_COLUMNS, dtype={"ADMISSION_TYPE": str, "HOSPITAL_EXPIRE_FLAG": str})
    # Admissions have no multi-line fields, so data row i is on line i + 2.
    for column, bad in (
        ("HADM_ID", admissions.HADM_ID.isna()),
        ("HOSPITAL_EXPIRE_FLAG", ~admissions.HOSPITAL_EXPIRE_FLAG.isin(["0", "1"])),
    ):
        if bad.any():
            index = int(bad.to_numpy().argmax())
            value = admissions[column].iloc[index]
            raise DataError(f"{path}:{index + 2}: {column} is {value!r}, expected {'an id' if column == 'HADM_ID' else '0 or 1'}")
    adults = admissions[admissions.ADMISSION_TYPE != "NEWBORN"]
    return dict(zip(adults.HADM_ID.astype("int64"), adults.HOSPITAL_EXPIRE_FLAG.astype(int)))


def _discharge_summaries(path: Path, labels: dict[int, int]) -> pd.DataFrame:
    """Discharge summaries with TEXT of labelled (non-newborn) admissions, streamed in chunks."""
    kept = []
    dtype = {"ROW_ID": "int64", "HADM_ID": "float64", "CHARTDATE": str, "CATEGORY": str, "DESCRIPTION": str, "TEXT": str}
    chunks = _read_csv(path, NOTE_COLUMNS, chunksize=CHUNK_ROWS, dtype=dtype)
    with _reading(path):
        for chunk in chunks:
            chunk = chunk[(chunk.CATEGORY == "Discharge summary") & chunk.TEXT.notna() & chunk.HADM_ID.notna()]
            kept.append(chunk[chunk.HADM_ID.astype("int64").isin(labels.keys())])
    notes = pd.concat(kept, ignore_index=True)
    notes["HADM_ID"] = notes.HADM_ID.astype("int64")
    return notes


def build_mortality(notes_path: Path, admissions_path: Path) -> list[Example]:
    """Admission notes labelled with in-hospital death, in HADM_ID order (no cache)."""
    labels = _mortality_labels(admissions_path)
    notes = _discharge_summaries(notes_path, labels)
    notes = notes.sort_values(["CHARTDATE", "ROW_ID"], kind="stable").drop_duplicates("TEXT", keep="last")
    examples = []
    for hadm, group in notes.groupby("HADM_ID", sort=True):
        reports = group[group.DESCRIPTION == "Report"]
        if reports.empty:  # addenda whose report is missing or was a duplicate
            continue
        text = admission_text("\n\n".join(group.TEXT))
        if text is not None:
            row = int(reports.ROW_ID.iloc[-1])
            examples.append(Example(text, labels[hadm], f"{notes_path}:HADM_ID={hadm}:ROW_ID={row}"))
    return examples


def default_cache_dir() -> Path:
    """$THESEUS_CACHE, else $XDG_CACHE_HOME/theseus_jax, else ~/.cache/theseus_jax."""
    if os.environ.get("THESEUS_CACHE"):
        return Path(os.environ["THESEUS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "theseus_jax"


def _cache_key(paths: Iterable[Path]) -> str:
    parts = [BUILD_VERSION] + [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def read_mimic(folder: str | Path, cache_dir: str | Path | None = None) -> list[Example]:
    """The mortality dataset from a folder with NOTEEVENTS.csv(.gz) and ADMISSIONS.csv(.gz), cached."""
    folder = Path(folder)
    notes_path, admissions_path = _find(folder, "NOTEEVENTS"), _find(folder, "ADMISSIONS")
    cache = Path(cache_dir or default_cache_dir()) / f"mimic-mortality-{_cache_key([notes_path, admissions_path])}.jsonl"
    if cache.is_file():
        with cache.open(encoding="utf-8") as f:
            return [Example(**json.loads(line)) for line in f]
    examples = build_mortality(notes_path, admissions_path)
    if not examples:
        raise DataError(f"{notes_path}: no discharge summary with admission sections and a labelled admission")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"text": e.text, "label": e.label, "source": e.source}, ensure_ascii=False) + "\n")
    tmp.replace(cache)
    return examples
