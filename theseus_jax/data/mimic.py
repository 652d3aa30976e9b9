"""MIMIC-III in-hospital mortality from admission notes (van Aken et al.'s task, as in the study).

Built from MIMIC-III v1.4's `NOTEEVENTS.csv(.gz)` and `ADMISSIONS.csv(.gz)`:
discharge summaries only; no NEWBORN admissions; no notes without TEXT or HADM_ID;
duplicate texts dropped keeping the latest; each admission's report joined with its
addenda; only the sections known at admission kept (chief complaint, present illness,
medical history, medications on admission, allergies, physical exam, family history,
social history), and admissions with none of chief complaint, present illness and
medical history dropped. Label: the admission's HOSPITAL_EXPIRE_FLAG.

The notes file (about 4 GB) is streamed row by row; only discharge summaries are held.
The built dataset is cached as JSONL keyed by both files' paths, sizes and mtimes, so a
rerun reads it in seconds.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import IO, Iterator

from theseus_jax.data.records import DataError, Example

# Section header names (lower case, single spaces) -> the admission section they open.
ADMISSION_SECTIONS = {
    "chief complaint": "chief complaint",
    "history of present illness": "present illness",
    "history of the present illness": "present illness",
    "present illness": "present illness",
    "hpi": "present illness",
    "past medical history": "medical history",
    "medical history": "medical history",
    "pmh": "medical history",
    "medications on admission": "medications on admission",
    "admission medications": "medications on admission",
    "meds on admission": "medications on admission",
    "medications prior to admission": "medications on admission",
    "allergies": "allergies",
    "physical exam": "physical exam",
    "physical examination": "physical exam",
    "admission physical exam": "physical exam",
    "physical exam on admission": "physical exam",
    "family history": "family history",
    "social history": "social history",
}
REQUIRED_SECTIONS = {"chief complaint", "present illness", "medical history"}
# Other headers of discharge summaries: they end an admission section and are dropped.
OTHER_SECTIONS = {
    "admission date", "discharge date", "date of birth", "sex", "service", "attending", "addendum",
    "major surgical or invasive procedure", "major surgical and invasive procedures", "past surgical history",
    "review of systems", "pertinent results", "labs", "laboratory data", "imaging", "studies", "impression",
    "brief hospital course", "hospital course", "concise summary of hospital course",
    "discharge medications", "discharge diagnosis", "discharge diagnoses", "discharge condition",
    "discharge disposition", "discharge instructions", "followup instructions", "follow-up instructions",
    "discharge exam", "physical exam on discharge", "discharge physical exam", "facility", "completed by",
    "condition on discharge", "disposition", "diagnosis", "final diagnosis", "procedures", "history",
}
HEADER = re.compile(r"^\s*([A-Za-z][A-Za-z /&,()'-]{1,60}?)\s*:(.*)$")
NOTE_COLUMNS = ("ROW_ID", "HADM_ID", "CHARTDATE", "CATEGORY", "DESCRIPTION", "TEXT")
ADMISSION_COLUMNS = ("HADM_ID", "ADMISSION_TYPE", "HOSPITAL_EXPIRE_FLAG")
CACHE_VERSION = 1


def _normal(name: str) -> str:
    return " ".join(name.lower().split())


def admission_sections(note: str) -> dict[str, str]:
    """The admission sections of a note: {section: text}, each running from its header to the
    next known header; repeated sections (e.g. from an addendum) are concatenated."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in note.splitlines():
        match = HEADER.match(line)
        name = _normal(match.group(1)) if match else None
        if name in ADMISSION_SECTIONS:
            current = ADMISSION_SECTIONS[name]
            sections.setdefault(current, []).append(match.group(2).strip())
        elif name in OTHER_SECTIONS:
            current = None
        elif current is not None:
            sections[current].append(line.strip())
    return {k: " ".join(" ".join(v).split()) for k, v in sections.items() if " ".join(v).strip()}


