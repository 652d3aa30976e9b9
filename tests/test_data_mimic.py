"""MIMIC-III mortality: section extraction on hand-written notes, the exact admissions kept, caching, errors."""

from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path

import pytest

from theseus_jax.data import mimic
from theseus_jax.data.records import DataError, Example

NOTE_COLUMNS = "ROW_ID,SUBJECT_ID,HADM_ID,CHARTDATE,CHARTTIME,STORETIME,CATEGORY,DESCRIPTION,CGID,ISERROR,TEXT".split(",")
ADMISSION_COLUMNS = (
    "ROW_ID,SUBJECT_ID,HADM_ID,ADMITTIME,DISCHTIME,DEATHTIME,ADMISSION_TYPE,ADMISSION_LOCATION,DISCHARGE_LOCATION,"
    "INSURANCE,LANGUAGE,RELIGION,MARITAL_STATUS,ETHNICITY,EDREGTIME,EDOUTTIME,DIAGNOSIS,HOSPITAL_EXPIRE_FLAG,"
    "HAS_CHARTEVENTS_DATA"
).split(",")

# Title-case layout, a header per line, content below; discharge-time sections interleaved.
NOTE_TITLE_CASE = """Admission Date:  [**2151-7-16**]       Discharge Date:   [**2151-8-4**]

Service: MEDICINE

Allergies:
Penicillins

Chief Complaint:
Shortness of breath

Major Surgical or Invasive Procedure:
Intubation

History of Present Illness:
72 yo man with COPD
presenting with dyspnea.

Past Medical History:
COPD, HTN

Social History:
Former smoker.

Family History:
Noncontributory

Physical Exam:
VS: T 98.6 BP 120/80
Gen: NAD

Pertinent Results:
[**2151-7-16**] 08:00PM WBC-12

Brief Hospital Course:
Treated with steroids.

Medications on Admission:
Albuterol

Discharge Medications:
Prednisone

Discharge Diagnosis:
COPD exacerbation
"""
TITLE_CASE_ADMISSION = (
    "CHIEF COMPLAINT: Shortness of breath\n\n"
    "PRESENT ILLNESS: 72 yo man with COPD presenting with dyspnea.\n\n"
    "MEDICAL HISTORY: COPD, HTN\n\n"
    "MEDICATIONS ON ADMISSION: Albuterol\n\n"
    "ALLERGIES: Penicillins\n\n"
    "PHYSICAL EXAM: VS: T 98.6 BP 120/80 Gen: NAD\n\n"
    "FAMILY HISTORY: Noncontributory\n\n"
    "SOCIAL HISTORY: Former smoker."
)

# Upper-case dictated layout: content on the header line, no blank lines between sections.
NOTE_UPPER_CASE = """ADMISSION DATE: [**2150-1-1**]
CHIEF COMPLAINT: Chest pain.
HISTORY OF PRESENT ILLNESS: The patient is a 60-year-old
woman with chest pain.
PAST MEDICAL HISTORY: Diabetes.
PHYSICAL EXAMINATION: Heart regular.
HOSPITAL COURSE: Stented.
DISCHARGE MEDICATIONS: Aspirin.
"""
UPPER_CASE_ADMISSION = (
    "CHIEF COMPLAINT: Chest pain.\n\n"
    "PRESENT ILLNESS: The patient is a 60-year-old woman with chest pain.\n\n"
    "MEDICAL HISTORY: Diabetes.\n\n"
    "PHYSICAL EXAM: Heart regular."
)

# An unknown header after a blank line ends a section; "He reports: ..." inside one does not.
NOTE_UNKNOWN_HEADER = """Chief Complaint:
fever

Code status: full

HPI: Fever for 3 days.
He reports: chills
"""
UNKNOWN_HEADER_ADMISSION = "CHIEF COMPLAINT: fever\n\nPRESENT ILLNESS: Fever for 3 days. He reports: chills"

# Admission sections, but none of chief complaint, present illness, medical history.
NOTE_NO_MAIN_SECTION = """Allergies:
None

Physical Exam:
Well.

Brief Hospital Course:
Uneventful.
"""


