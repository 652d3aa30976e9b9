"""Layer-by-layer comparison of a predecessor and its compressed successor.

For the same texts, module i's output in the predecessor (hidden state after layer
(i+1)*r) is compared with successor layer i's output: linear CKA for every pair (a
heatmap whose diagonal is high when the successor learned its predecessor), mean cosine
similarity per module over real tokens, and how often the two MLM heads predict the
same token.

    python -m theseus_jax.analysis.layers --predecessor runs/demo/lm_baseline/best \
        --successor runs/demo/lm_compress/best --texts notes.txt --out runs/demo/layers
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from theseus_jax import atomic
from theseus_jax.analysis.similarity import linear_cka, mean_cosine
from theseus_jax.compression.theseus import module_size
from theseus_jax.data.generic import read_text_lines
from theseus_jax.errors import ArgumentParser, run_cli
from theseus_jax.models.bert import BertConfig, BertForMaskedLM, BertModel

Params = dict[str, Any]


def _states_and_predictions(config: BertConfig, params: Params, batch: dict[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Every layer's hidden states (input first) and the MLM argmax, at real tokens only."""
    real = batch["attention_mask"].astype(bool)
    outputs = BertModel(config, add_pooling_layer=False).apply(
        {"params": {k: v for k, v in params["bert"].items() if k != "pooler"}},
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], output_hidden_states=True,
    )
    logits = BertForMaskedLM(config).apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    states = [np.asarray(h)[real] for h in outputs.hidden_states]
    return states, np.asarray(logits.argmax(-1))[real]


def compare_layers(
    predecessor: tuple[BertConfig, Params],
    successor: tuple[BertConfig, Params],
    batches: Sequence[dict[str, np.ndarray]],
) -> dict[str, Any]:
    """CKA matrix [module, successor layer], per-module cosine, MLM agreement."""
    (pred_cfg, pred_params), (succ_cfg, succ_params) = predecessor, successor
    r = module_size(pred_cfg.num_hidden_layers, succ_cfg.num_hidden_layers)
    n = succ_cfg.num_hidden_layers
    pred_states: list[list[np.ndarray]] = [[] for _ in range(n)]
    succ_states: list[list[np.ndarray]] = [[] for _ in range(n)]
    agree, total = 0, 0
    for batch in batches:
        p_states, p_pred = _states_and_predictions(pred_cfg, pred_params, batch)
        s_states, s_pred = _states_and_predictions(succ_cfg, succ_params, batch)
        for i in range(n):
            pred_states[i].append(p_states[(i + 1) * r])
            succ_states[i].append(s_states[i + 1])
        agree += int((p_pred == s_pred).sum())
        total += p_pred.size
    pred_cat = [np.concatenate(s) for s in pred_states]
    succ_cat = [np.concatenate(s) for s in succ_states]
    cka = [[linear_cka(pred_cat[i], succ_cat[j]) for j in range(n)] for i in range(n)]
    return {
        "module_size": r,
        "cka": cka,
        "cosine": [mean_cosine(pred_cat[i], succ_cat[i]) for i in range(n)],
        "mlm_agreement": agree / max(total, 1),
        "tokens": total,
    }


def plot_comparison(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cka = np.asarray(result["cka"])
    n = cka.shape[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    image = left.imshow(cka, vmin=0, vmax=1, cmap="viridis")
    for i in range(n):
        for j in range(n):
            left.text(j, i, f"{cka[i, j]:.2f}", ha="center", va="center", color="w" if cka[i, j] < 0.6 else "k", fontsize=8)
    left.set(xlabel="successor layer", ylabel="predecessor module", title="linear CKA", xticks=range(n), yticks=range(n))
    fig.colorbar(image, ax=left, fraction=0.046)
    right.plot(range(n), np.diag(cka), marker="o", label="CKA (diagonal)")
    right.plot(range(n), result["cosine"], marker="s", label="mean cosine")
    right.set(xlabel="module", ylim=(0, 1.05), title=f"MLM agreement {result['mlm_agreement']:.1%}", xticks=range(n))
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    from theseus_jax.convert import load_hf_checkpoint
    from theseus_jax.tokenization import load_tokenizer

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predecessor", required=True, help="HF checkpoint folder or Hub ID of the predecessor")
    parser.add_argument("--successor", required=True, help="HF checkpoint folder or Hub ID of the successor")
    parser.add_argument("--texts", required=True, help="text file, one text per line")
    parser.add_argument("--out", required=True, help="output folder for layers.json and layers.png")
    parser.add_argument("--max-texts", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args(argv)
    texts = [e.text for e in read_text_lines(args.texts)][: args.max_texts]
    tokenizer = load_tokenizer(args.predecessor, args.max_length)
    batches = []
    for start in range(0, len(texts), 32):
        enc = tokenizer(texts[start : start + 32], truncation=True, max_length=args.max_length, padding="max_length", return_tensors="np")
        enc.setdefault("token_type_ids", np.zeros_like(enc["input_ids"]))  # RoBERTa-style tokenizers omit them
        batches.append({k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")})
    result = compare_layers(
        load_hf_checkpoint(args.predecessor, head="mlm"), load_hf_checkpoint(args.successor, head="mlm"), batches
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "layers.json", json.dumps(result, indent=2))
    plot_comparison(result, out / "layers.png")
    print(json.dumps({k: result[k] for k in ("cosine", "mlm_agreement")}, indent=2))


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m theseus_jax.analysis.layers"))
