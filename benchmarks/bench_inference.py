"""Inference speed: predecessor vs successor (speedup n@hw), and JAX vs Hugging Face PyTorch.

Part 1 (JAX, this module): for short (tweets), medium (comment-length) and long
(clinical-note length) texts and batch sizes n, time the whole chain (tokenisation, padding
to the bucket, device transfer, forward, probabilities back on the host) and the forward
pass alone (transfer included, tokenisation not), for a predecessor and its successor.
Predecessor and successor run interleaved in rounds; speedup = median over rounds of the
paired ratio of round means. The built-in pairs: bert-base shape 12 -> 6 (random weights)
and the packaged all-MiniLM-L6-v2 6 -> 3, successor = predecessor layers 0, 2, 4, ...

Your own pair: `--predecessor` a checkpoint folder or Hub ID, `--successor` another one or
a layer count n (the predecessor's layers 0, r, 2r, ... with r = its layers / n, as for the
built-in pairs); each model uses its own folder's tokenizer. Its results go to their own
store (default results/bench_<predecessor>-<successor>.json), plot and BENCHMARKS.md
section ("Inference on CPU: <pair>"), never into the built-in ones; part 2 is skipped.

Part 2 (`benchmarks.inference_frameworks`): bert-base forward, our jitted JAX against
transformers' PyTorch eager, each in its own process. Plot and section:
`benchmarks.inference_report`.

The same code runs on GPU (JAX's default device; torch uses CUDA when it has it); results
are stored per backend in the store (results/bench.json) and plotted side by side.

    python -m benchmarks.bench_inference --output BENCHMARKS.md            # --quick plan
    python -m benchmarks.bench_inference --full --output BENCHMARKS.md     # the study's protocol
    python -m benchmarks.bench_inference --predecessor DIR --successor 6 --text-sets tweets --output BENCHMARKS.md
    python -m benchmarks.bench_inference --render --output BENCHMARKS.md   # plot and section from the store
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from benchmarks.arguments import comma_choices, existing_file
from benchmarks.protocol import REPO, encoder_gflops, time_calls
from theseus_jax.errors import ArgumentParser, UserError, run_cli

PROG = "python -m benchmarks.bench_inference"
RESULTS = REPO / "benchmarks" / "results"
GERMEVAL_TEST = REPO.parent / "shared" / "data" / "germeval2018" / "germeval2018.test.txt"
TEXT_SETS = ("tweets", "medium", "long")
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
# --quick: the bert-base-shaped pair runs these batch sizes only (seconds per call at 512 tokens).
QUICK_BERT_BASE = {"tweets": (1, 4, 16), "medium": (1, 4, 16), "long": (1, 4)}
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

    return dict(zip(TEXT_SETS, (tweets[:TEXTS_PER_SET], joined(3), joined(25)))), source


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


class Pair(NamedTuple):
    """A predecessor and its successor, timed side by side."""

    name: str
    config: Any  # the predecessor's BertConfig: encoder FLOPs per row
    predictors: dict[str, Any]  # "predecessor" / "successor" -> theseus_jax.inference.Predictor
    quick_plan: dict[str, tuple[int, ...]] | None = None  # --quick batch sizes per text set; None: all
    origin: dict[str, str] | None = None  # a user's pair: its models, stored in the meta; None: built in


def every_rth_layer(config: Any, params: Any, layers: int) -> tuple[Any, Any]:
    """The successor the benchmark times: the predecessor's layers 0, r, 2r, ... (r = its layers / `layers`), untrained."""
    from theseus_jax.compression import theseus

    return theseus.extract_successor(config, theseus.init_theseus_params(params, config, layers))


def build_pairs(dtype: str) -> list[Pair]:
    """bert-base 12 -> 6 (random weights) and the packaged MiniLM 6 -> 3, with the packaged tokenizer."""
    import jax
    import jax.numpy as jnp

    from theseus_jax.convert import load_hf_checkpoint
    from theseus_jax.inference import Predictor
    from theseus_jax.models.bert import BertConfig, BertForSequenceClassification
    from theseus_jax.tokenization import packaged_model_dir

    folder = packaged_model_dir()
    base = BertConfig()
    base_params = BertForSequenceClassification(base).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    pairs = []
    for name, (config, params), layers, quick_plan in (
        ("bert-base 12->6", (base, base_params), 6, QUICK_BERT_BASE),
        ("all-MiniLM-L6-v2 6->3", load_hf_checkpoint(folder, head="classification"), 3, None),
    ):
        successor = every_rth_layer(config, params, layers)
        pairs.append(Pair(name, config, {
            "predecessor": Predictor(folder, dtype=dtype, config=config, params=params),
            "successor": Predictor(folder, dtype=dtype, config=successor[0], params=successor[1]),
        }, quick_plan))
    return pairs