@pytest.mark.parametrize(
    "note, expected",
    [
        (NOTE_TITLE_CASE, TITLE_CASE_ADMISSION),
        (NOTE_UPPER_CASE, UPPER_CASE_ADMISSION),
        (NOTE_UNKNOWN_HEADER, UNKNOWN_HEADER_ADMISSION),
        (NOTE_NO_MAIN_SECTION, None),
    ],
)
def test_admission_text_keeps_only_sections_known_at_admission(note, expected):
    assert mimic.admission_text(note) == expected


def test_split_sections_runs_from_header_to_next_header():
    assert mimic.split_sections(NOTE_UPPER_CASE) == [
        ("admission date", "[**2150-1-1**]"),
        ("chief complaint", "Chest pain."),
        ("history of present illness", "The patient is a 60-year-old woman with chest pain."),
        ("past medical history", "Diabetes."),
        ("physical examination", "Heart regular."),
        ("hospital course", "Stented."),
        ("discharge medications", "Aspirin."),
    ]


ADMISSIONS = [  # HADM_ID, ADMISSION_TYPE, HOSPITAL_EXPIRE_FLAG
    (101, "EMERGENCY", 0),
    (102, "EMERGENCY", 1),
    (103, "NEWBORN", 0),
    (104, "ELECTIVE", 1),
    (105, "URGENT", 0),
    (106, "EMERGENCY", 0),
    (108, "EMERGENCY", 0),
]
NOTES = [  # ROW_ID, HADM_ID, CHARTDATE, CATEGORY, DESCRIPTION, TEXT
    (1, 101, "2151-08-04", "Discharge summary", "Report", NOTE_TITLE_CASE),  # kept
    (2, 102, "2150-01-05", "Discharge summary", "Report", "Allergies:\nNo Known Allergies\n\nBrief Hospital Course:\nDied."),
    (3, 102, "2150-01-06", "Discharge summary", "Addendum", "Addendum:\nHistory of Present Illness:\nCollapsed at home."),
    (4, 103, "2150-03-01", "Discharge summary", "Report", NOTE_UNKNOWN_HEADER),  # newborn admission
    (5, 104, "2150-02-01", "Discharge summary", "Report", NOTE_UPPER_CASE),  # duplicate text, earlier
    (6, 104, "2150-02-03", "Discharge summary", "Report", NOTE_UPPER_CASE),  # duplicate text, latest: kept
    (7, 105, "2150-04-01", "Nursing/other", "Report", NOTE_UNKNOWN_HEADER),  # not a discharge summary
    (8, 105, "2150-04-02", "Discharge summary", "Report", NOTE_NO_MAIN_SECTION),  # no main section
    (9, None, "2150-05-01", "Discharge summary", "Report", NOTE_UNKNOWN_HEADER),  # no HADM_ID
    (10, 106, "2150-06-01", "Discharge summary", "Report", None),  # no TEXT
    (11, 106, "2150-06-02", "Discharge summary", "Addendum", NOTE_UNKNOWN_HEADER),  # addendum without report
    (12, 107, "2150-07-01", "Discharge summary", "Report", NOTE_UNKNOWN_HEADER),  # unknown admission
    (13, 108, "2150-08-01", "Discharge summary", "Report", NOTE_UNKNOWN_HEADER),  # kept
]