def admission_text(note: str) -> str | None:
    """The note reduced to its admission sections, or None if it has none of the required ones."""
    sections = admission_sections(note)
    if not REQUIRED_SECTIONS & sections.keys():
        return None
    return "\n".join(f"{name.capitalize()}: {text}" for name, text in sections.items())


def _open(path: Path) -> IO[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding="utf-8", newline="")


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.csv.gz", f"{stem}.csv"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {stem}.csv or {stem}.csv.gz (MIMIC-III v1.4 file)")


def _rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    csv.field_size_limit(sys.maxsize)  # discharge summaries exceed csv's 128 KB default
    with _open(path) as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing columns {missing}")
        try:
            for row in reader:
                yield reader.line_num, row
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None


def _admissions(path: Path) -> dict[str, tuple[str, int]]:
    admissions = {}
    for line, row in _rows(path, ADMISSION_COLUMNS):
        flag = row["HOSPITAL_EXPIRE_FLAG"].strip()
        if flag not in ("0", "1"):
            raise DataError(f"{path}:{line}: HOSPITAL_EXPIRE_FLAG must be 0 or 1, got {flag!r}")
        admissions[row["HADM_ID"].strip()] = (row["ADMISSION_TYPE"].strip().upper(), int(flag))
    return admissions


def build_mimic(notes_path: Path, admissions_path: Path) -> list[Example]:
    """The mortality dataset from the two MIMIC-III files (see the module docstring)."""
    admissions = _admissions(admissions_path)
    latest_by_text: dict[str, tuple[tuple[str, int], str, str, str, int]] = {}
    for line, row in _rows(notes_path, NOTE_COLUMNS):
        if row["CATEGORY"].strip() != "Discharge summary":
            continue
        hadm, text = row["HADM_ID"].strip(), row["TEXT"]
        if not hadm or not text.strip():
            continue
        hadm = str(int(float(hadm)))  # "123.0" in some exports
        order = (row["CHARTDATE"], int(row["ROW_ID"] or 0))
        digest = hashlib.sha1(text.encode()).hexdigest()
        if digest not in latest_by_text or order > latest_by_text[digest][0]:
            latest_by_text[digest] = (order, hadm, row["DESCRIPTION"].strip().lower(), text, line)
    notes_by_admission: dict[str, list[tuple[tuple[str, int], str, str, int]]] = {}
    for order, hadm, description, text, line in latest_by_text.values():
        notes_by_admission.setdefault(hadm, []).append((order, description, text, line))
    examples = []
    for hadm in sorted(notes_by_admission, key=int):
        if hadm not in admissions:
            raise DataError(f"{notes_path}: HADM_ID {hadm} is not in {admissions_path}")
        admission_type, label = admissions[hadm]
        if admission_type == "NEWBORN":
            continue
        # The report first, then its addenda in chart order.
        notes = sorted(notes_by_admission[hadm], key=lambda n: (n[1] != "report", n[0]))
        text = admission_text("\n".join(n[2] for n in notes))
        if text is not None:
            examples.append(Example(text, label, f"{notes_path}:{notes[0][3]} (HADM_ID {hadm})"))
    return examples


def _cache_key(*paths: Path) -> str:
    parts = [CACHE_VERSION] + [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "theseus_jax"


def read_mimic(folder: str | Path, cache_dir: str | Path | None = None) -> list[Example]:
    """The mortality dataset from a MIMIC-III folder, built once and then read from the cache."""
    folder = Path(folder)
    notes, admissions = _find(folder, "NOTEEVENTS"), _find(folder, "ADMISSIONS")
    cache = Path(cache_dir or default_cache_dir()) / f"mimic-mortality-{_cache_key(notes, admissions)}.jsonl"
    if cache.exists():
        with cache.open(encoding="utf-8") as f:
            return [Example(**json.loads(line)) for line in f]
    examples = build_mimic(notes, admissions)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"text": e.text, "label": e.label, "source": e.source}) + "\n")
    tmp.replace(cache)
    return examples
