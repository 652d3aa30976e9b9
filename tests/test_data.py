"""Data layer on fixtures written in the real formats, checked against hand-derived expectations."""

import csv
import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from theseus_jax.data import mimic, readers
from theseus_jax.data.batching import BatchLoader, Encoded, bucket_length, encode, masking_config
from theseus_jax.data.cleaning import clean
from theseus_jax.data.masking import IGNORE_INDEX, MaskingConfig, gather_masked_positions, mask_tokens
from theseus_jax.data.records import DataError, Example
from theseus_jax.data.splits import stratified_split
from theseus_jax.data.statistics import dataset_statistics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "germeval2018"

# --- MIMIC-III ---------------------------------------------------------------------------

REPORT_100 = """Admission Date:  [**2151-7-16**]       Discharge Date:  [**2151-8-4**]

Service: MEDICINE

Chief Complaint:
Shortness of breath

History of Present Illness:
72 yo man with CHF presenting with
worsening dyspnea.

Past Medical History:
CHF, COPD

Medications on Admission:
Lasix 40 mg daily

Brief Hospital Course:
Diuresed, then died on hospital day 19.

Discharge Medications:
None
"""
ADDENDUM_100 = """Addendum:
Allergies: Penicillin
"""
REPORT_102 = """HISTORY OF PRESENT ILLNESS:  Elective knee replacement.
PHYSICAL EXAMINATION:  Afebrile. Lungs: clear.
Abdomen: soft.
HOSPITAL COURSE:  Uneventful.
SOCIAL HISTORY:  Lives alone.
"""
REPORT_103 = """Brief Hospital Course:
Transferred.
"""
REPORT_104 = """Chief Complaint:
Chest pain
Pertinent Results:
Troponin negative
"""

NOTE_FIELDS = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY", "DESCRIPTION", "CGID", "ISERROR", "TEXT"]
ADMISSION_FIELDS = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ADMITTIME", "DISCHTIME", "DEATHTIME", "ADMISSION_TYPE", "ADMISSION_LOCATION", "DISCHARGE_LOCATION", "INSURANCE", "LANGUAGE", "RELIGION", "MARITAL_STATUS", "ETHNICITY", "EDREGTIME", "EDOUTTIME", "DIAGNOSIS", "HOSPITAL_EXPIRE_FLAG", "HAS_CHARTEVENTS_DATA"]


def _note(row_id, hadm, date, category, description, text):
    return dict(zip(NOTE_FIELDS, [row_id, 1, hadm, date, "", "", category, description, "", "", text]))


def _write_csv(path, fields, rows):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, quoting=csv.QUOTE_NONNUMERIC)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def mimic_folder(tmp_path):
    notes = [
        _note(1, 100, "2151-08-04", "Discharge summary", "Report", REPORT_100),
        _note(2, 100, "2151-08-05", "Discharge summary", "Addendum", ADDENDUM_100),
        _note(3, 101, "2152-01-01", "Discharge summary", "Report", "Chief Complaint:\nNewborn\n"),  # NEWBORN
        _note(4, 102, "2153-02-02", "Discharge summary", "Report", REPORT_102),
        _note(5, 103, "2153-03-03", "Discharge summary", "Report", REPORT_103),  # no required section
        _note(6, 104, "2154-04-04", "Discharge summary", "Report", REPORT_104),  # duplicate text, older
        _note(7, 106, "2154-05-05", "Discharge summary", "Report", REPORT_104),  # duplicate text, latest
        _note(8, 105, "2154-06-06", "Discharge summary", "Report", ""),  # no TEXT
        _note(9, "", "2154-07-07", "Discharge summary", "Report", REPORT_100),  # no HADM_ID
        _note(10, 102, "2153-02-01", "Nursing", "Nursing note", "Chief Complaint:\nnursing text\n"),
    ]
    admissions = [
        dict.fromkeys(ADMISSION_FIELDS, "") | {"HADM_ID": h, "ADMISSION_TYPE": t, "HOSPITAL_EXPIRE_FLAG": f}
        for h, t, f in [(100, "EMERGENCY", 1), (101, "NEWBORN", 0), (102, "ELECTIVE", 0), (103, "URGENT", 0),
                        (104, "EMERGENCY", 0), (105, "EMERGENCY", 0), (106, "EMERGENCY", 1)]
    ]
    _write_csv(tmp_path / "NOTEEVENTS.csv.gz", NOTE_FIELDS, notes)
    _write_csv(tmp_path / "ADMISSIONS.csv", ADMISSION_FIELDS, admissions)
    return tmp_path


