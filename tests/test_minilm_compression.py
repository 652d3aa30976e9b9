"""A short MLM compression run of the packaged all-MiniLM-L6-v2 (6 -> 3) on real English text.

The text is scikit-learn's dataset descriptions (human-written prose shipped with the
package), so the test needs no download and no ../shared data.
"""

from pathlib import Path

import jax
import numpy as np
import pytest

from theseus_jax.compression import schedules, theseus
from theseus_jax.convert import load_hf_checkpoint, save_hf_checkpoint
from theseus_jax.data.batching import BatchLoader
from theseus_jax.data.encoding import encode
from theseus_jax.data.masking import masking_config
from theseus_jax.tokenization import load_tokenizer, packaged_model_dir
from theseus_jax.training import optimizer, steps


def _paragraphs() -> list[str]:
    import sklearn

    texts = []
    for path in sorted((Path(sklearn.__file__).parent / "datasets" / "descr").glob("*.rst")):
        for block in path.read_text(encoding="utf-8").split("\n\n"):
            text = " ".join(block.split())
            if len(text) > 80 and not text.startswith(("..", "=", "|", ":")):
                texts.append(text)
    return texts


@pytest.mark.slow  # 30-90 s; the default suite stays under 15 minutes on 2 cores
def test_mlm_compression_lowers_successor_loss_and_exports_to_transformers(tmp_path, torch):
    transformers = pytest.importorskip("transformers")
    model_dir = packaged_model_dir()
    tokenizer = load_tokenizer(model_dir, 64)
    texts = _paragraphs()
    assert len(texts) > 100
    train_texts, eval_texts = texts[: len(texts) - 32], texts[-32:]
    masking = masking_config(tokenizer)
    train = BatchLoader(encode(train_texts, tokenizer, 64), None, 16, tokenizer.pad_token_id, (64,), seed=0, masking=masking, gather_masked=True)
    held_out = BatchLoader(encode(eval_texts, tokenizer, 64), None, 16, tokenizer.pad_token_id, (64,), shuffle=False, masking=masking)

    config, pred_params = load_hf_checkpoint(model_dir, head="mlm")  # no MLM head shipped: initialised
    params = theseus.init_theseus_params(pred_params, config, 3, init_offset=0)
    model = theseus.theseus_model(config, "mlm", 3)
    # The MLM head starts random, so it trains beside the successor.
    tx, mask = optimizer.make_optimizer(params, "successor_embeddings_heads", 2e-4)
    total = 40
    step = jax.jit(steps.make_train_step(model, tx, mask, "mlm", steps.Compression(schedules.curriculum_schedule(0.3, total_steps=total), 3)))
    evaluate = jax.jit(steps.make_eval_step(model, "mlm"))

    def held_out_loss(p):
        sums = [jax.device_get(evaluate(p, b)) for b in held_out.batches(0)]
        return sum(float(s["loss_sum"]) for s in sums) / sum(float(s["count"]) for s in sums)

    before = held_out_loss(params)
    successor_before = jax.tree.map(np.asarray, params["bert"]["encoder"]["successor_1"])
    state = steps.create_train_state(params, tx)
    rng = jax.random.key(0)
    done = 0
    while done < total:
        for batch in train.batches(done // train.num_batches()):
            state, metrics = step(state, batch, rng)
            done += 1
            if done == total:
                break
    after = held_out_loss(state.params)
    assert after < before - 1.0, (before, after)
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), successor_before, jax.tree.map(np.asarray, state.params["bert"]["encoder"]["successor_1"]))
    assert all(jax.tree.leaves(moved))

    # Export the successor; transformers loads it and computes the same logits.
    succ_config, succ_params = theseus.extract_successor(config, jax.device_get(state.params))
    save_hf_checkpoint(succ_config, succ_params, tmp_path / "successor", tokenizer_dir=model_dir)
    hf, info = transformers.BertForMaskedLM.from_pretrained(tmp_path / "successor", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert hf.config.num_hidden_layers == 3
    batch = tokenizer(eval_texts[:4], padding=True, truncation=True, max_length=64, return_tensors="np")
    ours = np.asarray(model.apply({"params": state.params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
    with torch.inference_mode():
        theirs = hf.eval()(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    real = batch["attention_mask"].astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() <= 1e-4