def model_label(reference: str) -> str:
    """A model's short name: its folder's name, or the name part of a Hub ID."""
    return Path(os.path.abspath(reference)).name


def custom_pair(predecessor: str, successor: str, dtype: str) -> Pair:
    """The user's pair: two checkpoints (folders or Hub IDs), or one and a layer count for its
    successor; each model with its own folder's tokenizer. Both references are resolved
    before any model loads, so a wrong one fails at once."""
    from theseus_jax.compression.theseus import module_size, successor_sources
    from theseus_jax.convert import load_hf_checkpoint
    from theseus_jax.inference import Predictor
    from theseus_jax.models.hub import resolve_model

    layers = int(successor) if successor.isdigit() else None
    first_folder = resolve_model(predecessor)
    second_folder = first_folder if layers is not None else resolve_model(successor)
    config, params = load_hf_checkpoint(first_folder, head="classification")
    depth = config.num_hidden_layers
    if layers is None:
        second = Predictor(second_folder, dtype=dtype)
        name = f"{model_label(predecessor)} {depth} -> {model_label(successor)} {second.config.num_hidden_layers}"
        described = f"`{successor}`"
    else:
        try:
            module_size(depth, layers)
        except ValueError as err:
            raise UserError(f"--successor {layers}: {err} (layers of {predecessor})") from err
        successor_config, successor_params = every_rth_layer(config, params, layers)
        second = Predictor(second_folder, dtype=dtype, config=successor_config, params=successor_params)
        name = f"{model_label(predecessor)} {depth}->{layers}"
        described = f"= predecessor layers {', '.join(map(str, successor_sources(depth, layers)))} (untrained)"
    return Pair(name, config, {"predecessor": Predictor(first_folder, dtype=dtype, config=config, params=params),
                               "successor": second}, origin={"predecessor": predecessor, "successor": described})


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


def measure_speedups(args: argparse.Namespace, pairs: list[Pair]) -> tuple[list[Row], dict[str, dict[str, list[int]]]]:
    """Speedup rows and the batch sizes actually run per pair and text set."""
    sets = {name: texts for name, texts in text_sets()[0].items() if name in args.text_sets}
    rows, plan = [], {}
    for pair in pairs:
        quick = args.quick and pair.quick_plan is not None
        plan[pair.name] = {s: [n for n in args.batch_sizes if not quick or n in pair.quick_plan[s]] for s in sets}
        for set_name, texts in sets.items():
            for n in plan[pair.name][set_name]:
                times, ratios, length = time_pair(pair.predictors, texts[:n], args)
                config = pair.config
                gflop = n * encoder_gflops(config.num_hidden_layers, config.hidden_size, config.intermediate_size, length)
                row: Row = {"models": pair.name, "texts": set_name, "n": n, "seq_len": length, "reps": min(map(len, times.values()))}
                for (role, mode), ts in times.items():
                    row[f"{role}_{mode}_ms"] = 1e3 * statistics.mean(ts)
                    row[f"{role}_{mode}_std_ms"] = 1e3 * statistics.pstdev(ts)
                row["predecessor_forward_gflops"] = gflop / statistics.mean(times["predecessor", "forward"])
                for mode, values in ratios.items():
                    row[f"speedup_{mode}"] = statistics.median(values)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows, plan