def write_mimic(folder: Path, notes=NOTES, admissions=ADMISSIONS, note_columns=NOTE_COLUMNS) -> Path:
    """NOTEEVENTS.csv.gz and ADMISSIONS.csv laid out (columns, quoting) like MIMIC-III v1.4."""
    folder.mkdir(exist_ok=True)
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    writer.writerow(note_columns)
    for row_id, hadm, date, category, description, text in notes:
        values = [row_id, 7, "" if hadm is None else hadm, date, "", "", category, description, "", "", text or ""]
        row = dict(zip(NOTE_COLUMNS, values))
        writer.writerow([row[c] for c in note_columns])
    with gzip.open(folder / "NOTEEVENTS.csv.gz", "wt", encoding="utf-8") as f:
        f.write(out.getvalue())
    with (folder / "ADMISSIONS.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(ADMISSION_COLUMNS)
        for i, (hadm, kind, flag) in enumerate(admissions):
            row = dict.fromkeys(ADMISSION_COLUMNS, "")
            row.update(ROW_ID=i, SUBJECT_ID=7, HADM_ID=hadm, ADMISSION_TYPE=kind, HOSPITAL_EXPIRE_FLAG=flag)
            writer.writerow(row.values())
    return folder


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(mimic, "CHUNK_ROWS", 3)  # the notes file streams in several chunks


def test_mortality_keeps_exactly_the_expected_admissions(tmp_path, small_chunks):
    folder = write_mimic(tmp_path / "mimic")
    notes = folder / "NOTEEVENTS.csv.gz"
    assert mimic.read_mimic(folder, cache_dir=tmp_path / "cache") == [
        Example(TITLE_CASE_ADMISSION, 0, f"{notes}:HADM_ID=101:ROW_ID=1"),
        Example("PRESENT ILLNESS: Collapsed at home.\n\nALLERGIES: No Known Allergies", 1, f"{notes}:HADM_ID=102:ROW_ID=2"),
        Example(UPPER_CASE_ADMISSION, 1, f"{notes}:HADM_ID=104:ROW_ID=6"),
        Example(UNKNOWN_HEADER_ADMISSION, 0, f"{notes}:HADM_ID=108:ROW_ID=13"),
    ]


def test_rerun_reads_the_cache_and_a_changed_input_rebuilds(tmp_path, monkeypatch):
    folder = write_mimic(tmp_path / "mimic")
    first = mimic.read_mimic(folder, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("mimic-mortality-*.jsonl"))) == 1

    def no_build(*args):
        raise AssertionError("rebuilt although the inputs did not change")

    monkeypatch.setattr(mimic, "build_mortality", no_build)
    assert mimic.read_mimic(folder, cache_dir=tmp_path / "cache") == first
    stat = (folder / "ADMISSIONS.csv").stat()
    os.utime(folder / "ADMISSIONS.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="rebuilt"):
        mimic.read_mimic(folder, cache_dir=tmp_path / "cache")


def test_missing_files_and_columns_are_named(tmp_path):
    with pytest.raises(DataError, match=r"no NOTEEVENTS\.csv\.gz or NOTEEVENTS\.csv"):
        mimic.read_mimic(tmp_path, cache_dir=tmp_path / "cache")
    folder = write_mimic(tmp_path / "m", note_columns=[c for c in NOTE_COLUMNS if c != "DESCRIPTION"])
    with pytest.raises(DataError, match=r"NOTEEVENTS\.csv\.gz: missing column\(s\) \['DESCRIPTION'\]"):
        mimic.read_mimic(folder, cache_dir=tmp_path / "cache")


def test_unknown_expire_flag_names_its_line(tmp_path):
    folder = write_mimic(tmp_path / "m", admissions=[(101, "EMERGENCY", 0), (102, "EMERGENCY", "yes")])
    with pytest.raises(DataError, match=r"ADMISSIONS\.csv:3: HOSPITAL_EXPIRE_FLAG is 'yes', expected 0 or 1"):
        mimic.read_mimic(folder, cache_dir=tmp_path / "cache")


def test_empty_and_non_utf8_files(tmp_path):
    folder = write_mimic(tmp_path / "m")
    (folder / "ADMISSIONS.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"ADMISSIONS\.csv: empty file"):
        mimic.read_mimic(folder, cache_dir=tmp_path / "cache")
    folder = write_mimic(tmp_path / "u")
    (folder / "ADMISSIONS.csv").write_bytes((folder / "ADMISSIONS.csv").read_bytes().replace(b"EMERGENCY", b"EMERG\xe9NCY"))
    with pytest.raises(DataError, match=r"ADMISSIONS\.csv: not valid UTF-8"):
        mimic.read_mimic(folder, cache_dir=tmp_path / "cache")


def test_no_usable_note_is_an_error(tmp_path):
    folder = write_mimic(tmp_path / "m", notes=[NOTES[7]])
    with pytest.raises(DataError, match="no discharge summary with admission sections"):
        mimic.read_mimic(folder, cache_dir=tmp_path / "cache")
