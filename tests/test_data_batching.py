"""Bucketed batches: shapes, coverage, padding rows, resumption, MLM masking rates, tokenisation cache."""

from __future__ import annotations

import numpy as np
import pytest

from theseus_jax.data import encoding
from theseus_jax.data.batching import BatchLoader, bucket_length
from theseus_jax.data.encoding import Encoded, encode
from theseus_jax.data.masking import IGNORE_INDEX, MaskingConfig, masking_config

CLS, SEP, PAD, MASK = 101, 102, 0, 103


def make_encoded(lengths, max_length=512, seed=0) -> Encoded:
    """[CLS] w ... w [SEP] with word ids in 1000..1999, one sequence per length."""
    rng = np.random.default_rng(seed)
    ids = [np.concatenate([[CLS], rng.integers(1000, 2000, n - 2), [SEP]]).astype(np.int32) for n in lengths]
    return Encoded(ids, np.array(lengths, np.int32), max_length)


def test_bucket_length():
    assert [bucket_length(n, (32, 64, 128)) for n in (1, 32, 33, 128)] == [32, 32, 64, 128]
    with pytest.raises(ValueError, match="129 tokens exceeds the largest bucket 128"):
        bucket_length(129, (32, 64, 128))


def test_batches_group_similar_lengths_into_small_buckets():
    # 32 tweets of 10 tokens and 32 texts of 200, shuffled together, batch 8: sorted pools
    # give 4 batches padded to 32 and 4 padded to 256, nothing longer.
    lengths = [10, 200] * 32
    loader = BatchLoader(make_encoded(lengths), np.zeros(64, np.int32), batch_size=8, seed=3)
    shapes = sorted(b["input_ids"].shape for b in loader.batches(0))
    assert shapes == [(8, 32)] * 4 + [(8, 256)] * 4
    fixed = BatchLoader(make_encoded(lengths), np.zeros(64, np.int32), batch_size=8, buckets=(512,))
    assert {b["input_ids"].shape for b in fixed.batches(0)} == {(8, 512)}


def test_every_example_once_per_epoch_with_its_label_and_padding_rows_marked():
    lengths = [5, 9, 33, 4, 70, 12, 7, 3, 40, 6]
    labels = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 0], np.int32)
    encoded = make_encoded(lengths)
    loader = BatchLoader(encoded, labels, batch_size=4, seed=1)
    batches = list(loader.batches(0))
    assert loader.num_batches(0) == 3 == len(batches)
    seen = []
    for batch in batches:
        assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "example_mask", "example_index"}
        assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["labels"].dtype == np.int32
        assert batch["example_mask"].dtype == np.float32 and batch["labels"].shape == (4,)
        assert not batch["token_type_ids"].any()
        for row, i in enumerate(batch["example_index"]):
            if i < 0:
                assert batch["example_mask"][row] == 0 and not batch["attention_mask"][row].any()
                assert (batch["input_ids"][row] == PAD).all()
                continue
            seen.append(i)
            assert batch["example_mask"][row] == 1 and batch["labels"][row] == labels[i]
            n = lengths[i]
            np.testing.assert_array_equal(batch["input_ids"][row, :n], encoded.ids[i])
            assert batch["attention_mask"][row].sum() == n and (batch["input_ids"][row, n:] == PAD).all()
    assert sorted(seen) == list(range(10))
    assert sum(b["example_mask"].sum() for b in batches) == 10


def test_drop_remainder_serves_only_full_batches():
    loader = BatchLoader(make_encoded([5] * 10), np.zeros(10, np.int32), batch_size=4, drop_remainder=True)
    batches = list(loader.batches(0))
    assert loader.num_batches(0) == 2 == len(batches)
    assert all(b["example_mask"].tolist() == [1, 1, 1, 1] for b in batches)


def test_shuffling_depends_on_seed_and_epoch_only():
    encoded = make_encoded(list(range(3, 103)))

    def order(seed, epoch):
        loader = BatchLoader(encoded, None, batch_size=8, seed=seed, pool_batches=2)
        return np.concatenate([b["example_index"] for b in loader.batches(epoch)]).tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    evaluation = BatchLoader(encoded, None, batch_size=8, shuffle=False)
    assert [i for b in evaluation.batches(0) for i in b["example_index"] if i >= 0] == list(range(100))


