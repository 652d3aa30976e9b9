"""Inference results as a figure and a BENCHMARKS.md section (title, plot, tables).

The input is one store of `benchmarks.bench_inference` ({backend: {meta, speedup,
frameworks}}): the built-in pairs' (with JAX vs PyTorch) or a user's pair's, whose meta
carries a `pair` entry naming its models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from theseus_jax import atomic

BUILT_IN_WEIGHTS = "Weights: bert-base random, MiniLM packaged; successor = predecessor layers 0, 2, 4, ..."


def section_title(meta: dict[str, Any]) -> str:
    """One section per store: the built-in pairs' title, or the user's pair's name."""
    subject = meta["pair"]["name"] if "pair" in meta else "successor speedup and JAX vs PyTorch"
    return f"Inference on {meta['backend'].upper()}: {subject}"


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
    atomic.save_figure(fig, path, dpi=90)
    plt.close(fig)


def weights(meta: dict[str, Any]) -> str:
    """Where the models came from: the built-in pairs, or the user's folders (or Hub IDs)."""
    if "pair" not in meta:
        return BUILT_IN_WEIGHTS
    pair = meta["pair"]
    return (f"Weights: predecessor `{pair['predecessor']}`; successor {pair['successor']}; each model tokenizes with its "
            "own folder's tokenizer (a classifier head a checkpoint lacks is random: timing only).")


def markdown(result: dict[str, Any], notes: str, image: str) -> str:
    """The BENCHMARKS.md section body for one backend's results; `image`: the plot's path from the Markdown file."""
    meta, rows, frameworks = result["meta"], result["speedup"], result["frameworks"]
    budget = (f"at least {meta['min_reps']} calls and until {meta['budget_s']:g} s per case are spent" if meta["quick"]
              else f"{meta['min_reps']} calls")
    ran = {s for sets in meta["plan"].values() for s, ns in sets.items() if ns}
    shared = "" if "pair" in meta else " (other engineers' jobs shared the cores)"
    derived = [d for name, d in (("medium", "medium = 3 random tweets joined"), ("long", "long = 25 (truncated to 512 tokens)")) if name in ran]
    plan = "; ".join(f"{pair}: " + ", ".join(f"{s} n={'/'.join(map(str, ns))}" for s, ns in sets.items()) for pair, sets in meta["plan"].items())
    lines = [
        f"Machine: {meta['machine']}; device {meta['device']}; jaxlib (XLA) {meta['jaxlib_xla']}; {meta['threads']} threads; "
        f"{meta['dtype']}; 1-minute load average {meta['load_before']:.1f} before, {meta['load_after']:.1f} after{shared}.",
        f"What ran ({'--quick' if meta['quick'] else '--full'}): {plan}. Per case: one warm-up call per model and mode, then "
        f"{meta['rounds']} interleaved rounds, each timing predecessor chain, predecessor forward, successor chain, successor "
        f"forward for {budget}, at most {meta['reps']} calls per model and mode in all (`reps` = calls per model and mode). "
        f"Texts: {meta['texts']}{'; ' + ', '.join(derived) if derived else ''}. {weights(meta)}",
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
    lines += ["", f"![inference]({image})", "", notes]
    return "\n".join(lines)
