"""Hugging Face BERT checkpoints <-> Flax parameter trees of `theseus_jax.models.bert`.

The Flax modules carry Hugging Face's submodule names, so the mapping is a handful of
per-part rules (`hf_to_flax` / `flax_to_hf`):

    HF name part                          Flax path part
    bert.                                 bert/               (dropped for head="none")
    encoder.layer.{i}                     encoder/layer_{i}
    *_embeddings.weight                   *_embeddings/embedding
    LayerNorm.weight | .gamma             LayerNorm/scale
    LayerNorm.bias   | .beta              LayerNorm/bias
    <linear>.weight  (out, in)            <linear>/kernel     (in, out): transposed
    <linear>.bias, cls.predictions.bias   .../bias

Loading is strict: every tensor is checked against the shapes `jax.eval_shape` gives
for the Flax module, and anything unknown, mis-shaped or missing from the embeddings
or encoder is an error naming the file and the tensor. Only heads (pooler, MLM head,
classifier) may be absent; they are initialised and logged, as transformers does.

CLI: `python -m theseus_jax.convert --check PATH` loads a checkpoint, prints a summary
and, with torch installed, the largest difference to transformers' hidden states.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from theseus_jax import atomic
from theseus_jax.errors import CheckpointError, MissingCheckpoint, run_cli
from theseus_jax.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel

log = logging.getLogger("theseus_jax")

Head = Literal["mlm", "classification", "none"]
Path_ = tuple[str, ...]
Params = dict[str, Any]

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")

_ARCHITECTURES = {"mlm": "BertForMaskedLM", "classification": "BertForSequenceClassification", "none": "BertModel"}
# Parts of a checkpoint this model has no use for: BertForPreTraining's next-sentence head.
_IGNORED_PREFIXES = ("cls.seq_relationship.",)
# Decoder tensors HF ties to others (older transformers versions wrote them out anyway).
_TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}
# Top-level parts that may be missing from a checkpoint and are then initialised.
_INITIALISABLE = {("bert", "pooler"), ("cls",), ("classifier",)}


# --- The name mapping --------------------------------------------------------------


def _flax_path(name: str) -> Path_:
    """`bert.encoder.layer.0.output.dense.weight` -> `(bert, encoder, layer_0, output, dense, kernel)`."""
    *parent, leaf = re.sub(r"(^|\.)encoder\.layer\.(\d+)\.", r"\1encoder.layer_\2.", name).split(".")
    if leaf == "gamma" or (leaf == "weight" and parent[-1:] == ["LayerNorm"]):
        leaf = "scale"
    elif leaf == "beta":
        leaf = "bias"
    elif leaf == "weight":
        leaf = "embedding" if parent and parent[-1].endswith("_embeddings") else "kernel"
    return (*parent, leaf)


def _hf_name(path: Path_) -> str:
    """Inverse of `_flax_path` (HF's current spelling: `weight`, never `gamma`)."""
    *parent, leaf = path
    leaf = "weight" if leaf in ("kernel", "embedding", "scale") else leaf
    return re.sub(r"(^|\.)layer_(\d+)(?=\.)", r"\1layer.\2", ".".join((*parent, leaf)))


def hf_to_flax(tensors: Mapping[str, np.ndarray]) -> dict[Path_, np.ndarray]:
    """HF names -> Flax paths, linear weights transposed to kernels."""
    flat: dict[Path_, np.ndarray] = {}
    source: dict[Path_, str] = {}
    for name, value in tensors.items():
        path = _flax_path(name)
        if path in flat:
            raise ValueError(f"tensors {source[path]!r} and {name!r} are the same parameter {'/'.join(path)}")
        flat[path], source[path] = (value.T if path[-1] == "kernel" else value), name
    return flat


def flax_to_hf(flat: Mapping[Path_, Any]) -> dict[str, np.ndarray]:
    """Flax paths -> HF names, kernels transposed to (out, in) linear weights."""
    hf = {}
    for path, value in flat.items():
        hf[_hf_name(path)] = np.asarray(value).T if path[-1] == "kernel" else np.asarray(value)
    return hf


# --- Expected parameter trees -------------------------------------------------------


def _module(config: BertConfig, head: Head) -> Any:
    return {"mlm": BertForMaskedLM, "classification": BertForSequenceClassification, "none": BertModel}[head](config)


def _dummy_ids() -> jax.Array:
    return jnp.zeros((1, 1), jnp.int32)


def _expected_shapes(config: BertConfig, head: Head) -> dict[Path_, tuple[int, ...]]:
    """Shapes of the module's parameters, always with the `bert` prefix of the heads."""
    variables = jax.eval_shape(_module(config, head).init, jax.random.key(0), _dummy_ids())
    flat = traverse_util.flatten_dict(variables["params"])
    prefix: Path_ = ("bert",) if head == "none" else ()
    return {prefix + path: tuple(leaf.shape) for path, leaf in flat.items()}


def _hf_shape(path: Path_, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[::-1] if path[-1] == "kernel" else shape


def _initialisable(path: Path_) -> bool:
    return path[:1] in _INITIALISABLE or path[:2] in _INITIALISABLE


# --- Loading ------------------------------------------------------------------------


def _read_config(folder: Path) -> dict[str, Any]:
    config_file = folder / CONFIG_FILE
    if not folder.is_dir():
        raise MissingCheckpoint(f"{folder}: no such checkpoint folder")
    if not config_file.is_file():
        raise MissingCheckpoint(f"{config_file}: missing; a Hugging Face checkpoint folder needs its config.json")
    d = json.loads(config_file.read_text())
    model_type = d.get("model_type")
    if model_type != "bert":
        raise CheckpointError(f"{config_file}: model_type={model_type!r}, only 'bert' checkpoints convert")
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{config_file}: position_embedding_type={d['position_embedding_type']!r} is not supported")
    return d


def _read_tensors(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The weights file and its tensors as numpy arrays (torch only for `.bin` files)."""
    if (folder / SAFETENSORS_FILE).is_file():
        from safetensors.numpy import load_file

        weights_file = folder / SAFETENSORS_FILE
        tensors = load_file(str(weights_file))
    elif (folder / PYTORCH_FILE).is_file():
        import torch

        weights_file = folder / PYTORCH_FILE
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        tensors = {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}
    else:
        raise MissingCheckpoint(f"{folder}: no weights file ({SAFETENSORS_FILE} or {PYTORCH_FILE})")
    return weights_file, tensors


def _canonical(tensors: dict[str, np.ndarray], weights_file: Path) -> dict[str, np.ndarray]:
    """Adds the `bert.` prefix, drops buffers and the NSP head, checks tied decoder tensors."""
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if name.endswith("embeddings.position_ids"):
            continue
        if name.startswith(_IGNORED_PREFIXES):
            log.info("%s: ignoring %s (next-sentence head, unused here)", weights_file, name)
            continue
        key = name if name.startswith(("bert.", "cls.", "classifier.")) else f"bert.{name}"
        if key in out:
            raise CheckpointError(f"{weights_file}: tensor {name!r} appears both with and without the 'bert.' prefix")
        out[key] = value
    for tied, target in _TIED.items():
        if tied not in out:
            continue
        value = out.pop(tied)
        if target not in out and tied.endswith("bias"):
            out[target] = value
        elif target in out and not np.array_equal(out[target], value):
            raise ValueError(
                f"{weights_file}: tensor {tied!r} differs from {target!r}; the decoder is tied here, "
                "an untied checkpoint cannot be represented"
            )
    return out


def load_hf_checkpoint(
    path: str | os.PathLike, head: Head = "mlm", num_labels: int | None = None, seed: int = 0
) -> tuple[BertConfig, Params]:
    """Reads a Hugging Face BERT folder (`config.json` + safetensors or `pytorch_model.bin`).

    Returns the config and the parameters of `BertForMaskedLM` (head="mlm"),
    `BertForSequenceClassification` ("classification") or `BertModel` ("none").
    `num_labels=None` takes the count from `config.json`. A head the checkpoint lacks
    (pooler, MLM head, classifier) is initialised from `seed` and logged; every other
    irregularity raises an error that names the file and the tensor.
    """
    if head not in _ARCHITECTURES:
        raise ValueError(f"head={head!r}; expected one of {sorted(_ARCHITECTURES)}")
    folder = Path(path)
    hf_config = _read_config(folder)
    try:
        config = BertConfig.from_hf_dict(hf_config, num_labels=num_labels)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE}: {err}") from err
    weights_file, raw = _read_tensors(folder)
    loaded = hf_to_flax(_canonical(raw, weights_file))

    expected = _expected_shapes(config, head)
    known = expected | _expected_shapes(config, "mlm") | _expected_shapes(config, "classification")
    unknown = sorted(_hf_name(p) for p in loaded if p not in known)
    if unknown:
        raise CheckpointError(f"{weights_file}: unknown tensors for a BERT of this config.json: {unknown}")
    unused = sorted(_hf_name(p) for p in loaded if p not in expected)
    if unused:
        log.info("%s: not used by head=%r, skipped: %s", weights_file, head, unused)

    params: dict[Path_, jax.Array] = {}
    for p, value in loaded.items():
        if p not in expected:
            continue
        if value.shape != expected[p]:
            raise ValueError(
                f"{weights_file}: tensor {_hf_name(p)!r} has shape {_hf_shape(p, value.shape)}, "
                f"config.json implies {_hf_shape(p, expected[p])}"
            )
        params[p] = jnp.asarray(value, dtype=jnp.float32)

    missing = [p for p in expected if p not in params]
    required = sorted(_hf_name(p) for p in missing if not _initialisable(p))
    if required:
        raise CheckpointError(f"{weights_file}: missing tensors: {required}")
    if missing:
        log.warning("%s: initialising from seed %d: %s", weights_file, seed, sorted(_hf_name(p) for p in missing))
        init = _module(config, head).init(jax.random.key(seed), _dummy_ids())["params"]
        init_flat = traverse_util.flatten_dict(init if head != "none" else {"bert": init})
        params.update({p: init_flat[p] for p in missing})

    tree = traverse_util.unflatten_dict(params)
    return config, tree["bert"] if head == "none" else tree


# --- Saving -------------------------------------------------------------------------


def _head_of(params: Params) -> Head:
    if "cls" in params:
        return "mlm"
    if "classifier" in params:
        return "classification"
    if "embeddings" in params:
        return "none"
    raise ValueError(f"params with top-level keys {sorted(params)} are not a BERT model or head")


def save_hf_checkpoint(
    config: BertConfig, params: Params, path: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None
) -> Path:
    """Writes a folder that `transformers`' `from_pretrained` loads with no missing keys.

    The architecture follows the params (`cls` -> BertForMaskedLM, `classifier` ->
    BertForSequenceClassification, else BertModel). The tied decoder is not written, as
    transformers itself does. The folder is built beside `path` and renamed into place,
    so a crash never leaves a half-written checkpoint; an existing `path` is replaced.
    """
    head = _head_of(params)
    expected = _expected_shapes(config, head)
    flat = traverse_util.flatten_dict(params if head != "none" else {"bert": params})
    got = {p: tuple(np.shape(v)) for p, v in flat.items()}
    if got != expected:
        bad = sorted("/".join(p) for p in got.keys() | expected.keys() if got.get(p) != expected.get(p))
        raise ValueError(f"params do not match the config ({_ARCHITECTURES[head]}): {bad}")
    if head == "none":
        flat = {p[1:]: v for p, v in flat.items()}
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in flax_to_hf(flat).items()}

    target = Path(path)
    tokenizer_files = []
    if tokenizer_dir is not None:
        tokenizer_files = [Path(tokenizer_dir) / f for f in TOKENIZER_FILES if (Path(tokenizer_dir) / f).is_file()]
        if not any(f.name in ("tokenizer.json", "vocab.txt") for f in tokenizer_files):
            raise MissingCheckpoint(f"{tokenizer_dir}: no tokenizer.json or vocab.txt to copy")

    from safetensors.numpy import save_file

    with atomic.replace_dir(target) as staging:
        hf_config = config.to_hf_dict() | {"architectures": [_ARCHITECTURES[head]]}
        (staging / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(staging / SAFETENSORS_FILE), metadata={"format": "pt"})
        for f in tokenizer_files:
            shutil.copy2(f, staging / f.name)
    return target


# --- CLI ----------------------------------------------------------------------------

_CHECK_SENTENCES = (
    "Theseus replaced the planks of his ship one by one.",
    "Is it still the same ship?",
)


def _parity_report(folder: Path, config: BertConfig, params: Params) -> float | None:
    """Max abs difference of every hidden state (and the pooler) to transformers' BertModel."""
    try:
        import torch
        import transformers
    except ImportError:
        print("torch not installed: parity check skipped")
        return None
    from theseus_jax.tokenization import load_tokenizer

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    tokenizer = load_tokenizer(folder)
    batch = tokenizer(list(_CHECK_SENTENCES), padding=True, return_tensors="np")
    types = batch.get("token_type_ids", np.zeros_like(batch["input_ids"]))
    ours = BertModel(config).apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], types, output_hidden_states=True
    )
    model, info = transformers.BertModel.from_pretrained(str(folder), output_loading_info=True)
    model.eval()
    with torch.no_grad():
        theirs = model(
            input_ids=torch.from_numpy(batch["input_ids"]),
            attention_mask=torch.from_numpy(batch["attention_mask"]),
            token_type_ids=torch.from_numpy(types),
            output_hidden_states=True,
        )
    diffs = [float(np.max(np.abs(np.asarray(a) - b.numpy()))) for a, b in zip(ours.hidden_states, theirs.hidden_states)]
    print("max abs diff per hidden state (embeddings, layer 1..n):", " ".join(f"{d:.2e}" for d in diffs))
    if not any(k.startswith("pooler") for k in info["missing_keys"]):
        pooler = float(np.max(np.abs(np.asarray(ours.pooler_output) - theirs.pooler_output.numpy())))
        print(f"max abs diff of the pooler output: {pooler:.2e}")
        diffs.append(pooler)
    return max(diffs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m theseus_jax.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--check", metavar="PATH", required=True, help="Hugging Face BERT checkpoint folder")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest max abs diff that passes")
    args = parser.parse_args(argv)

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    folder = Path(args.check)
    config, params = load_hf_checkpoint(folder, head="none")
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(
        f"{folder}: BERT {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, intermediate {config.intermediate_size}, "
        f"vocab {config.vocab_size}, act {config.hidden_act}; {count:,} parameters (BertModel)"
    )
    worst = _parity_report(folder, config, params)
    if worst is not None and worst > args.tolerance:
        print(f"FAIL: max abs diff {worst:.2e} > tolerance {args.tolerance:.0e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m theseus_jax.convert"))