def test_mimic_keeps_exactly_the_expected_admissions(mimic_folder, tmp_path):
    examples = mimic.read_mimic(mimic_folder, cache_dir=tmp_path / "cache")
    kept = {e.source.split("HADM_ID ")[1].rstrip(")"): e for e in examples}
    assert sorted(kept) == ["100", "102", "106"]
    assert [kept[h].label for h in ("100", "102", "106")] == [1, 0, 1]
    assert kept["100"].text == (
        "Chief complaint: Shortness of breath\n"
        "Present illness: 72 yo man with CHF presenting with worsening dyspnea.\n"
        "Medical history: CHF, COPD\n"
        "Medications on admission: Lasix 40 mg daily\n"
        "Allergies: Penicillin"
    )
    assert kept["102"].text == (
        "Present illness: Elective knee replacement.\n"
        "Physical exam: Afebrile. Lungs: clear. Abdomen: soft.\n"
        "Social history: Lives alone."
    )
    assert kept["106"].text == "Chief complaint: Chest pain"
    # A rerun reads the cache; touching an input file invalidates it.
    assert mimic.read_mimic(mimic_folder, cache_dir=tmp_path / "cache") == examples
    assert len(list((tmp_path / "cache").glob("mimic-mortality-*.jsonl"))) == 1
    notes = mimic_folder / "NOTEEVENTS.csv.gz"
    os.utime(notes, ns=(notes.stat().st_atime_ns, notes.stat().st_mtime_ns + 10**9))
    assert mimic.read_mimic(mimic_folder, cache_dir=tmp_path / "cache") == examples
    assert len(list((tmp_path / "cache").glob("mimic-mortality-*.jsonl"))) == 2


def test_mimic_section_extraction_by_hand():
    note = "CHIEF COMPLAINT: fever\nReview of Systems:\nnegative\nFamily History: none\nSocial History:\nsmoker\nDischarge Diagnosis:\nsepsis\n"
    assert mimic.admission_sections(note) == {"chief complaint": "fever", "family history": "none", "social history": "smoker"}
    assert mimic.admission_text("Allergies: none\nHospital Course: ok\n") is None


def test_mimic_bad_input(tmp_path, mimic_folder):
    with pytest.raises(DataError, match="no NOTEEVENTS.csv"):
        mimic.read_mimic(tmp_path / "nothing")
    _write_csv(mimic_folder / "ADMISSIONS.csv", ["HADM_ID", "ADMISSION_TYPE"], [{"HADM_ID": 1, "ADMISSION_TYPE": "X"}])
    with pytest.raises(DataError, match=r"ADMISSIONS.csv: missing columns \['HOSPITAL_EXPIRE_FLAG'\]"):
        mimic.read_mimic(mimic_folder, cache_dir=tmp_path / "c2")


# --- GermEval, NOHATE, tables ------------------------------------------------------------


