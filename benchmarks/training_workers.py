"""The two sides of `bench_training`: one training step (or forward) in JAX, and the same in
Hugging Face PyTorch, each served by a long-lived worker process (`benchmarks.protocol`).

A case is a dict: `kind` ("train" or "forward"), `objective` ("classification" or "mlm"),
`model` (BertConfig fields), `batch`, `length`, `dtype` (ours), `hf_dtype` (HF's: "bfloat16" runs
its forward under `torch.autocast`, as HF's Trainer does with `bf16=True`), and for Theseus
`theseus = {"p": ..., "successors": n}` (successor layers trainable, everything else
frozen, as in the original method), otherwise optionally `trainable` (an optimizer preset
or regexes; default "all"); a forward case lists `layers` to time alternately. Candidate
changes (`bench_training --candidates`) may add `dropout: false` (dropout off) and
`donate: false` (the train state not donated).
Both sides draw the same replacement masks: the JAX worker reports the masks its steps
drew, the driver hands them to the PyTorch worker.

    python -m benchmarks.training_workers jax|torch --threads 2
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.protocol import matmul_ceiling_gflops, peak_rss_mib, serve, time_calls
from theseus_jax.errors import ArgumentParser

Case = dict[str, Any]
MLM_RATE = 0.15


def masked_count(length: int) -> int:
    """Labelled positions per sequence in an MLM case."""
    return max(1, round(MLM_RATE * length))


def case_inputs(case: Case) -> dict[str, np.ndarray]:
    """Fixed random token ids (and labels): the same on both sides."""
    rng = np.random.default_rng(0)
    b, length, vocab = case["batch"], case["length"], case["model"]["vocab_size"]
    ids = rng.integers(1000, vocab, (b, length)).astype(np.int64)
    out = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    if case["objective"] == "mlm":
        positions = np.sort(np.stack([rng.choice(length, masked_count(length), replace=False) for _ in range(b)]), axis=1)
        out["masked_positions"] = positions
        out["masked_labels"] = np.take_along_axis(ids, positions, axis=1)
    else:
        out["labels"] = rng.integers(0, 2, b).astype(np.int64)
    return out


# --- JAX ---------------------------------------------------------------------------------


def jax_inputs(case: Case) -> dict[str, np.ndarray]:
    """`case_inputs` as our training step takes them: int32, MLM positions into the flattened batch."""
    raw = case_inputs(case)
    batch = {k: raw[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    if case["objective"] == "mlm":
        length = raw["input_ids"].shape[1]  # ours index the flattened batch (one micro-batch)
        batch["masked_positions"] = (raw["masked_positions"] + length * np.arange(len(raw["input_ids"]))[:, None]).astype(np.int32)
        batch["labels"] = raw["masked_labels"].astype(np.int32)
    else:
        batch["labels"] = raw["labels"].astype(np.int32)
        batch["example_mask"] = np.ones(case["batch"], np.float32)
    return batch


def jax_case(case: Case) -> tuple[Callable[[], float], Callable[[int], Any], float]:
    """(run one step -> seconds, mask of step k, compile seconds) for a training case."""
    import jax
    import jax.numpy as jnp

    from theseus_jax.compression import schedules, theseus
    from theseus_jax.models.bert import HEADS, BertConfig
    from theseus_jax.training import optimizer, steps
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0} if case.get("dropout") is False else {}
    config = BertConfig(**case["model"] | no_dropout, dtype=case["dtype"])
    objective = case["objective"]
    params = HEADS[objective](config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    batch = jax.device_put(jax_inputs(case))
    rng = jax.random.key(1)
    spec = case.get("theseus")
    if spec:
        n = spec["successors"]
        params = theseus.init_theseus_params(params, config, n)
        model = theseus.theseus_model(config, objective, n)
        tx, mask = optimizer.make_optimizer(params, "successor", 2e-5)
        compression = steps.Compression(schedules.constant_schedule(spec["p"]), n)
        step = steps.make_train_step(model, tx, mask, objective, compression)
    else:
        model = HEADS[objective](config)
        tx, mask = optimizer.make_optimizer(params, case.get("trainable", "all"), 2e-5)
        step = steps.make_train_step(model, tx, mask, objective)
    state = {"s": steps.create_train_state(params, tx), "step": 0}
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0,) if case.get("donate", True) else ()).lower(state["s"], batch, rng).compile()
    compile_s = time.perf_counter() - start

    def run() -> float:
        start = time.perf_counter()
        state["s"], metrics = compiled(state["s"], batch, rng)
        jax.block_until_ready(metrics["loss"])
        state["step"] += 1
        return time.perf_counter() - start

    def mask_of(k: int) -> list[bool] | None:
        """The mask train_step draws at step k (same key derivation as `steps.make_train_step`)."""
        if not spec:
            return None
        replace_rng, _ = jax.random.split(jax.random.fold_in(rng, k))
        return [bool(x) for x in schedules.sample_replace_mask(replace_rng, spec["p"], spec["successors"])]

    run.hlo_text = compiled.as_text  # type: ignore[attr-defined]  # the optimized HLO the step runs
    return run, lambda: mask_of(state["step"]), compile_s


def jax_forwards(case: Case) -> tuple[dict[int, Callable[[], float]], float]:
    """Per layer count, a jitted inference forward (classification head, dropout off), timed;
    its `logits()` returns what it computes."""
    import jax
    import jax.numpy as jnp

    from theseus_jax.models.bert import BertConfig, BertForSequenceClassification

    raw = case_inputs(case)
    inputs = jax.device_put([raw[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")])
    runs, compile_s = {}, 0.0
    for layers in case["layers"]:
        model = BertForSequenceClassification(BertConfig(**case["model"] | {"num_hidden_layers": layers}, dtype=case["dtype"]))
        params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
        start = time.perf_counter()
        forward = jax.jit(lambda p, i, m, t: model.apply({"params": p}, i, m, t)).lower(params, *inputs).compile()
        compile_s += time.perf_counter() - start

        def run(forward=forward, params=params) -> float:
            start = time.perf_counter()
            forward(params, *inputs).block_until_ready()
            return time.perf_counter() - start

        run.logits = lambda forward=forward, params=params: forward(params, *inputs)  # type: ignore[attr-defined]
        runs[layers] = run
    return runs, compile_s


HLO_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def lone_dot(lhs: str, rhs: str, dimension_numbers: Any) -> Callable[[], Any]:
    """A jitted `lax.dot_general` on random operands of HLO shapes ("f32[768,2048]"), ready
    to call: a dot of the step, run alone."""
    import jax
    from jax import lax

    from benchmarks.xla_profile import element_type_and_dims  # imports jax: not in the PyTorch worker

    def operand(shape: str, index: int) -> Any:
        dtype, dims = element_type_and_dims(shape)
        return jax.random.normal(jax.random.key(index), tuple(dims), HLO_DTYPES[dtype])

    (lc, rc), (lb, rb) = dimension_numbers
    product = jax.jit(lambda a, b: lax.dot_general(a, b, ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))))
    a, b = operand(lhs, 0), operand(rhs, 1)
    return lambda: product(a, b).block_until_ready()


def lone_dot_seconds(lhs: str, rhs: str, dimension_numbers: Any) -> float:
    """Median seconds per call of `lone_dot` after a compiling call (at least 5 calls, up to 0.5 s)."""
    run = lone_dot(lhs, rhs, dimension_numbers)
    run()
    return statistics.median(time_calls(run, budget_s=0.5, min_reps=5, max_reps=50))


# --- PyTorch -------------------------------------------------------------------------------


def torch_adamw(trained: list[tuple[str, Any]]) -> Any:
    """HF's fine-tuning AdamW over (name, parameter) pairs: weight decay 0.01 except biases and
    LayerNorms, fused where torch has it."""
    import torch

    no_decay = [p for name, p in trained if name.endswith("bias") or "LayerNorm" in name]
    decay = [p for name, p in trained if not (name.endswith("bias") or "LayerNorm" in name)]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=2e-5, eps=1e-6, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=2e-5, eps=1e-6, foreach=True)


def torch_autocast(case: Case, device: str) -> Any:
    """The context HF's forward runs in: bfloat16 autocast for `hf_dtype="bfloat16"` (where
    PyTorch's CPU matmuls reach AMX), otherwise none."""
    import torch

    if case.get("hf_dtype", "float32") == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=getattr(torch, case["hf_dtype"]))


