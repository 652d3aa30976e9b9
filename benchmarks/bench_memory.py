"""Peak resident memory beside step time: JAX (ours) and Hugging Face PyTorch doing the same
training work, each configuration in a process of its own; and a whole `launch.py` stage.

Work per configuration (random weights, float32, AdamW, classification): `--rounds` rounds
of one training step at each bucket length (32, 64, 128), an evaluation pass at each length
(batch twice the training batch, as the e5 configs evaluate), then the export of the model
(ours: `save_hf_checkpoint`, HF: `save_pretrained`). Reported per process: peak RSS (the
kernel's ru_maxrss of the finished child, checked against the worker's own VmHWM), the
median length-128 step after the first round, and for JAX the peak bytes of live
`jax.Array`s at phase ends (XLA:CPU's `memory_stats()` reports nothing, so XLA's
temporaries are not counted there: the RSS is the figure). Per model and repeat: HF first,
then ours per policy (`--frameworks` picks one side, to give each process a timing window
of its own); `uptime` is recorded before and after.

Allocator policies (`POLICIES`) are environments for the JAX process (what launch.py reads);
the JAX worker calls `configure_memory` as launch.py does, so XLA:CPU's memory-optimized
scheduler is on unless a policy's XLA_FLAGS choose another.

    python -m benchmarks.bench_memory --models e5-small,bert-base,xlmr-base --output docs/memory-benchmarks.md
    python -m benchmarks.bench_memory --models e5-small --frameworks jax --policies phases --rounds 4 --json out.json
    python -m benchmarks.bench_memory --models e5-small --policies phases,keep,glibc,jemalloc-tuned --repeats 2
    python -m benchmarks.bench_memory --stage --policies phases,keep --output docs/memory-benchmarks.md
    python -m benchmarks.bench_memory --stage --stage-model xlmr-base --policies phases,lean

`--stage-model xlmr-base` runs the stage on a random xlm-roberta-base-shaped model (batch 16,
evaluation 32) built in a temporary folder with the e5 folder's XLM-R tokenizer.
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
from typing import Any, Sequence

from benchmarks.arguments import comma_choices
from benchmarks.bench_training import BERT_BASE, E5_SMALL, QUICK_MODEL
from benchmarks.protocol import REPO, thread_env
from benchmarks.training_workers import case_inputs, jax_inputs
from theseus_jax.errors import ArgumentParser, run_cli

XLMR_BASE = BERT_BASE | {"vocab_size": 250002, "max_position_embeddings": 514, "type_vocab_size": 1}  # 278M parameters
MODELS = {"e5-small": (E5_SMALL, 32), "bert-base": (BERT_BASE, 16), "xlmr-base": (XLMR_BASE, 16),
          "quick": (QUICK_MODEL, 8)}  # shape, batch (quick: a sanity check)
LENGTHS = (32, 64, 128)
LIB = Path("/usr/lib/x86_64-linux-gnu")
KEEP = "THESEUS_KEEP_FREED_MEMORY"


def jemalloc(conf: str) -> dict[str, str]:
    """The environment that runs the process on Debian's jemalloc with MALLOC_CONF `conf` (glibc's policy off)."""
    return {KEEP: "0", "LD_PRELOAD": str(LIB / "libjemalloc.so.2")} | ({"MALLOC_CONF": conf} if conf else {})


# name -> (environment of the JAX process, what it is)
POLICIES: dict[str, tuple[dict[str, str], str]] = {
    "phases": ({KEEP: "phases"}, "the default: freed memory kept during a phase (one arena, no mmap, no automatic trim), "
               "the heap trimmed after evaluations, checkpoints and exports (theseus_jax.memory)"),
    "lean": ({KEEP: "lean"}, "as phases, but blocks over 32 MiB (glibc's largest mmap threshold) mapped and returned at once"),
    "lean-thp": ({KEEP: "lean", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
                 "as lean, with glibc asking for transparent huge pages (2 MiB) on its mappings: a mapped block "
                 "faults in 512 times fewer pages"),
    "keep": ({KEEP: "keep"}, "every freed block kept: one arena, no mmap, no trimming (the default before issue 31)"),
    "phases-concurrency-schedule": ({KEEP: "phases", "XLA_FLAGS": "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT"},
                                    "as phases, with XLA:CPU's default scheduler (ordered for concurrency) instead of "
                                    "the memory-optimized one `configure_memory` sets"),
    "glibc": ({KEEP: "0"}, "glibc malloc, default settings"),
    "jemalloc": (jemalloc(""), "jemalloc 5.3, default settings"),
    "jemalloc-tuned": (jemalloc("oversize_threshold:0,dirty_decay_ms:30000,muzzy_decay_ms:0,narenas:2,background_thread:true"),
                       "jemalloc 5.3: no huge-allocation arena, 30 s dirty decay, 2 arenas, background purging"),
    "jemalloc-decay5": (jemalloc("narenas:1,dirty_decay_ms:5000,muzzy_decay_ms:0"),
                        "jemalloc 5.3: one arena, freed pages returned after 5 s unused"),
    "jemalloc-decay15": (jemalloc("narenas:1,dirty_decay_ms:15000,muzzy_decay_ms:0"),
                         "jemalloc 5.3: one arena, freed pages returned after 15 s unused"),
    "jemalloc-nodecay": (jemalloc("narenas:1,dirty_decay_ms:-1,muzzy_decay_ms:-1"),
                         "jemalloc 5.3: one arena, freed pages never returned"),
    "jemalloc-fit1": (jemalloc("narenas:1,dirty_decay_ms:-1,muzzy_decay_ms:-1,lg_extent_max_active_fit:1"),
                      "jemalloc 5.3: one arena, freed pages never returned, a free extent reused only for "
                      "requests of at least half its size"),
    "tcmalloc": ({KEEP: "0", "LD_PRELOAD": str(LIB / "libtcmalloc_minimal.so.4")}, "tcmalloc (gperftools 2.10), default settings"),
}
STAGE_FLAGS = ("--config=configs/germeval_e5.py", "--config.pipeline=cls_baseline", "--config.seeds=0",
               "--config.cls.learning_rates=", "--config.cls.epochs=2", "--config.checkpoint_every_steps=10")


# --- the two workers (one configuration, one process) ---------------------------------------


def jax_work(model: dict[str, int], batch: int, rounds: int, export_dir: Path) -> dict[str, Any]:
    from theseus_jax import memory

    memory.configure_memory()  # as launch.py does, before JAX starts its threads
    import jax
    import jax.numpy as jnp

    from theseus_jax.convert import save_hf_checkpoint
    from theseus_jax.models.bert import BertConfig, BertForSequenceClassification
    from theseus_jax.training import optimizer, steps

    config = BertConfig(**model)
    net = BertForSequenceClassification(config)
    params = net.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    tx, mask = optimizer.make_optimizer(params, "all", 2e-5)
    train_step = jax.jit(steps.make_train_step(net, tx, mask, "classification"), donate_argnums=(0,))
    eval_step = jax.jit(steps.make_eval_step(net, "classification"))
    state = steps.create_train_state(params, tx)
    del params
    live = [0]

    def phase_end() -> None:
        # each buffer once: the export's device_get leaves a second Array on the parameters' buffers
        buffers = {x.unsafe_buffer_pointer(): x.nbytes for x in jax.live_arrays()}
        live[0] = max(live[0], sum(buffers.values()))
        memory.release_freed_memory()

    def inputs(b: int, length: int) -> dict[str, Any]:
        return jax_inputs({"batch": b, "length": length, "model": model, "objective": "classification"})

    times: list[float] = []
    rng = jax.random.key(1)
    temporaries: dict[int, int] = {}
    memory.drop_staging_caches()  # as the trainer does once loading ends
    phase_end()
    for r in range(rounds):
        for length in LENGTHS:
            data = inputs(batch, length)
            new_shape = length not in temporaries
            if new_shape:  # compiled here after a release (the trainer's runs beside its running step)
                memory.release_freed_memory()
                temporaries[length] = memory.note_step_temporaries(
                    train_step.lower(state, data, rng).compile().memory_analysis())
            start = time.perf_counter()
            memory.between_steps(temporaries[length])  # as the trainer does before each step
            state, metrics = train_step(state, data, rng)
            if new_shape:  # as the trainer does once a shape's first step is dispatched
                memory.drop_staging_caches()
            jax.block_until_ready(metrics["loss"])
            if r and length == LENGTHS[-1]:
                times.append(time.perf_counter() - start)
    phase_end()
    for length in LENGTHS:
        jax.device_get(eval_step(state.params, inputs(2 * batch, length)))
    phase_end()
    save_hf_checkpoint(config, jax.device_get(state.params), export_dir)
    phase_end()
    return {"step_s": times, "live_array_peak_bytes": live[0], "step_temporaries_bytes": max(temporaries.values())}


def torch_work(model: dict[str, int], batch: int, rounds: int, export_dir: Path, threads: int) -> dict[str, Any]:
    import torch
    import transformers

    from benchmarks.training_workers import torch_adamw

    torch.set_num_threads(threads)
    net = transformers.BertForSequenceClassification(transformers.BertConfig(**model, num_labels=2)).train()
    opt = torch_adamw(list(net.named_parameters()))

    def inputs(b: int, length: int) -> dict[str, Any]:
        raw = case_inputs({"batch": b, "length": length, "model": model, "objective": "classification"})
        return {k: torch.from_numpy(v) for k, v in raw.items()}

    times: list[float] = []
    for r in range(rounds):
        for length in LENGTHS:
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            net(**inputs(batch, length)).loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            if r and length == LENGTHS[-1]:
                times.append(time.perf_counter() - start)
    net.eval()
    with torch.inference_mode():
        for length in LENGTHS:
            raw = inputs(2 * batch, length)
            torch.softmax(net(**{k: v for k, v in raw.items() if k != "labels"}).logits, -1).numpy()
    net.save_pretrained(export_dir)
    return {"step_s": times, "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}


def worker(args: argparse.Namespace) -> None:
    model, batch = MODELS[args.model]
    with tempfile.TemporaryDirectory() as tmp:
        if args.worker == "jax":
            result = jax_work(model, batch, args.rounds, Path(tmp) / "export")
        else:
            result = torch_work(model, batch, args.rounds, Path(tmp) / "export", args.threads)
    from theseus_jax.memory import proc_status_bytes

    print("@@result " + json.dumps(result | {"vm_hwm_bytes": proc_status_bytes("VmHWM")}), flush=True)


# --- the driver ----------------------------------------------------------------------------


def run_child(command: list[str], env: dict[str, str]) -> tuple[int, int, str]:
    """(exit status, peak RSS bytes of the child from the kernel's rusage, its stdout). Linux
    counts the forked copy of this process too (ru_maxrss survives exec), so the driver must
    stay small beside its children: the workers report their own VmHWM to check it."""
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return child.returncode, usage.ru_maxrss * 1024, out.read()


def policy_env(policy: str, threads: int) -> dict[str, str]:
    """The JAX process's environment: the thread pinning plus the policy's variables (its XLA
    flags appended to the pinning's)."""
    env = thread_env(threads)
    extra = POLICIES.get(policy, ({}, ""))[0]
    return env | extra | {"XLA_FLAGS": f"{env['XLA_FLAGS']} {extra.get('XLA_FLAGS', '')}".strip()}


def measure(framework: str, model: str, policy: str, args: argparse.Namespace) -> dict[str, Any]:
    env = policy_env(policy, args.threads)
    command = [sys.executable, "-m", "benchmarks.bench_memory", "--worker", framework, "--model", model,
               "--rounds", str(args.rounds), "--threads", str(args.threads)]
    status, peak, out = run_child(command, env)
    if status != 0:
        raise RuntimeError(f"{framework} {model} {policy}: worker exited with status {status}")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("@@result "))[len("@@result "):])
    row = {"framework": framework, "model": model, "policy": policy if framework == "jax" else "-",
           "peak_rss_bytes": peak, **result, "step_median_s": statistics.median(result["step_s"])}
    print(json.dumps(row), flush=True)
    return row


