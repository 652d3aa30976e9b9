"""Reading an XLA CPU profile: which HLO ops a jitted step spends its time in.

Two inputs, parsed without running anything: the events of a `jax.profiler.trace` Perfetto
trace (one "X" event per executed thunk, `args.hlo_op` naming the HLO instruction, an
"end: <op>" event when an asynchronous thunk completes) and the optimized HLO text of the
same executable (`compiled.as_text()`, equal to the `--xla_dump_to` after-optimizations
dump). The HLO gives each traced op a category (matmul by operand layout, RNG, LayerNorm,
...) and, for dots, shapes and FLOPs.

Timing caveats, which the numbers carry: a thunk's own duration ("busy") is what the
executor spent in it; XLA's plain Eigen `dot` thunks return before their work is done, so
their busy time is far too small, and their issue-to-completion span (start to "end:")
is an upper bound that overlaps whatever else ran meanwhile. Independent thunks also run
concurrently, so summed busy time can differ from the step's wall time.
"""

from __future__ import annotations

import collections
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from theseus_jax.models.dense import WEIGHT_GRADIENT_SCOPE

# Ops whose bodies are traced thunk by thunk: counting the op itself too would count twice.
CONTROL_FLOW = frozenset({"while", "conditional", "call"})
# Opcodes that only move or rearrange data (a fusion made of these alone is a copy).
DATA_MOVEMENT = frozenset({
    "copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "dynamic-slice", "dynamic-update-slice",
    "concatenate", "pad", "parameter", "constant", "tuple", "get-tuple-element",
})
RNG = "RNG (threefry: dropout bits)"
DATA = "data movement (copy, transpose, broadcast)"
OTHER = "other elementwise / reduce"
GELU, LAYER_NORM, SOFTMAX = "GELU", "LayerNorm", "softmax"
_RNG_NAMES = re.compile(r"threefry|random_bits|jit\(_(?:bernoulli|uniform)\)")  # jax.random's op names

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[^\s(]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+)\s*=\s*(?P<shape>.+?)\s+(?P<opcode>[a-z][a-z0-9\-]*)\((?P<rest>.*)$")
_CALLEE = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_CALLEE_LIST = re.compile(r"\b(?:calls|branch_computations|called_computations)=\{([^}]*)\}")


@dataclass(frozen=True)
class Dot:
    """One dot instruction: shapes without layouts, role by operand layout, GFLOP per run, and
    `lax.dot_general`'s dimension numbers ((lhs, rhs contracting), (lhs, rhs batch)) to rerun it."""

    output: str
    lhs: str
    rhs: str
    role: str
    gflop: float
    dimension_numbers: tuple[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class Op:
    """A traced HLO instruction: what it computes and which kernel runs it."""

    opcode: str
    category: str
    kernel: str
    dots: tuple[Dot, ...] = ()


@dataclass
class OpTime:
    """Totals over all executions of one op in the trace (microseconds)."""

    count: int = 0
    busy_us: float = 0.0
    span_us: float = 0.0


@dataclass
class _Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attributes: str
    callees: list[str]
    op_names: list[str]
    computation: str


# --- trace events ---------------------------------------------------------------------------------


def trace_op_times(events: Iterable[dict[str, Any]], module: str | None = None) -> tuple[str, int, dict[str, OpTime]]:
    """(module, executions of it, per-op totals) from Perfetto trace events.

    `module` defaults to the HLO module with the most busy time; executions are its distinct
    `run_id`s. A start is paired with the next "end: <op>" event of the same name.
    """
    events = sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e.get("ts", 0.0))
    if module is None:
        busy: collections.Counter[str] = collections.Counter()
        for e in events:
            if "hlo_module" in e.get("args", {}):
                busy[e["args"]["hlo_module"]] += e.get("dur", 0.0)
        if not busy:
            raise ValueError("the trace holds no XLA op events")
        module = busy.most_common(1)[0][0]
    times: dict[str, OpTime] = collections.defaultdict(OpTime)
    pending: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
    runs = set()
    for e in events:
        name, args = e["name"], e.get("args", {})
        if name.startswith("end: "):
            starts = pending.get(name[len("end: "):])
            if starts:
                times[name[len("end: "):]].span_us += e["ts"] - starts.popleft()
        elif args.get("hlo_module") == module:
            op = times[name]
            op.count += 1
            op.busy_us += e.get("dur", 0.0)
            pending[name].append(e["ts"])
            runs.add(args.get("run_id"))
    for name, starts in pending.items():  # no end event: the thunk finished when it returned
        times[name].span_us += len(starts) * times[name].busy_us / max(times[name].count, 1)
    return module, len(runs), dict(times)


# --- optimized HLO text ---------------------------------------------------------------------------


def _split_top_level(text: str) -> tuple[list[str], str]:
    """Operands of `op(a, b), attrs` (text after the opening parenthesis) and the rest."""
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                parts.append(text[start:i])
                return [p.strip() for p in parts if p.strip()], text[i + 1:]
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [p.strip() for p in parts if p.strip()], ""


def _plain_shape(shape: str) -> str:
    """`f32[2048,768]{1,0}` -> `f32[2048,768]` (layouts dropped)."""
    return re.sub(r"\{[^}]*\}", "", shape).strip()


def _dims(shape: str) -> list[int]:
    match = re.search(r"\[([\d,]*)\]", shape)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def element_type_and_dims(shape: str) -> tuple[str, list[int]]:
    """("f32", [768, 2048]) of an HLO array shape "f32[768,2048]"."""
    return shape.split("[", 1)[0], _dims(shape)


def _dim_list(attributes: str, key: str) -> list[int]:
    match = re.search(rf"\b{key}=\{{([\d,]*)\}}", attributes)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def _parse_instructions(text: str) -> dict[str, _Instruction]:
    """Every instruction of every computation in an HLO module's text, by name."""
    instructions: dict[str, _Instruction] = {}
    computation = None
    for line in text.splitlines():
        if computation is None:
            header = _COMPUTATION.match(line)
            if header and not line[:1].isspace():
                computation = header.group("name")
            continue
        if line.strip() == "}":
            computation = None
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        operands, attributes = _split_top_level(match.group("rest"))
        callees = _CALLEE.findall(attributes)
        for group in _CALLEE_LIST.findall(attributes):
            callees += [c.strip().lstrip("%") for c in group.split(",") if c.strip()]
        instructions[match.group("name")] = _Instruction(
            name=match.group("name"), shape=match.group("shape"), opcode=match.group("opcode"),
            operands=operands, attributes=attributes, callees=callees,
            op_names=re.findall(r'op_name="([^"]*)"', attributes), computation=computation,
        )
    return instructions


def _role(dot: _Instruction, lhs_rank: int, rhs_rank: int) -> str:
    """Which Dense-layer product a dot is: the model's weight gradients by their name scope
    (they take the forward's layout, see models.dense), the others by contracting dimensions."""
    if any(re.search(rf"\b{WEIGHT_GRADIENT_SCOPE}\b", name) for name in dot.op_names):
        return "X^T.dY (dW)"
    if _dim_list(dot.attributes, "lhs_batch_dims"):
        return "batched (attention)"
    lhs, rhs = _dim_list(dot.attributes, "lhs_contracting_dims"), _dim_list(dot.attributes, "rhs_contracting_dims")
    lhs_last, rhs_last = lhs == [lhs_rank - 1], rhs == [rhs_rank - 1]
    if lhs_last and rhs == [0]:
        return "x.W (forward)"
    if lhs_last and rhs_last:
        return "dY.W^T (dX)"
    if lhs == [0]:  # contracting over the tokens: a weight gradient (dY may come transposed)
        return "X^T.dY (dW)"
    return "other layout"


def category(opcodes: frozenset[str], names: Sequence[str]) -> str:
    """The category of a non-matmul op from the opcodes and op names it holds (with those of
    the computations it calls); first match wins.

    RNG: threefry's xor, or nothing but jax.random op names; when XLA fused the dropout
    bits with their consumer (softmax, GELU, LayerNorm), "RNG + <consumer>". Then embedding
    gradient (scatter, or by op name the gradient of `jnp.take`: the dense zeros), optimizer
    (op names all outside JAX's autodiff, no `jvp(`), data movement, GELU (erf, or an op
    name saying erf: XLA expands erfc into exponentials), LayerNorm (rsqrt or its module
    name), softmax (exponential), other elementwise/reduce.
    """
    if names and all(_RNG_NAMES.search(n) for n in names):
        return RNG
    if "xor" in opcodes:
        rest = category(opcodes - {"xor"}, [n for n in names if not _RNG_NAMES.search(n)])
        return f"{RNG} + {rest}" if rest in (GELU, LAYER_NORM, SOFTMAX) else RNG
    if "scatter" in opcodes or (names and all("transpose(jvp(" in n and "jit(_take)" in n for n in names)):
        return "embedding gradient (zeros + scatter)"
    if names and not any("jvp(" in n for n in names):
        return "optimizer (AdamW, clipping)"
    if opcodes <= DATA_MOVEMENT:
        return DATA
    if "erf" in opcodes or any(re.search(r"/(erfc?|gelu)$", n) for n in names):
        return GELU
    if "rsqrt" in opcodes or any("LayerNorm" in n for n in names):
        return LAYER_NORM
    if "exponential" in opcodes:
        return SOFTMAX
    return OTHER


def parse_hlo(text: str) -> dict[str, Op]:
    """Each instruction of an optimized HLO module -> its category, kernel and dots.

    An op holding a dot is a matmul of that dot's role, "+ <category>" when XLA fused more
    into it (YNNPACK fuses the softmax into the attention dot); an op inside a loop that only
    generates random bits (threefry's rolled rounds) is RNG; anything else goes by `category`.
    """
    instructions = _parse_instructions(text)
    by_computation: dict[str, list[_Instruction]] = collections.defaultdict(list)
    for instruction in instructions.values():
        by_computation[instruction.computation].append(instruction)
    callers = {callee: ins for ins in instructions.values() if ins.opcode in CONTROL_FLOW for callee in ins.callees}

    @functools.cache
    def computation_scope(name: str) -> tuple[frozenset[str], tuple[str, ...]]:
        """Opcodes and op names of a computation and everything it calls."""
        opcodes, names = set(), []
        for ins in by_computation.get(name, []):
            inner, more = scope(ins.name)
            opcodes |= inner
            names += more
        return frozenset(opcodes), tuple(names)

    @functools.cache
    def scope(name: str) -> tuple[frozenset[str], tuple[str, ...]]:
        ins = instructions[name]
        opcodes, names = ({ins.opcode} - {"fusion"}), list(ins.op_names)  # a fusion is what it fuses
        for callee in ins.callees:
            inner, more = computation_scope(callee)
            opcodes |= inner
            names += more
        return frozenset(opcodes), tuple(names)

    def inside_rng_loop(ins: _Instruction) -> bool:
        """Inside a loop (or call) that only makes random bits; a Theseus layer's conditional,
        which holds dots, is no such thing."""
        caller = callers.get(ins.computation)
        while caller is not None:
            opcodes, names = scope(caller.name)
            if "dot" not in opcodes and category(opcodes, names).startswith(RNG):
                return True
            caller = callers.get(caller.computation)
        return False

    @functools.cache
    def called_dots(computation: str) -> tuple[_Instruction, ...]:
        return tuple(d for ins in by_computation.get(computation, []) for d in dots_under(ins))

    def dots_under(ins: _Instruction) -> tuple[_Instruction, ...]:
        return (ins,) if ins.opcode == "dot" else tuple(d for c in ins.callees for d in called_dots(c))

    def operand_shape(operand: str) -> str:
        """An operand's shape: printed with it, or that of the instruction it names."""
        *shape, name = operand.split()
        return " ".join(shape) if shape else instructions[name.lstrip("%")].shape

    def dot(ins: _Instruction) -> Dot:
        lhs, rhs = (_plain_shape(operand_shape(o)) for o in ins.operands[:2])
        dims = {key: tuple(_dim_list(ins.attributes, key)) for key in (
            "lhs_contracting_dims", "rhs_contracting_dims", "lhs_batch_dims", "rhs_batch_dims")}
        k = math.prod(_dims(lhs)[i] for i in dims["lhs_contracting_dims"])
        return Dot(_plain_shape(ins.shape), lhs, rhs, _role(ins, len(_dims(lhs)), len(_dims(rhs))),
                   2 * math.prod(_dims(ins.shape)) * k / 1e9,
                   ((dims["lhs_contracting_dims"], dims["rhs_contracting_dims"]),
                    (dims["lhs_batch_dims"], dims["rhs_batch_dims"])))

    ops = {}
    for ins in instructions.values():
        opcodes, names = scope(ins.name)
        dots = tuple(dot(d) for d in dots_under(ins)) if "dot" in opcodes else ()
        if dots:
            fused = category(opcodes - {"dot"}, names)
            name = f"matmul {dots[0].role}" + ("" if fused in (OTHER, DATA) else f" + {fused}")
        elif inside_rng_loop(ins):
            name = RNG
        else:
            name = category(opcodes, names)
        kind = re.search(r'"kind":"(\w+)"', ins.attributes)
        ops[ins.name] = Op(ins.opcode, name, ins.opcode + (f" {kind.group(1)}" if kind else ""), dots)
    return ops


# --- joining the two ------------------------------------------------------------------------------


@dataclass
class Row:
    """Per-step totals of a group of ops (a category, or dots of one shape and role)."""

    count: float = 0.0
    busy_ms: float = 0.0
    span_ms: float = 0.0
    gflop: float = 0.0
    kernels: set[str] = field(default_factory=set)


@dataclass
class StepProfile:
    """Per-step time by category and by dot shape, from one trace and its HLO."""

    categories: dict[str, Row]
    dots: dict[tuple[str, str], Row]
    busy_ms: float
    unmatched_ms: float
    dot_specs: dict[tuple[str, str], Dot]  # one Dot per `dots` key


def step_profile(times: dict[str, OpTime], ops: dict[str, Op], executions: int) -> StepProfile:
    """Totals per step (divided by `executions`); control-flow ops are left out (their bodies
    are traced op by op), traced names missing from the HLO are summed as unmatched. A fusion
    with several dots splits its time between them by FLOPs."""
    categories: dict[str, Row] = collections.defaultdict(Row)
    dots: dict[tuple[str, str], Row] = collections.defaultdict(Row)
    specs: dict[tuple[str, str], Dot] = {}
    busy = unmatched = 0.0
    for name, t in times.items():
        count, busy_ms, span_ms = t.count / executions, t.busy_us / 1e3 / executions, t.span_us / 1e3 / executions
        op = ops.get(name)
        if op is None:
            unmatched += busy_ms
            continue
        if op.opcode in CONTROL_FLOW:
            continue
        busy += busy_ms
        row = categories[op.category]
        row.count += count
        row.busy_ms += busy_ms
        row.span_ms += span_ms
        row.kernels.add(op.kernel)
        total = sum(d.gflop for d in op.dots)
        for d in op.dots:
            share = d.gflop / total if total else 1 / len(op.dots)
            row.gflop += d.gflop * count
            key = (f"{d.output} <- {d.lhs} x {d.rhs}", d.role)
            specs.setdefault(key, d)
            drow = dots[key]
            drow.count += count
            drow.busy_ms += busy_ms * share
            drow.span_ms += span_ms * share
            drow.gflop += d.gflop * count
            drow.kernels.add(op.kernel)
    return StepProfile(dict(categories), dict(dots), busy, unmatched, specs)