def torch_case(case: Case, device: str) -> Callable[[list[bool] | None], float]:
    """One HF training step (AdamW, global-norm clipping at 1.0, same freezing) -> seconds."""
    import torch
    import transformers

    config = transformers.BertConfig(**case["model"], num_labels=2)
    objective = case["objective"]
    model_class = transformers.BertForMaskedLM if objective == "mlm" else transformers.BertForSequenceClassification
    model = model_class(config).to(device).train()
    raw = {k: torch.from_numpy(v).to(device) for k, v in case_inputs(case).items()}
    if objective == "mlm":
        labels = torch.full_like(raw["input_ids"], -100).scatter_(1, raw["masked_positions"], raw["masked_labels"])
    else:
        labels = raw["labels"]
    spec = case.get("theseus")
    if spec:
        layers = model.bert.encoder.layer
        n = spec["successors"]
        r = len(layers) // n
        successors = torch.nn.ModuleList(copy.deepcopy(layers[i * r]) for i in range(n))
        model.requires_grad_(False)
        trained = list(successors.named_parameters())
        loss_fn = torch.nn.CrossEntropyLoss()

        def loss_of(mask: list[bool]) -> torch.Tensor:
            hidden = model.bert.embeddings(input_ids=raw["input_ids"], token_type_ids=raw["token_type_ids"])
            for i, replaced in enumerate(mask):
                for layer in [successors[i]] if replaced else layers[i * r : (i + 1) * r]:
                    hidden = layer(hidden)
            if objective == "mlm":
                logits = model.cls(hidden)
                return loss_fn(logits.view(-1, logits.shape[-1]), labels.view(-1))
            logits = model.classifier(model.dropout(model.bert.pooler(hidden)))
            return loss_fn(logits, labels)
    else:
        trained = list(model.named_parameters())

        def loss_of(mask: None) -> torch.Tensor:
            return model(input_ids=raw["input_ids"], attention_mask=raw["attention_mask"],
                         token_type_ids=raw["token_type_ids"], labels=labels).loss

    opt = torch_adamw(trained)
    params = [p for _, p in trained]

    def run(mask: list[bool] | None) -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch_autocast(case, device):
            loss = loss_of(mask)
        if loss.requires_grad:  # a Theseus step with no successor drawn trains nothing
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        loss.detach().item()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run.optimizer = type(opt).__name__ + (" fused" if opt.defaults.get("fused") else " foreach")  # type: ignore[attr-defined]
    return run