def test_germeval_reader(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("Du bist toll\tOTHER\tOTHER\n\nDu Idiot\tOFFENSE\tINSULT\n", encoding="utf-8")
    assert readers.read_germeval(path) == [
        Example("Du bist toll", 0, f"{path}:1"),
        Example("Du Idiot", 1, f"{path}:3"),
    ]
    path.write_text("ok\tOTHER\tOTHER\nbad\tOFFENCE\tX\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: unknown label 'OFFENCE'"):
        readers.read_germeval(path)
    path.write_text("no tab here\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:1: expected text<TAB>coarse label"):
        readers.read_germeval(path)
    path.write_bytes(b"caf\xe9\tOTHER\tOTHER\n")
    with pytest.raises(DataError, match="not valid UTF-8"):
        readers.read_germeval(path)
    with pytest.raises(DataError, match="no such file"):
        readers.read_germeval(tmp_path / "missing.txt")


def test_nohate_reader_maps_classes(tmp_path):
    path = tmp_path / "nohate.csv"
    path.write_text('id,comment,class\n1,"Hass, klar",hate\n2,"Nett\nzweizeilig",none\n3,Beleidigung,insult\n', encoding="utf-8")
    mapping = readers.parse_label_map("hate=1,insult=1,none=0")
    examples = readers.read_nohate(path, "comment", "class", mapping)
    assert [(e.text, e.label) for e in examples] == [("Hass, klar", 1), ("Nett\nzweizeilig", 0), ("Beleidigung", 1)]
    assert examples[2].source == f"{path}:5"  # line numbers count the embedded newline
    with pytest.raises(DataError, match=r"nohate.csv:5: unknown label 'insult'"):
        readers.read_nohate(path, "comment", "class", {"hate": 1, "none": 0})
    with pytest.raises(DataError, match="no column 'text'"):
        readers.read_nohate(path, "text", "class", mapping)
    with pytest.raises(DataError, match="label_map entry"):
        readers.parse_label_map("hate")


def test_jsonl_and_text_readers(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"body": "a", "y": 1}\n\n{"body": "b", "y": 0}\n{"body": "c"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d.jsonl:4: invalid JSON"):
        readers.read_table(jsonl, "body", "y")
    jsonl.write_text('{"body": "a", "y": 1}\n{"body": "b", "y": 0}\n', encoding="utf-8")
    assert [(e.text, e.label) for e in readers.read_table(jsonl, "body", "y")] == [("a", 1), ("b", 0)]
    text = tmp_path / "lm.txt"
    text.write_text("first\n\n  \nsecond\n", encoding="utf-8")
    assert [(e.text, e.label, e.source) for e in readers.read_nohate_lm(text)] == [
        ("first", None, f"{text}:1"), ("second", None, f"{text}:4")]
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no text"):
        readers.read_text_lines(tmp_path / "empty.txt")


# --- cleaning, splits, statistics --------------------------------------------------------


def test_cleaning_counts():
    ex = lambda t, y: Example(t, y, "f:1")
    examples = [ex("a", 1), ex("a", 1), ex("b", 0), ex("c", 1), ex("c", 0), ex("  ", 0), ex("", 1), ex("d", 0)]
    kept, report = clean(examples)
    assert [e.text for e in kept] == ["a", "b", "d"]
    assert (report.kept, report.empty, report.duplicates, report.conflicting) == (3, 2, 1, 2)


def test_stratified_split_keeps_class_shares():
    examples = [Example(f"t{i}", int(i < 300), f"f:{i}") for i in range(1000)]
    train, test, val = stratified_split(examples, 0.2, seed=1, validation_share=0.1)
    assert (len(train), len(test), len(val)) == (700, 200, 100)
    assert sum(e.label for e in test) == 60 and sum(e.label for e in val) == 30
    assert {e.text for e in train} | {e.text for e in test} | {e.text for e in val} == {e.text for e in examples}
    again = stratified_split(examples, 0.2, seed=1, validation_share=0.1)
    assert again == (train, test, val)
    assert stratified_split(examples, 0.2, seed=2)[1] != test
    with pytest.raises(DataError, match="bad split shares"):
        stratified_split(examples, 1.2)


def test_statistics_by_hand():
    examples = [Example("abcd", 1, "f:1"), Example("ab", 0, "f:2"), Example("abcdef", 0, "f:3")]
    stats = dataset_statistics(examples, [10, 3, 600], max_length=512)
    assert stats["count"] == 3 and stats["positives"] == 1 and stats["negatives"] == 2
    assert stats["characters"] == {"mean": 4.0, "std": pytest.approx(np.sqrt(8 / 3)), "median": 4.0, "min": 2.0, "max": 6.0}
    assert stats["truncated_share"] == pytest.approx(1 / 3)


# --- masking and batching ----------------------------------------------------------------

CONFIG = MaskingConfig(mask_token_id=4, vocab_size=1000, special_token_ids=(0, 1, 2))


def test_masking_rates_within_three_standard_errors():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, (400, 128)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
    attention = np.ones_like(ids)
    attention[:, 100:] = 0
    ids[:, 100:] = 0
    corrupted, labels = mask_tokens(ids, attention, CONFIG, np.random.default_rng(1))
    candidates = (attention > 0) & (ids > 2)
    selected = labels != IGNORE_INDEX
    assert not (selected & ~candidates).any()  # never special tokens or padding
    n = candidates.sum()
    rate = selected.sum() / n
    assert abs(rate - 0.15) < 3 * np.sqrt(0.15 * 0.85 / n)
    k = selected.sum()
    masked = (corrupted[selected] == 4).mean()
    unchanged = (corrupted[selected] == ids[selected]).mean()
    assert abs(masked - 0.8) < 3 * np.sqrt(0.8 * 0.2 / k)
    # unchanged = the 10% kept plus random draws that hit the same id (1/1000 of 10%)
    assert abs(unchanged - 0.1) < 3 * np.sqrt(0.1 * 0.9 / k) + 0.001
    assert np.array_equal(labels[selected], ids[selected])
    assert not (corrupted[~selected] != ids[~selected]).any()
    again = mask_tokens(ids, attention, CONFIG, np.random.default_rng(1))
    assert np.array_equal(again[0], corrupted) and np.array_equal(again[1], labels)


def test_gather_masked_positions():
    labels = np.full((2, 40), IGNORE_INDEX)
    labels[0, [3, 9]] = [11, 12]
    labels[1, list(range(20))] = np.arange(20)
    positions, gathered = gather_masked_positions(labels, multiple=16)
    assert positions.shape == (2, 32)
    assert list(positions[0, :2]) == [3, 9] and list(gathered[0, :3]) == [11, 12, IGNORE_INDEX]
    assert list(gathered[1, :20]) == list(range(20)) and (gathered[1, 20:] == IGNORE_INDEX).all()


def _encoded(lengths, max_length=64):
    return Encoded([np.arange(5, 5 + n, dtype=np.int32) for n in lengths], np.array(lengths), max_length)


def test_loader_buckets_covers_every_example_once_and_resumes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 64, 101)
    loader = BatchLoader(_encoded(lengths), np.arange(101) % 2, batch_size=8, buckets=(16, 32, 64), seed=3)
    assert loader.num_batches() == 13
    epoch0 = list(loader.batches(0))
    assert len(epoch0) == 13
    seen = np.concatenate([b["example_index"][b["example_mask"] > 0] for b in epoch0])
    assert sorted(seen) == list(range(101))
    for b in epoch0:
        real = b["example_index"] >= 0
        longest = lengths[b["example_index"][real]].max()
        assert b["input_ids"].shape == (8, bucket_length(longest, (16, 32, 64)))
        assert (b["attention_mask"].sum(1)[real] == lengths[b["example_index"][real]]).all()
        assert list(b["labels"][real]) == list(b["example_index"][real] % 2)
    padding = sum((b["input_ids"].size - b["attention_mask"].sum()) for b in epoch0) / sum(b["input_ids"].size for b in epoch0)
    unbucketed = 1 - lengths.sum() / (13 * 8 * 64)
    assert padding < unbucketed  # bucketing wastes less than padding to 64
    resumed = list(loader.batches(0, start_batch=5))
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(resumed, epoch0[5:]))
    epoch1 = list(loader.batches(1))
    assert not all(np.array_equal(a["example_index"], b["example_index"]) for a, b in zip(epoch0, epoch1))