def measure(args: argparse.Namespace, arguments: str, pairs: list[Pair], results: dict[str, Any]) -> dict[str, Any]:
    """Runs part 1 on `pairs` (and part 2 unless skipped), stores both in `results` under this backend; returns their meta."""
    meta = runtime_info() | {"dtype": args.dtype, "quick": args.quick, "rounds": args.rounds, "reps": args.reps,
                              "min_reps": args.min_reps, "budget_s": args.budget if args.quick else None, "texts": text_sets()[1],
                              "load_before": os.getloadavg()[0], "arguments": arguments}
    for pair in pairs:
        if pair.origin:  # a user's pair: its store holds it alone
            meta["pair"] = {"name": pair.name} | pair.origin
    rows, meta["plan"] = measure_speedups(args, pairs)
    if args.skip_frameworks:
        frameworks, meta["frameworks"] = [], {}
    else:
        from benchmarks.inference_frameworks import compare_frameworks

        frameworks, meta["frameworks"] = compare_frameworks(args)
    meta["load_after"] = os.getloadavg()[0]
    results[meta["backend"]] = {"meta": meta, "speedup": rows, "frameworks": frameworks}
    return meta


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="quick", action="store_true", default=True,
                      help="default: bert-base runs n in %s only, at most --budget seconds per case" % QUICK_BERT_BASE)
    mode.add_argument("--full", dest="quick", action="store_false", help="every n for every pair, 100 calls per model and mode")
    parser.add_argument("--predecessor", metavar="MODEL",
                        help="time your pair instead of the built-in ones: a checkpoint folder or Hub ID org/name[@revision]; "
                             "implies --skip-frameworks (part 2 is bert-base specific)")
    parser.add_argument("--successor", metavar="MODEL_OR_N",
                        help="with --predecessor: a checkpoint folder or Hub ID, or a layer count n for the predecessor's "
                             "layers 0, r, 2r, ... (r = its layers / n)")
    parser.add_argument("--text-sets", type=comma_choices(TEXT_SETS), default=list(TEXT_SETS),
                        help=f"comma-separated, of {','.join(TEXT_SETS)} (default all)")
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
    parser.add_argument("--store", type=Path,
                        help="results JSON (default results/bench.json, or results/bench_<predecessor>-<successor>.json for "
                             "--predecessor); the plot goes beside it, bench*.json -> inference*.png")
    parser.add_argument("--notes", type=existing_file, help="Markdown appended to the BENCHMARKS.md section")
    parser.add_argument("--output", help="BENCHMARKS.md to write the section into")
    parser.add_argument("--render", action="store_true", help="rewrite plot and section from the store, no timing")
    args = parser.parse_args(argv)
    if (args.predecessor is None) != (args.successor is None):
        parser.error("--predecessor and --successor go together")
    if args.store is None:
        slug = None
        if args.predecessor:
            slug = re.sub(r"[^\w.-]+", "-", f"{model_label(args.predecessor)}-"
                                            f"{args.successor if args.successor.isdigit() else model_label(args.successor)}")
        args.store = RESULTS / ("bench.json" if slug is None else f"bench_{slug}.json")
    args.store = args.store.resolve()
    args.skip_frameworks |= args.predecessor is not None
    if args.budget is None:
        args.budget = 12.0 if args.quick else float("inf")
    if not args.quick:
        args.min_reps = max(args.min_reps, -(-args.reps // args.rounds))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Measures (or with --render, reads) the store, then plots it and writes its section."""
    from benchmarks.inference_report import markdown, plot, section_title
    from benchmarks.report import write_section
    from theseus_jax import atomic

    args = parse_args(argv)
    store = args.store
    results = json.loads(store.read_text()) if store.exists() else {}
    if args.render:
        backend = runtime_info()["backend"]
        if backend not in results:
            raise UserError(f"{store}: no {backend} results to render; run without --render first")
        meta = results[backend]["meta"]
    else:
        pairs = [custom_pair(args.predecessor, args.successor, args.dtype)] if args.predecessor else build_pairs(args.dtype)
        meta = measure(args, " ".join(sys.argv[1:] if argv is None else argv), pairs, results)
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(store, json.dumps(results, indent=1))
    figure = store.with_name(store.stem.replace("bench", "inference", 1) + ".png")
    plot(results, figure)
    if args.output:
        notes = args.notes.read_text() if args.notes else ""
        image = figure.relative_to(REPO) if figure.is_relative_to(REPO) else figure
        write_section(args.output, section_title(meta), f"{PROG} {meta['arguments']}".strip(),
                      markdown(results[meta["backend"]], notes, str(image)))


if __name__ == "__main__":
    sys.exit(run_cli(main, PROG))