def torch_forwards(case: Case, device: str) -> dict[int, Callable[[], float]]:
    import torch
    import transformers

    raw = {k: torch.from_numpy(case_inputs(case)[k]).to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
    runs = {}
    for layers in case["layers"]:
        config = transformers.BertConfig(**case["model"] | {"num_hidden_layers": layers}, num_labels=2)
        model = transformers.BertForSequenceClassification(config).to(device).eval()

        def run(model=model) -> float:
            start = time.perf_counter()
            with torch.inference_mode(), torch_autocast(case, device):
                model(**raw).logits.cpu()
            return time.perf_counter() - start

        runs[layers] = run
    return runs


# --- the worker loop -------------------------------------------------------------------------


def main() -> None:
    parser = ArgumentParser()
    parser.add_argument("framework", choices=["jax", "torch"])
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    held: dict[str, Any] = {}

    if args.framework == "torch":
        import torch
        import transformers

        torch.set_num_threads(args.threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        info = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    else:
        from theseus_jax import memory

        memory.configure_memory()  # as launch.py does, before JAX starts its threads
        import jax

        info = {"device": jax.devices()[0].device_kind, "versions": {"jax": jax.__version__}}

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "setup":
            case = request["case"]
            start = time.perf_counter()
            reply: dict[str, Any] = dict(info)
            if case["kind"] == "forward":
                if args.framework == "jax":
                    held["forwards"], reply["compile_s"] = jax_forwards(case)
                else:
                    held["forwards"] = torch_forwards(case, device)
                reply["first_s"] = {layers: run() for layers, run in held["forwards"].items()}
            elif args.framework == "jax":
                held["run"], held["next_mask"], reply["compile_s"] = jax_case(case)
                reply["first_mask"] = held["next_mask"]()
                reply["first_s"] = held["run"]()
            else:
                held["run"] = torch_case(case, device)
                reply["optimizer"] = held["run"].optimizer
                reply["first_s"] = held["run"](request.get("mask"))
            reply["setup_s"] = time.perf_counter() - start
            return reply
        if op == "steps":  # JAX: `count` steps, reporting their masks; torch: the given masks
            if args.framework == "jax":
                masks, times = [], []
                for _ in range(request["count"]):
                    masks.append(held["next_mask"]())
                    times.append(held["run"]())
                return {"times": times, "masks": masks}
            return {"times": [held["run"](mask) for mask in request["masks"]]}
        if op == "trace":  # JAX: "steps" under the profiler; the trace and the step's HLO go to `dir`
            import jax

            Path(request["dir"], "step.hlo.txt").write_text(held["run"].hlo_text())
            with jax.profiler.trace(request["dir"], create_perfetto_trace=True):
                return handle({"op": "steps", "count": request["count"]})
        if op == "forwards":  # each layer count `count` times, interleaved
            times: dict[int, list[float]] = {layers: [] for layers in held["forwards"]}
            for _ in range(request["count"]):
                for layers, run in held["forwards"].items():
                    times[layers].append(run())
            return {"times": times}
        if op == "ceiling":
            return {"gflops": matmul_ceiling_gflops()}
        if op == "lone_dots":  # JAX: each dot of `dots` ({lhs, rhs, dimension_numbers}) alone
            return {"seconds": [lone_dot_seconds(**d) for d in request["dots"]], "ceiling_gflops": matmul_ceiling_gflops()}
        if op == "memory":
            return {"peak_rss_mib": peak_rss_mib()}
        raise ValueError(f"unknown op {op!r}")

    serve(handle)


if __name__ == "__main__":
    main()
