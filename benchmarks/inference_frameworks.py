"""Inference, JAX vs Hugging Face PyTorch: the same bert-base forward in each framework.

bert-base 12 layers (random weights), forward only, fixed sequence length: our jitted JAX
forward against transformers' eager `BertForSequenceClassification` with the same weights
under `torch.inference_mode`, same thread count. Each framework runs in its own subprocess
(idle thread pools would steal the cores), alternating, repeated; the ratio is the median
of paired (round by round) ratios. `compare_frameworks` drives the rounds; this module run
as a program is the worker it launches:

    python -m benchmarks.inference_frameworks --framework jax --model-dir DIR --cases '[[1, 128]]'
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.protocol import REPO, encoder_gflops, thread_env, time_calls
from theseus_jax.errors import ArgumentParser

FRAMEWORK_CASES = ((1, 128), (8, 128), (16, 128), (1, 512), (8, 512), (16, 512))
Row = dict[str, Any]


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


def compare_frameworks(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
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
                command = [sys.executable, "-m", "benchmarks.inference_frameworks", "--framework", framework,
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


def main(argv: Sequence[str] | None = None) -> None:
    """The worker: one framework, one process, the cases timed in turn."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--framework", required=True, choices=["jax", "torch"])
    parser.add_argument("--model-dir", required=True, help="a bert-base HF checkpoint folder with its tokenizer")
    parser.add_argument("--cases", required=True, help='JSON list of [n, L]: batch size and sequence length')
    parser.add_argument("--budget", type=float, default=6.0, help="seconds per case")
    parser.add_argument("--reps", type=int, default=100, help="at most this many timed calls per case")
    parser.add_argument("--min-reps", type=int, default=2, help="at least this many timed calls per case")
    parser.add_argument("--threads", type=int, default=1, help="compute threads")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="JAX compute dtype")
    args = parser.parse_args(argv)
    worker(args.framework, args.model_dir, json.loads(args.cases), args)


if __name__ == "__main__":
    main()
