"""Inference speed: predecessor vs successor (speedup n@hw), and JAX vs Hugging Face PyTorch.

Part 1 (JAX): for short (tweets), medium (comment-length) and long (clinical-note length)
texts and batch sizes n, time the whole chain (tokenisation, padding to the bucket, device
transfer, forward, probabilities back on the host) and the forward pass alone (transfer
included, tokenisation not), for a predecessor and its successor: bert-base shape 12 -> 6
(random weights) and the packaged all-MiniLM-L6-v2 6 -> 3. Predecessor and successor run
interleaved in rounds; speedup = median over rounds of the paired ratio of round means.

Part 2 (frameworks): bert-base 12 layers, forward only, fixed sequence length, our jitted
JAX forward against transformers' eager `BertForSequenceClassification` with the same
weights under `torch.inference_mode`, same thread count; each framework in its own
subprocess (idle thread pools would steal the cores), alternating, repeated; the ratio is
the median of paired (round by round) ratios.

The same code runs on GPU (JAX's default device; torch uses CUDA when it has it); results
are stored per backend in results/bench.json and plotted side by side.

    python -m benchmarks.bench_inference --output BENCHMARKS.md            # --quick plan
    python -m benchmarks.bench_inference --full --output BENCHMARKS.md     # the study's protocol
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.protocol import REPO, encoder_gflops, thread_env, time_calls

RESULTS = REPO / "benchmarks" / "results"
GERMEVAL_TEST = REPO.parent / "shared" / "data" / "germeval2018" / "germeval2018.test.txt"
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
# --quick: the bert-base-shaped pair runs these batch sizes only (seconds per call at 512 tokens).
QUICK_BERT_BASE = {"tweets": (1, 4, 16), "medium": (1, 4, 16), "long": (1, 4)}
FRAMEWORK_CASES = ((1, 128), (8, 128), (16, 128), (1, 512), (8, 512), (16, 512))
TEXTS_PER_SET = 256
Row = dict[str, Any]


def text_sets(seed: int = 0) -> tuple[dict[str, list[str]], str]:
    """Tweets (GermEval 2018 test texts when ../shared/data is present, else generated),
    medium comments (3 tweets, ~120 tokens) and long notes (25 tweets, past 512 tokens)."""
    rng = np.random.default_rng(seed)
    if GERMEVAL_TEST.exists():
        lines = GERMEVAL_TEST.read_text(encoding="utf-8").splitlines()
        tweets = [line.split("\t")[0] for line in lines if line.strip()]
        source = f"GermEval 2018 test tweets ({GERMEVAL_TEST.name}, first column)"
    else:
        words = "the of and to in is that it for was on are with as his they be at one have this from".split()
        tweets = [" ".join(rng.choice(words, rng.integers(8, 30))) for _ in range(2000)]
        source = "generated word sequences (GermEval 2018 not found)"

    def joined(k: int) -> list[str]:
        return [" ".join(rng.choice(tweets, k)) for _ in range(TEXTS_PER_SET)]

    return {"tweets": tweets[:TEXTS_PER_SET], "medium": joined(3), "long": joined(25)}, source


def runtime_info() -> dict[str, Any]:
    """Where a result was measured: device, JAX/XLA (jaxlib) versions, threads, load."""
    import jax
    import jaxlib

    from benchmarks.report import machine_description

    return {
        "machine": machine_description(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "jaxlib_xla": jaxlib.__version__,
        "threads": len(os.sched_getaffinity(0)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


# --- part 1: predecessor vs successor, whole chain and forward -------------------------------


def build_pairs(dtype: str) -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, config, {predecessor: Predictor, successor: Predictor}); successor = layers 0, 2, 4, ..."""
    import jax
    import jax.numpy as jnp

    from theseus_jax.compression import theseus
    from theseus_jax.convert import load_hf_checkpoint
    from theseus_jax.inference import Predictor
    from theseus_jax.models.bert import BertConfig, BertForSequenceClassification
    from theseus_jax.tokenization import packaged_model_dir

    folder = packaged_model_dir()
    base = BertConfig()
    base_params = BertForSequenceClassification(base).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    pairs = []
    for name, (config, params), layers in (
        ("bert-base 12->6", (base, base_params), 6),
        ("all-MiniLM-L6-v2 6->3", load_hf_checkpoint(folder, head="classification"), 3),
    ):
        successor = theseus.extract_successor(config, theseus.init_theseus_params(params, config, layers))
        pairs.append((name, config, {
            "predecessor": Predictor(folder, dtype=dtype, config=config, params=params),
            "successor": Predictor(folder, dtype=dtype, config=successor[0], params=successor[1]),
        }))
    return pairs