def test_resuming_mid_epoch_serves_the_same_batches_as_an_uninterrupted_run():
    encoded = make_encoded(list(range(3, 60)) * 2)
    config = MaskingConfig(mask_token_id=MASK, vocab_size=2000, special_token_ids=(PAD, CLS, SEP))

    def loader():
        return BatchLoader(encoded, None, batch_size=8, seed=5, masking=config, pool_batches=3)

    uninterrupted = [b for epoch in range(2) for b in loader().batches(epoch)]
    first = loader()
    taken = []
    for batch in first:  # epoch 0, then stop after 6 batches of epoch 1
        taken.append(batch)
    for batch in first:
        taken.append(batch)
        if len(taken) == first.num_batches(0) + 6:
            break
    state = first.state()
    assert state == {"epoch": 1, "batch": 6}
    second = loader()
    second.restore(state)
    taken += list(second)
    assert second.state() == {"epoch": 2, "batch": 0}
    assert len(taken) == len(uninterrupted)
    for a, b in zip(taken, uninterrupted):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    resumed = list(loader().batches(1, start_batch=6))
    np.testing.assert_array_equal(resumed[0]["input_ids"], uninterrupted[first.num_batches(0) + 6]["input_ids"])


def test_mlm_labels_are_the_original_ids_at_selected_positions_only():
    encoded = make_encoded([30, 17, 5, 64] * 4)
    config = MaskingConfig(mask_token_id=MASK, vocab_size=2000, special_token_ids=(PAD, CLS, SEP), probability=0.5)
    for batch in BatchLoader(encoded, None, batch_size=8, masking=config).batches(0):
        labels, ids, example = batch["labels"], batch["input_ids"], batch["example_index"]
        assert labels.shape == ids.shape and labels.dtype == np.int32
        original = np.zeros_like(ids)
        for row, i in enumerate(example):
            original[row, : len(encoded.ids[i])] = encoded.ids[i]
        selected = labels != IGNORE_INDEX
        np.testing.assert_array_equal(labels[selected], original[selected])
        assert not np.isin(original[selected], [PAD, CLS, SEP]).any()  # never special tokens or padding
        np.testing.assert_array_equal(ids[~selected], original[~selected])
        assert selected.any()


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_gathered_mlm_positions_point_at_the_labels(micro_batches):
    """Scattering the gathered labels back through their flat positions (into each
    micro-batch's rows i, i + m, ...) rebuilds the full label matrix; the slots per row are
    the micro-batch's labelled count spread over its rows, rounded up to 4."""
    encoded = make_encoded([30, 17, 5, 64, 40, 9, 60, 33])
    config = MaskingConfig(mask_token_id=MASK, vocab_size=2000, special_token_ids=(PAD, CLS, SEP))
    full = next(BatchLoader(encoded, None, batch_size=8, masking=config).batches(0))
    gathered = next(BatchLoader(encoded, None, batch_size=8, masking=config, gather_masked=True,
                                micro_batches=micro_batches).batches(0))
    labels, length = full["labels"], full["labels"].shape[1]
    rows = 8 // micro_batches
    counts = [(labels[i::micro_batches] != IGNORE_INDEX).sum() for i in range(micro_batches)]
    width = gathered["masked_positions"].shape[1]
    assert gathered["labels"].shape == (8, width) and width == 4 * int(np.ceil(max(counts) / (4 * rows)))
    rebuilt = np.full_like(labels, IGNORE_INDEX)
    for i in range(micro_batches):
        positions, values = gathered["masked_positions"][i::micro_batches].ravel(), gathered["labels"][i::micro_batches].ravel()
        real = values != IGNORE_INDEX
        assert real.sum() == counts[i]
        micro = rebuilt[i::micro_batches].reshape(-1)
        micro[positions[real]] = values[real]
        rebuilt[i::micro_batches] = micro.reshape(rows, length)
    np.testing.assert_array_equal(rebuilt, labels)