def test_mlm_loader_is_deterministic_per_epoch():
    loader = BatchLoader(_encoded([30] * 20), None, batch_size=4, buckets=(32, 64), seed=0, masking=CONFIG)
    first, again = list(loader.batches(2)), list(loader.batches(2))
    for a, b in zip(first, again):
        assert np.array_equal(a["input_ids"], b["input_ids"]) and np.array_equal(a["labels"], b["labels"])
        assert a["masked_positions"].shape == a["labels"].shape
    assert "labels" in first[0] and first[0]["labels"].shape[1] % 16 == 0


def test_encode_truncates_with_sep_and_keeps_full_lengths(tmp_path):
    from theseus_jax.tokenization import load_tokenizer, packaged_model_dir

    tokenizer = load_tokenizer(packaged_model_dir())
    texts = ["hello world", "word " * 100]
    encoded = encode(texts, tokenizer, max_length=16, cache_dir=tmp_path)
    assert list(encoded.ids[0]) == tokenizer("hello world")["input_ids"]
    assert len(encoded.ids[1]) == 16 and encoded.ids[1][-1] == tokenizer.sep_token_id
    assert encoded.full_lengths[1] == 102
    cached = encode(texts, tokenizer, max_length=16, cache_dir=tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(cached.ids, encoded.ids))
    config = masking_config(tokenizer)
    assert {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id} <= set(config.special_token_ids)


@pytest.mark.data
@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/germeval2018 is not present")
def test_real_germeval_2018_counts():
    train = readers.read_germeval(SHARED / "germeval2018.training.txt")
    test = readers.read_germeval(SHARED / "germeval2018.test.txt")
    assert (len(train), sum(e.label for e in train)) == (5009, 1688)
    assert (len(test), sum(e.label for e in test)) == (3532, 1202)
