"""Inference speed: predecessor vs successor (speedup n@hw), and JAX vs Hugging Face PyTorch.

Part 1 (JAX): for short (tweets), medium and long (clinical-note length) texts and batch
sizes n, time the whole chain (tokenisation, padding to the bucket, device transfer,
forward, probabilities back on the host) and the forward pass alone, for a
predecessor and its successor: bert-base shape 12 -> 6 (random weights) and the packaged
all-MiniLM-L6-v2 6 -> 3. Cases run interleaved (predecessor, successor, ...); speedup is
the median of paired ratios.

Part 2 (frameworks): bert-base 12 layers, forward only, fixed sequence length, our jitted
JAX forward against transformers' eager `BertForSequenceClassification` with the same
weights under `torch.inference_mode`, same thread count; each framework in its own
subprocess (their thread pools would fight), alternating, repeated.

    python -m benchmarks.bench_inference --output BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
GERMEVAL_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "germeval2018" / "germeval2018.test.txt"


def encoder_gflops(layers: int, hidden: int, intermediate: int, length: int) -> float:
    """Forward FLOPs of the encoder per sequence (projections, FFN, attention scores/context)."""
    per_layer = 2 * length * (4 * hidden * hidden + 2 * hidden * intermediate) + 4 * length * length * hidden
    return layers * per_layer / 1e9


def text_sets(seed: int = 0) -> dict[str, list[str]]:
    """Tweets (GermEval 2018 test texts when ../shared/data is present, else generated),
    medium comments (~4 tweets) and long notes (~25 tweets, past 512 tokens)."""
    if GERMEVAL_TEST.exists():
        tweets = [line.split("\t")[0] for line in GERMEVAL_TEST.read_text(encoding="utf-8").splitlines() if line.strip()]
        source = "GermEval 2018 test tweets"
    else:
        rng = np.random.default_rng(seed)
        words = "the of and to in is that it for was on are with as his they be at one have this from".split()
        tweets = [" ".join(rng.choice(words, rng.integers(8, 30))) for _ in range(2000)]
        source = "generated word sequences"
    rng = np.random.default_rng(seed)
    join = lambda k: [" ".join(rng.choice(tweets, k)) for _ in range(256)]
    return {"tweets": tweets[:256], "medium": join(4), "long": join(25), "_source": source}


def _time(fn: Callable[[], object], budget_s: float, max_reps: int = 100) -> list[float]:
    """Per-call seconds after one warm-up call: at least 3 reps, up to the budget or max_reps."""
    fn()
    times: list[float] = []
    while len(times) < 3 or (sum(times) < budget_s and len(times) < max_reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def part1(model_pairs, batch_sizes, sets, budget_s) -> list[dict]:
    rows = []
    for pair_name, predictors in model_pairs:
        for set_name, texts in sets.items():
            for n in batch_sizes:
                batch = texts[:n]
                encoded = {role: p.encode(batch) for role, p in predictors.items()}
                timings = {role: {"chain": [], "forward": []} for role in predictors}
                rounds: dict[str, list[float]] = {"chain": [], "forward": []}  # paired ratios per round
                for _ in range(3):  # interleave predecessor and successor
                    means = {}
                    for role, p in predictors.items():
                        for mode, fn in (("chain", lambda: p.predict_proba(batch, batch_size=n)),
                                         ("forward", lambda: p.forward(*encoded[role]))):
                            ts = _time(fn, budget_s / 3)
                            timings[role][mode] += ts
                            means[role, mode] = statistics.mean(ts)
                    for mode in rounds:
                        rounds[mode].append(means["predecessor", mode] / means["successor", mode])
                row = {"models": pair_name, "texts": set_name, "n": n, "seq_len": int(encoded["predecessor"][0].shape[1])}
                for role in predictors:
                    for mode in ("chain", "forward"):
                        ts = timings[role][mode]
                        row[f"{role}_{mode}_ms"] = 1e3 * statistics.mean(ts)
                        row[f"{role}_{mode}_std_ms"] = 1e3 * statistics.pstdev(ts)
                for mode in rounds:
                    row[f"speedup_{mode}"] = statistics.median(rounds[mode])
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def build_pairs(minilm: bool, bert_base: bool):
    """(name, {predecessor: Predictor, successor: Predictor}) with successor = layers 0, 2, 4, ..."""
    import jax
    import jax.numpy as jnp

    from theseus_jax.compression import theseus
    from theseus_jax.inference import Predictor
    from theseus_jax.models.bert import BertConfig, BertForSequenceClassification
    from theseus_jax.tokenization import packaged_model_dir

    folder = packaged_model_dir()
    pairs = []

    def pair(name, config, params, n):
        successor = theseus.extract_successor(config, theseus.init_theseus_params(params, config, n))
        pairs.append((name, {
            "predecessor": Predictor(folder, config=config, params=params),
            "successor": Predictor(folder, config=successor[0], params=successor[1]),
        }))

    if bert_base:
        config = BertConfig()
        params = BertForSequenceClassification(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
        pair("bert-base 12->6 (random weights)", config, params, 6)
    if minilm:
        from theseus_jax.convert import load_hf_checkpoint

        config, params = load_hf_checkpoint(folder, head="classification")
        pair("all-MiniLM-L6-v2 6->3", config, params, 3)
    return pairs


# --- part 2: JAX vs PyTorch, each in its own process -----------------------------------


def worker(framework: str, model_dir: str, cases: list[list[int]], budget_s: float) -> None:
    """Prints {"n,L": [seconds per call...]} for a fixed-length forward pass."""
    rng = np.random.default_rng(0)
    out = {}
    if framework == "torch":
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count() or 1)
        model = transformers.BertForSequenceClassification.from_pretrained(model_dir).eval()
        for n, length in cases:
            ids = torch.from_numpy(rng.integers(1000, 30000, (n, length)))
            mask = torch.ones_like(ids)

            def run():
                with torch.inference_mode():
                    model(input_ids=ids, attention_mask=mask).logits.numpy()

            out[f"{n},{length}"] = _time(run, budget_s)
    else:
        from theseus_jax.inference import Predictor

        predictor = Predictor(model_dir)
        for n, length in cases:
            ids = rng.integers(1000, 30000, (n, length)).astype(np.int32)
            mask = np.ones_like(ids)
            out[f"{n},{length}"] = _time(lambda: predictor.forward(ids, mask), budget_s)
    print(json.dumps(out))


def part2(cases: list[list[int]], rounds: int, budget_s: float) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from theseus_jax.convert import save_hf_checkpoint
    from theseus_jax.models.bert import BertConfig, BertForSequenceClassification
    from theseus_jax.tokenization import packaged_model_dir

    config = BertConfig()
    params = BertForSequenceClassification(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_hf_checkpoint(config, jax.device_get(params), Path(tmp) / "bert-base", tokenizer_dir=packaged_model_dir())
        times: dict[str, dict[str, list[float]]] = {"jax": {}, "torch": {}}
        for _ in range(rounds):
            for framework in ("jax", "torch"):
                result = subprocess.run(
                    [sys.executable, "-m", "benchmarks.bench_inference", "--worker", framework, "--model-dir", str(folder),
                     "--cases", json.dumps(cases), "--budget", str(budget_s)],
                    capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
                )
                for key, ts in json.loads(result.stdout.strip().splitlines()[-1]).items():
                    times[framework].setdefault(key, []).append(statistics.median(ts))
    rows = []
    for n, length in cases:
        key = f"{n},{length}"
        jax_s, torch_s = times["jax"][key], times["torch"][key]
        gflop = n * encoder_gflops(12, 768, 3072, length)
        rows.append({
            "n": n, "seq_len": length,
            "jax_ms": 1e3 * statistics.median(jax_s), "torch_ms": 1e3 * statistics.median(torch_s),
            "jax_seq_per_s": n / statistics.median(jax_s), "torch_seq_per_s": n / statistics.median(torch_s),
            "jax_gflops": gflop / statistics.median(jax_s), "torch_gflops": gflop / statistics.median(torch_s),
            "jax_over_torch_throughput": statistics.median(t / j for j, t in zip(jax_s, torch_s)),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(r["models"] for r in rows))
    sets = list(dict.fromkeys(r["texts"] for r in rows))
    fig, axes = plt.subplots(len(pairs), len(sets) + 1, figsize=(4 * (len(sets) + 1), 3.2 * len(pairs)), squeeze=False)
    for i, pair in enumerate(pairs):
        for j, name in enumerate(sets):
            chosen = [r for r in rows if r["models"] == pair and r["texts"] == name]
            ns = [r["n"] for r in chosen]
            for role, style in (("predecessor", "o-"), ("successor", "s-")):
                axes[i, j].errorbar(ns, [r[f"{role}_chain_ms"] for r in chosen], [r[f"{role}_chain_std_ms"] for r in chosen], fmt=style, label=f"{role} (whole chain)", capsize=2)
            axes[i, j].set(xscale="log", yscale="log", xlabel="batch size n", ylabel="ms per batch", title=f"{pair}\n{name}")
            axes[i, j].grid(alpha=0.3)
            axes[i, j].legend(fontsize=7)
            ax = axes[i, -1]
            ax.plot(ns, [r["speedup_chain"] for r in chosen], marker="o", label=f"{name}")
        axes[i, -1].axhline(2.0, color="grey", lw=0.8, ls="--")
        axes[i, -1].set(xscale="log", xlabel="batch size n", ylabel="speedup (whole chain)", title=f"{pair}: speedup n@cpu")
        axes[i, -1].grid(alpha=0.3)
        axes[i, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(part1_rows: list[dict], part2_rows: list[dict], meta: dict) -> str:
    lines = [
        f"Machine: {meta['machine']}; {meta['threads']} threads; texts: {meta['texts']}.",
        "Whole chain = tokenisation + padding to the bucket + transfer + forward + probabilities on the host. "
        "Times are means (± std) per batch; speedup = median of paired predecessor/successor ratios.",
        "",
        "| models | texts | n | seq | predecessor chain ms | successor chain ms | speedup chain | predecessor forward ms | successor forward ms | speedup forward |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in part1_rows:
        lines.append(
            f"| {r['models']} | {r['texts']} | {r['n']} | {r['seq_len']} | {r['predecessor_chain_ms']:.1f} ± {r['predecessor_chain_std_ms']:.1f} | "
            f"{r['successor_chain_ms']:.1f} ± {r['successor_chain_std_ms']:.1f} | {r['speedup_chain']:.2f} | "
            f"{r['predecessor_forward_ms']:.1f} | {r['successor_forward_ms']:.1f} | {r['speedup_forward']:.2f} |"
        )
    if part2_rows:
        lines += [
            "",
            "JAX (jitted) vs Hugging Face PyTorch eager, bert-base 12 layers, same weights, forward only, fixed length, "
            "each framework in its own process, alternating:",
            "",
            "| n | seq | JAX ms | PyTorch ms | JAX seq/s | PyTorch seq/s | JAX GFLOP/s | PyTorch GFLOP/s | JAX/PyTorch throughput |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in part2_rows:
            lines.append(
                f"| {r['n']} | {r['seq_len']} | {r['jax_ms']:.0f} | {r['torch_ms']:.0f} | {r['jax_seq_per_s']:.2f} | {r['torch_seq_per_s']:.2f} | "
                f"{r['jax_gflops']:.0f} | {r['torch_gflops']:.0f} | {r['jax_over_torch_throughput']:.2f} |"
            )
    lines += ["", "![inference](benchmarks/results/inference_cpu.png)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["jax", "torch"])
    parser.add_argument("--model-dir")
    parser.add_argument("--cases", default="[[1,128],[8,128],[16,128],[1,512],[8,512],[16,512]]")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timing per case")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="part 1 (MiniLM); bert-base uses 1,8,16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-frameworks", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.model_dir, json.loads(args.cases), args.budget)
        return

    import jax

    from benchmarks.report import machine_description, write_section

    sets = text_sets()
    source = sets.pop("_source")
    rows = part1(build_pairs(minilm=False, bert_base=True), [1, 8, 16], sets, args.budget)
    rows += part1(build_pairs(minilm=True, bert_base=False), [int(n) for n in args.batch_sizes.split(",")], sets, args.budget / 2)
    frameworks = [] if args.skip_frameworks else part2(json.loads(args.cases), args.rounds, args.budget)
    meta = {"machine": machine_description(), "threads": os.cpu_count(), "texts": source, "jax": jax.__version__,
            "device": str(jax.devices()[0])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench.json").write_text(json.dumps({"meta": meta, "speedup": rows, "frameworks": frameworks}, indent=2))
    plot(rows, RESULTS / "inference_cpu.png")
    if args.output:
        write_section(args.output, f"Inference on {jax.default_backend().upper()}: successor speedup and JAX vs PyTorch",
                      "python -m benchmarks.bench_inference --output BENCHMARKS.md", markdown(rows, frameworks, meta))


if __name__ == "__main__":
    main()