def test_masking_rates_within_three_standard_errors():
    # 2,000 sequences x 126 maskable tokens: 15% selected; of those 80% [MASK], 10% random, 10% kept.
    vocab = 5000
    encoded = make_encoded([128] * 2000)
    config = MaskingConfig(mask_token_id=MASK, vocab_size=vocab, special_token_ids=(PAD, CLS, SEP))
    selected = masked = kept = random = candidates = 0
    for batch in BatchLoader(encoded, None, batch_size=250, masking=config, seed=11).batches(0):
        original = np.stack([encoded.ids[i] for i in batch["example_index"]])
        labels, ids = batch["labels"], batch["input_ids"]
        assert (labels[:, [0, -1]] == IGNORE_INDEX).all()  # [CLS] and [SEP]
        chosen = labels != IGNORE_INDEX
        candidates += original.shape[0] * (original.shape[1] - 2)
        selected += chosen.sum()
        masked += (ids[chosen] == MASK).sum()
        kept += (ids[chosen] == original[chosen]).sum()
        random += ((ids[chosen] != MASK) & (ids[chosen] != original[chosen])).sum()

    def within(count, total, p):
        return abs(count / total - p) <= 3 * np.sqrt(p * (1 - p) / total)

    # A random draw hits [MASK] or the original id with probability 1/vocab each.
    assert within(selected, candidates, 0.15)
    assert within(masked, selected, 0.8 + 0.1 / vocab)
    assert within(kept, selected, 0.1 + 0.1 / vocab)
    assert within(random, selected, 0.1 * (1 - 2 / vocab))


def test_masking_is_deterministic_given_seed_and_epoch():
    encoded = make_encoded([40] * 16)
    config = MaskingConfig(mask_token_id=MASK, vocab_size=2000, special_token_ids=(PAD, CLS, SEP))

    def labels(seed, epoch):
        loader = BatchLoader(encoded, None, batch_size=16, seed=seed, masking=config)
        return next(loader.batches(epoch))["labels"]

    np.testing.assert_array_equal(labels(0, 0), labels(0, 0))
    assert (labels(0, 0) != labels(0, 1)).any() and (labels(0, 0) != labels(1, 0)).any()


def test_loader_rejects_bad_arguments():
    encoded = make_encoded([5, 6])
    config = MaskingConfig(mask_token_id=MASK, vocab_size=2000, special_token_ids=(PAD,))
    with pytest.raises(ValueError, match="3 labels for 2 texts"):
        BatchLoader(encoded, np.zeros(3), batch_size=2)
    with pytest.raises(ValueError, match="not both"):
        BatchLoader(encoded, np.zeros(2), batch_size=2, masking=config)
    with pytest.raises(ValueError, match="no batches"):
        BatchLoader(encoded, None, batch_size=4, drop_remainder=True)
    with pytest.raises(ValueError, match="no examples"):
        BatchLoader(Encoded([], np.zeros(0, np.int32), 512), None, batch_size=4)


# --- Tokenisation with the packaged fast tokenizer --------------------------------------


@pytest.fixture(scope="module")
def tokenizer(packaged_model_dir):
    from theseus_jax.tokenization import load_tokenizer

    return load_tokenizer(packaged_model_dir)


def test_encode_truncates_keeping_sep_and_records_full_lengths(tokenizer):
    texts = ["hello world", "word " * 40]
    encoded = encode(texts, tokenizer, max_length=16)
    words = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    assert encoded.ids[0].tolist() == [tokenizer.cls_token_id, *words, tokenizer.sep_token_id]
    assert encoded.full_lengths.tolist() == [4, 42]
    assert len(encoded.ids[1]) == 16 and encoded.ids[1][-1] == tokenizer.sep_token_id
    # The caller's tokenizer keeps its own truncation settings.
    assert tokenizer("word " * 40, truncation=True, max_length=8)["input_ids"][-1] == tokenizer.sep_token_id


def test_encode_cache_is_reused(tokenizer, tmp_path, monkeypatch):
    texts = ["ein kurzer text", "noch einer, etwas länger als der erste"]
    first = encode(texts, tokenizer, 32, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tokens-*.npz"))) == 1

    class NoTokenizer:
        @staticmethod
        def from_str(definition):
            raise AssertionError("tokenised again")

    monkeypatch.setattr(encoding, "Tokenizer", NoTokenizer)
    second = encode(texts, tokenizer, 32, cache_dir=tmp_path)
    assert [x.tolist() for x in second.ids] == [x.tolist() for x in first.ids]
    np.testing.assert_array_equal(second.full_lengths, first.full_lengths)
    with pytest.raises(AssertionError, match="tokenised again"):
        encode(texts, tokenizer, 64, cache_dir=tmp_path)  # another max length is another key


def test_masking_config_from_tokenizer(tokenizer):
    config = masking_config(tokenizer)
    assert config.mask_token_id == tokenizer.mask_token_id == 103
    assert {0, 100, 101, 102, 103} <= set(config.special_token_ids)
    assert config.vocab_size == 30522 and config.probability == 0.15