def time_pair(predictors: dict[str, Any], batch: list[str], args: argparse.Namespace) -> tuple[dict, dict, int]:
    """Interleaved rounds; returns per-(role, mode) times, per-mode paired ratios, bucket length."""
    encoded = {role: p.encode(batch) for role, p in predictors.items()}
    calls = {
        (role, mode): fn
        for role, p in predictors.items()
        for mode, fn in (
            ("chain", lambda p=p: p.predict_proba(batch, batch_size=len(batch))),
            ("forward", lambda p=p, role=role: p.forward(*encoded[role])),
        )
    }
    for fn in calls.values():  # warm-up: compiles each bucket shape once
        fn()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    ratios: dict[str, list[float]] = {"chain": [], "forward": []}
    block_budget = args.budget / (args.rounds * len(calls))
    for _ in range(args.rounds):
        means = {}
        for key, fn in calls.items():
            ts = time_calls(fn, block_budget, args.min_reps, -(-args.reps // args.rounds))
            times[key] += ts
            means[key] = statistics.mean(ts)
        for mode in ratios:
            ratios[mode].append(means["predecessor", mode] / means["successor", mode])
    return times, ratios, int(encoded["predecessor"][0].shape[1])


def part1(args: argparse.Namespace) -> tuple[list[Row], dict[str, dict[str, list[int]]]]:
    """Speedup rows and the batch sizes actually run per pair and text set."""
    sets, _ = text_sets()
    rows, plan = [], {}
    for name, config, predictors in build_pairs(args.dtype):
        quick = args.quick and name.startswith("bert-base")
        plan[name] = {s: [n for n in args.batch_sizes if not quick or n in QUICK_BERT_BASE[s]] for s in sets}
        for set_name, texts in sets.items():
            for n in plan[name][set_name]:
                times, ratios, length = time_pair(predictors, texts[:n], args)
                gflop = n * encoder_gflops(config.num_hidden_layers, config.hidden_size, config.intermediate_size, length)
                row: Row = {"models": name, "texts": set_name, "n": n, "seq_len": length, "reps": min(map(len, times.values()))}
                for (role, mode), ts in times.items():
                    row[f"{role}_{mode}_ms"] = 1e3 * statistics.mean(ts)
                    row[f"{role}_{mode}_std_ms"] = 1e3 * statistics.pstdev(ts)
                row["predecessor_forward_gflops"] = gflop / statistics.mean(times["predecessor", "forward"])
                for mode, values in ratios.items():
                    row[f"speedup_{mode}"] = statistics.median(values)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows, plan


# --- part 2: JAX vs PyTorch, each in its own process -----------------------------------------


def worker(framework: str, model_dir: str, cases: list[list[int]], args: argparse.Namespace) -> None:
    """Prints {"device": ..., "times": {"n,L": [seconds per call, ...]}} for a fixed-length forward."""
    rng = np.random.default_rng(0)
    threads = args.threads
    times = {}
    if framework == "torch":
        import torch
        import transformers

        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        model = transformers.BertForSequenceClassification.from_pretrained(model_dir).eval().to(device)
        for n, length in cases:
            ids = torch.from_numpy(rng.integers(1000, 30000, (n, length))).to(device)
            mask = torch.ones_like(ids)

            def run() -> None:
                with torch.inference_mode():
                    model(input_ids=ids, attention_mask=mask).logits.cpu().numpy()

            run()
            times[f"{n},{length}"] = time_calls(run, args.budget, args.min_reps, args.reps)
        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    else:
        import jax

        from theseus_jax.inference import Predictor

        predictor = Predictor(model_dir, dtype=args.dtype)
        name = jax.devices()[0].device_kind
        for n, length in cases:
            ids = rng.integers(1000, 30000, (n, length)).astype(np.int32)
            mask = np.ones_like(ids)
            predictor.forward(ids, mask)
            times[f"{n},{length}"] = time_calls(lambda: predictor.forward(ids, mask), args.budget, args.min_reps, args.reps)
        versions = {"jax": jax.__version__}
    print(json.dumps({"device": name, "threads": threads, "versions": versions, "times": times}))


def part2(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """Rows per (n, L) and the frameworks' device/version info."""
    import jax
    import jax.numpy as jnp

    from theseus_jax.convert import save_hf_checkpoint
    from theseus_jax.models.bert import BertConfig, BertForSequenceClassification
    from theseus_jax.tokenization import packaged_model_dir

    config = BertConfig()
    params = BertForSequenceClassification(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    cases = [list(case) for case in FRAMEWORK_CASES]
    per_round: dict[str, dict[str, list[float]]] = {"jax": {}, "torch": {}}  # median seconds per round
    info: dict[str, Any] = {}
    env = thread_env(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bert-base"
        save_hf_checkpoint(config, jax.device_get(params), folder, tokenizer_dir=packaged_model_dir())
        for _ in range(args.framework_rounds):
            for framework in ("jax", "torch"):
                command = [sys.executable, "-m", "benchmarks.bench_inference", "--worker", framework,
                           "--model-dir", str(folder), "--cases", json.dumps(cases), "--budget", str(args.framework_budget if args.quick else args.budget),
                           "--reps", str(args.reps), "--threads", str(args.threads), "--min-reps", str(args.min_reps), "--dtype", args.dtype]
                result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO, env=env)
                out = json.loads(result.stdout.strip().splitlines()[-1])
                info[framework] = {k: out[k] for k in ("device", "threads", "versions")}
                for key, ts in out["times"].items():
                    per_round[framework].setdefault(key, []).append(statistics.median(ts))
    rows = []
    for n, length in cases:
        jax_s, torch_s = per_round["jax"][f"{n},{length}"], per_round["torch"][f"{n},{length}"]
        gflop = n * encoder_gflops(config.num_hidden_layers, config.hidden_size, config.intermediate_size, length)
        jax_med, torch_med = statistics.median(jax_s), statistics.median(torch_s)
        rows.append({
            "n": n, "seq_len": length, "rounds": len(jax_s),
            "jax_ms": 1e3 * jax_med, "torch_ms": 1e3 * torch_med,
            "jax_seq_per_s": n / jax_med, "torch_seq_per_s": n / torch_med,
            "jax_gflops": gflop / jax_med, "torch_gflops": gflop / torch_med,
            "jax_over_torch_throughput": statistics.median(t / j for j, t in zip(jax_s, torch_s)),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows, info


# --- output ------------------------------------------------------------------------------------


def plot(results: dict[str, dict], path: Path) -> None:
    """Per pair (rows) and backend (column blocks): time vs n per text set, then speedup vs n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted(results)
    rows_of = {b: results[b]["speedup"] for b in backends}
    pairs = list(dict.fromkeys(r["models"] for b in backends for r in rows_of[b]))
    sets = list(dict.fromkeys(r["texts"] for b in backends for r in rows_of[b]))
    width = len(sets) + 1
    fig, axes = plt.subplots(len(pairs), width * len(backends), figsize=(3.6 * width * len(backends), 3.2 * len(pairs)), squeeze=False)
    for b, backend in enumerate(backends):
        device = results[backend]["meta"]["device"]
        for i, pair in enumerate(pairs):
            speed_ax = axes[i, b * width + len(sets)]
            for j, name in enumerate(sets):
                chosen = [r for r in rows_of[backend] if r["models"] == pair and r["texts"] == name]
                if not chosen:
                    continue
                ns = [r["n"] for r in chosen]
                ax = axes[i, b * width + j]
                for role, marker in (("predecessor", "o"), ("successor", "s")):
                    for mode, line in (("chain", "-"), ("forward", ":")):
                        ax.errorbar(ns, [r[f"{role}_{mode}_ms"] for r in chosen], [r[f"{role}_{mode}_std_ms"] for r in chosen],
                                    fmt=marker + line, capsize=2, ms=4, label=f"{role} {mode}")
                ax.set(xscale="log", yscale="log", xlabel="batch size n", ylabel="ms per batch",
                       title=f"{device}: {pair}\n{name} (seq {'/'.join(str(s) for s in sorted({r['seq_len'] for r in chosen}))})")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=6)
                speed_ax.plot(ns, [r["speedup_chain"] for r in chosen], "o-", label=f"{name} chain")
                speed_ax.plot(ns, [r["speedup_forward"] for r in chosen], "s:", label=f"{name} forward")
            speed_ax.axhline(2.0, color="grey", lw=0.8, ls="--")
            speed_ax.set(xscale="log", xlabel="batch size n", ylabel="predecessor / successor time", title=f"{device}: {pair}\nspeedup n@{backend}")
            speed_ax.grid(alpha=0.3)
            speed_ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(result: dict[str, Any], notes: str) -> str:
    """The BENCHMARKS.md section body for one backend's results."""
    meta, rows, frameworks = result["meta"], result["speedup"], result["frameworks"]
    budget = (f"at least {meta['min_reps']} calls and until {meta['budget_s']:g} s per case are spent" if meta["quick"]
              else f"{meta['min_reps']} calls")
    plan = "; ".join(f"{pair}: " + ", ".join(f"{s} n={'/'.join(map(str, ns))}" for s, ns in sets.items()) for pair, sets in meta["plan"].items())
    lines = [
        f"Machine: {meta['machine']}; device {meta['device']}; jaxlib (XLA) {meta['jaxlib_xla']}; {meta['threads']} threads; "
        f"{meta['dtype']}; 1-minute load average {meta['load_before']:.1f} before, {meta['load_after']:.1f} after "
        "(other engineers' jobs shared the cores).",
        f"What ran ({'--quick' if meta['quick'] else '--full'}): {plan}. Per case: one warm-up call per model and mode, then "
        f"{meta['rounds']} interleaved rounds, each timing predecessor chain, predecessor forward, successor chain, successor "
        f"forward for {budget}, at most {meta['reps']} calls per model and mode in all (`reps` = calls per model and mode). "
        f"Texts: {meta['texts']}; medium = 3 "
        "random tweets joined, long = 25 (truncated to 512 tokens). Weights: bert-base random, MiniLM packaged; "
        "successor = predecessor layers 0, 2, 4, ...",
        "",
        "Whole chain = tokenisation + padding to the bucket + transfer + forward + probabilities on the host; forward = "
        "transfer + forward + probabilities on the host. Times: mean ± std per batch; speedup = median over rounds of "
        "paired predecessor/successor ratios. GFLOP/s: encoder FLOPs of the padded batch / predecessor forward time.",
        "",
        "| models | texts | n | seq | reps | predecessor chain ms | successor chain ms | speedup chain | predecessor forward ms | successor forward ms | speedup forward | predecessor GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['models']} | {r['texts']} | {r['n']} | {r['seq_len']} | {r['reps']} | "
            f"{r['predecessor_chain_ms']:.1f} ± {r['predecessor_chain_std_ms']:.1f} | {r['successor_chain_ms']:.1f} ± {r['successor_chain_std_ms']:.1f} | "
            f"**{r['speedup_chain']:.2f}** | {r['predecessor_forward_ms']:.1f} ± {r['predecessor_forward_std_ms']:.1f} | "
            f"{r['successor_forward_ms']:.1f} ± {r['successor_forward_std_ms']:.1f} | **{r['speedup_forward']:.2f}** | {r['predecessor_forward_gflops']:.0f} |"
        )
    if frameworks:
        info = meta["frameworks"]
        lines += [
            "",
            f"JAX (jitted, {info['jax']['device']}) vs Hugging Face PyTorch eager (transformers {info['torch']['versions']['transformers']}, "
            f"torch {info['torch']['versions']['torch']}, {info['torch']['device']}, `torch.inference_mode`), bert-base 12 layers, "
            f"same weights, forward only, fixed length, all positions attended, {info['torch']['threads']} threads each; each "
            f"framework in its own process, alternating for {frameworks[0]['rounds']} rounds; ms = median over rounds of each "
            "round's median; JAX/PyTorch = median of paired round ratios of sequences per second.",
            "",
            "| n | seq | JAX ms | PyTorch ms | JAX seq/s | PyTorch seq/s | JAX GFLOP/s | PyTorch GFLOP/s | JAX/PyTorch throughput |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in frameworks:
            lines.append(
                f"| {r['n']} | {r['seq_len']} | {r['jax_ms']:.0f} | {r['torch_ms']:.0f} | {r['jax_seq_per_s']:.2f} | {r['torch_seq_per_s']:.2f} | "
                f"{r['jax_gflops']:.0f} | {r['torch_gflops']:.0f} | **{r['jax_over_torch_throughput']:.2f}** |"
            )
    lines += ["", "![inference](benchmarks/results/inference.png)", "", notes]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="quick", action="store_true", default=True,
                      help="default: bert-base runs n in %s only, at most --budget seconds per case" % QUICK_BERT_BASE)
    mode.add_argument("--full", dest="quick", action="store_false", help="every n for every pair, 100 calls per model and mode")
    parser.add_argument("--batch-sizes", type=lambda s: [int(n) for n in s.split(",")], default=list(BATCH_SIZES))
    parser.add_argument("--budget", type=float, default=None, help="seconds per case (default 12 quick, unlimited full)")
    parser.add_argument("--reps", type=int, default=100, help="at most this many timed calls per model and mode")
    parser.add_argument("--min-reps", type=int, default=2, help="at least this many per round (part 1) or worker run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (part 1)")
    parser.add_argument("--framework-rounds", type=int, default=2, help="alternating jax/torch process pairs (part 2)")
    parser.add_argument("--framework-budget", type=float, default=6.0, help="seconds per case and process (part 2, quick)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads of each framework in part 2 (default: all cores)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype (bfloat16: GPU)")
    parser.add_argument("--skip-frameworks", action="store_true", help="part 1 only")
    parser.add_argument("--notes", type=Path, help="Markdown appended to the BENCHMARKS.md section")
    parser.add_argument("--output", help="BENCHMARKS.md to write the section into")
    parser.add_argument("--render", action="store_true", help="rewrite plot and section from results/bench.json, no timing")
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cases", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget is None:
        args.budget = 12.0 if args.quick else float("inf")
    if not args.quick:
        args.min_reps = max(args.min_reps, -(-args.reps // args.rounds))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.model_dir, json.loads(args.cases), args)
        return

    from benchmarks.report import write_section

    store = RESULTS / "bench.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    if args.render:
        meta = results[runtime_info()["backend"]]["meta"]
    else:
        meta = measure(args, " ".join(sys.argv[1:] if argv is None else argv), results)
        RESULTS.mkdir(exist_ok=True)
        store.write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / "inference.png")
    if args.output:
        notes = args.notes.read_text() if args.notes else ""
        write_section(args.output, f"Inference on {meta['backend'].upper()}: successor speedup and JAX vs PyTorch",
                      f"python -m benchmarks.bench_inference {meta['arguments']}".strip(), markdown(results[meta["backend"]], notes))


def measure(args: argparse.Namespace, arguments: str, results: dict[str, Any]) -> dict[str, Any]:
    """Runs both parts and stores them in `results` under this backend; returns their meta."""
    meta = runtime_info() | {"dtype": args.dtype, "quick": args.quick, "rounds": args.rounds, "reps": args.reps,
                              "min_reps": args.min_reps, "budget_s": args.budget if args.quick else None, "texts": text_sets()[1],
                              "load_before": os.getloadavg()[0], "arguments": arguments}
    rows, meta["plan"] = part1(args)
    frameworks, meta["frameworks"] = ([], {}) if args.skip_frameworks else part2(args)
    meta["load_after"] = os.getloadavg()[0]
    results[meta["backend"]] = {"meta": meta, "speedup": rows, "frameworks": frameworks}
    return meta


if __name__ == "__main__":
    main()