def random_xlmr_folder(tokenizer_from: Path, out: Path) -> Path:
    """A random xlm-roberta-base-shaped classifier saved as an HF folder, with the tokenizer
    files of `tokenizer_from` (the e5 folder: the same XLM-R SentencePiece vocabulary)."""
    import shutil

    import transformers

    config = transformers.XLMRobertaConfig(**XLMR_BASE, num_labels=2, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    transformers.XLMRobertaForSequenceClassification(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_from / name).exists():
            shutil.copy(tokenizer_from / name, out / name)
    return out


def measure_stage(policy: str, args: argparse.Namespace, workdir: Path, model: Path) -> dict[str, Any]:
    batch = MODELS[args.stage_model][1]
    command = [sys.executable, "launch.py", *STAGE_FLAGS, f"--workdir={workdir}", f"--config.model.path={model}",
               f"--config.cls.data.max_examples={args.stage_examples}", f"--config.cls.batch_size={batch}",
               f"--config.cls.eval_batch_size={2 * batch}", f"--config.max_memory_gb={args.stage_cap}"]
    start = time.perf_counter()
    status, peak, _ = run_child(command, policy_env(policy, args.threads))
    row = {"model": args.stage_model, "policy": policy, "status": status, "peak_rss_bytes": peak,
           "wall_s": time.perf_counter() - start}
    print(json.dumps(row), flush=True)
    return row


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def markdown(rows: list[dict[str, Any]], stage: list[dict[str, Any]], args: argparse.Namespace, machine: str,
             loads: tuple[str, str]) -> str:
    lines = [f"Machine: {machine}; {args.threads} threads. `uptime` before: {loads[0]}; after: {loads[1]}."]
    if rows:
        versions = next((r["versions"] for r in rows if "versions" in r), {})
        lines += [
            "", f"Per process: {args.rounds} rounds of one training step at each length {', '.join(map(str, LENGTHS))} "
            "(AdamW, clipping at 1.0, dropout on), evaluation at each length with twice the batch, export "
            f"(ours `save_hf_checkpoint`, HF `save_pretrained`). HF: " + ", ".join(f"{k} {v}" for k, v in versions.items())
            + ". Step: median length-128 step after the first round (load-dependent; compare paired rows only). "
            "Live arrays: peak bytes of live `jax.Array` buffers at phase ends, each buffer once (XLA:CPU reports no allocator statistics). "
            "XLA temporaries: the largest training step's (`memory_analysis().temp_size_in_bytes`).",
            "", "| model | batch | framework | allocator policy | peak RSS GB | L128 step s | live arrays GB | XLA temporaries GB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            live, temporaries = (gb(r[key]) if key in r else "-" for key in ("live_array_peak_bytes", "step_temporaries_bytes"))
            lines.append(f"| {r['model']} | {MODELS[r['model']][1]} | {'ours' if r['framework'] == 'jax' else 'HF PyTorch'} | "
                         f"{r['policy']} | {gb(r['peak_rss_bytes'])} | {r['step_median_s']:.2f} | {live} | {temporaries} |")
    if stage:
        batch = MODELS[args.stage_model][1]
        lines += ["", f"Whole stage: `launch.py {' '.join(STAGE_FLAGS)} --config.cls.data.max_examples={args.stage_examples} "
                  f"--config.cls.batch_size={batch} --config.cls.eval_batch_size={2 * batch} "
                  f"--config.max_memory_gb={args.stage_cap:g}` ({args.stage_model}, max length 128, "
                  "buckets 32/64/128, validation and test every improvement/end, export): peak RSS of the launch.py process.",
                  "", "| model | allocator policy | peak RSS GB | wall s | exit |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['policy']} | {gb(r['peak_rss_bytes'])} | {r['wall_s']:.0f} | {r['status']} |" for r in stage]
    lines += ["", "Policies: " + "; ".join(f"`{name}`: {POLICIES[name][1]}" for name in args.policies) + "."]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=sorted(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--models", type=comma_choices(MODELS), default=["e5-small"])
    parser.add_argument("--policies", type=comma_choices(POLICIES), default=["phases"], help="JAX allocator policies")
    parser.add_argument("--repeats", type=int, default=1, help="alternating repeats of every configuration")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of steps over the lengths per process")
    parser.add_argument("--frameworks", type=comma_choices(["torch", "jax"]), default=["torch", "jax"],
                        help="HF PyTorch (once per model and repeat) and ours (once per policy)")
    parser.add_argument("--stage", action="store_true", help="the whole-stage figure instead (launch.py per policy)")
    parser.add_argument("--stage-examples", type=int, default=640, help="GermEval tweets per split (max_examples)")
    parser.add_argument("--stage-cap", type=float, default=0.0, help="the stage's max_memory_gb (0: none)")
    parser.add_argument("--stage-model", choices=["e5-small", "xlmr-base"], default="e5-small",
                        help="the stage's model: the real e5 folder, or a random xlm-roberta-base shape")
    parser.add_argument("--e5", default=str(Path("~/.cache/theseus-jax/e5small").expanduser()),
                        help="the e5-small HF folder (../shared/tools/e5small_to_hf.py)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--output", help="Markdown file to write the section into")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    from benchmarks.report import machine_description, publish

    before = uptime()
    rows, stage = [], []
    for _ in range(args.repeats):
        if args.stage:
            for policy in args.policies:
                with tempfile.TemporaryDirectory() as tmp:
                    model = Path(args.e5) if args.stage_model == "e5-small" else random_xlmr_folder(Path(args.e5), Path(tmp) / "model")
                    stage.append(measure_stage(policy, args, Path(tmp) / "run", model))
            continue
        for model in args.models:
            if "torch" in args.frameworks:
                rows.append(measure("torch", model, "-", args))
            if "jax" in args.frameworks:
                rows += [measure("jax", model, policy, args) for policy in args.policies]
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "stage": stage}, indent=1))
    body = markdown(rows, stage, args, machine_description(), (before, uptime()))
    title = "Memory: whole launch.py stage" if args.stage else "Memory: peak RSS and step time, ours and HF"
    publish(body, title, "benchmarks.bench_memory", argv, args.output, None)


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.bench_memory"))
