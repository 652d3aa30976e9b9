"""Hugging Face encoder checkpoints <-> Flax parameter trees of `theseus_jax.models.bert`.

The Flax modules carry Hugging Face BERT's submodule names, so the mapping is a handful of
per-part rules (`hf_to_flax` / `flax_to_hf`):

    HF name part                          Flax path part
    bert.                                 bert/               (dropped for head="none")
    encoder.layer.{i}                     encoder/layer_{i}
    *_embeddings.weight                   *_embeddings/embedding
    LayerNorm.weight | .gamma             LayerNorm/scale
    LayerNorm.bias   | .beta              LayerNorm/bias
    <linear>.weight  (out, in)            <linear>/kernel     (in, out): transposed
    <linear>.bias, cls.predictions.bias   .../bias

Other families (RoBERTa, XLM-R, ELECTRA, DistilBERT) first rename their tensors to BERT's
names with their table in `theseus_jax.models.families` (`roberta.` -> `bert.`,
`lm_head.dense` -> `cls.predictions.transform.dense`, DistilBERT's `q_lin` ->
`attention.self.query`, ...), and back on saving, so a model is written in the family it
came from.

Loading is strict: every tensor is checked against the shapes `jax.eval_shape` gives
for the Flax module, and anything unknown, mis-shaped or missing from the embeddings
or encoder is a `CheckpointError` naming the file and the tensor. Only heads (pooler, MLM
head, classifier) may be absent; they are initialised and logged, as transformers does.
Weights may be one file or shards (`*.index.json`), safetensors or `pytorch_model.bin`.
A model is a local folder or a Hub ID (`theseus_jax.models.hub`).

CLI: `python -m theseus_jax.convert --check PATH_OR_HUB_ID` loads a checkpoint, prints a
summary and, with torch installed, the largest difference to transformers' hidden states.
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

from theseus_jax import atomic, memory
from theseus_jax.errors import ArgumentParser, CheckpointError, MissingCheckpoint, run_cli
from theseus_jax.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel
from theseus_jax.models.families import FAMILIES, Family
from theseus_jax.models.hub import resolve_model

log = logging.getLogger("theseus_jax")

Head = Literal["mlm", "classification", "none"]
Path_ = tuple[str, ...]
Params = dict[str, Any]

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"
INDEX_SUFFIX = ".index.json"
HEADS = ("mlm", "classification", "none")
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


def _bert_name(path: Path_) -> str:
    """Inverse of `_flax_path` (HF's current spelling: `weight`, never `gamma`)."""
    *parent, leaf = path
    leaf = "weight" if leaf in ("kernel", "embedding", "scale") else leaf
    return re.sub(r"(^|\.)layer_(\d+)(?=\.)", r"\1layer.\2", ".".join((*parent, leaf)))


def _rename(name: str, rules: tuple[tuple[str, str], ...], reverse: bool = False) -> str | None:
    """Applies the first matching `(family, bert)` prefix rule; None if none matches."""
    for source, target in rules:
        if reverse:
            source, target = target, source
        pattern = re.escape(source).replace(r"\{i\}", r"(\d+)") + ("" if source.endswith(".") else "$")
        match = re.match(pattern, name)
        if match:
            return (target.replace("{i}", match.group(1)) if match.groups() else target) + name[match.end() :]
    return None


def _to_bert_name(name: str, family: Family) -> str:
    """A family's tensor name as BERT's (`roberta.x` -> `bert.x`); prefix-less base-model
    names get the family prefix first. Unknown names keep their spelling (and fail later)."""
    renamed = _rename(name, family.names)
    if renamed is None:
        renamed = _rename(family.prefix + name, family.names)
    return renamed if renamed is not None else name


def _family_name(path: Path_, family: Family) -> str:
    """A Flax path as the family's Hugging Face tensor name."""
    name = _bert_name(path)
    return _rename(name, family.names, reverse=True) or name


def hf_to_flax(tensors: Mapping[str, np.ndarray]) -> dict[Path_, np.ndarray]:
    """HF BERT names -> Flax paths, linear weights transposed to kernels."""
    flat: dict[Path_, np.ndarray] = {}
    source: dict[Path_, str] = {}
    for name, value in tensors.items():
        path = _flax_path(name)
        if path in flat:
            raise CheckpointError(f"tensors {source[path]!r} and {name!r} are the same parameter {'/'.join(path)}")
        flat[path], source[path] = (value.T if path[-1] == "kernel" else value), name
    return flat


def flax_to_hf(flat: Mapping[Path_, Any], family: Family = FAMILIES["bert"]) -> dict[str, np.ndarray]:
    """Flax paths -> the family's HF names, kernels transposed to (out, in) linear weights."""
    hf = {}
    for path, value in flat.items():
        hf[_family_name(path, family)] = np.asarray(value).T if path[-1] == "kernel" else np.asarray(value)
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
    try:
        d = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_file}: not a JSON config ({err}); restore the checkpoint's config.json") from err
    model_type = d.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"{config_file}: model_type={model_type!r} is not supported; supported: {', '.join(sorted(FAMILIES))}"
        )
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{config_file}: position_embedding_type={d['position_embedding_type']!r} is not supported")
    return d


DOWNLOAD_AGAIN = "download or copy it again"


def _first_sentence(err: Exception) -> str:
    """The decoder's reason, short: torch's messages run to a paragraph."""
    text = " ".join(str(err).split())
    return text.split(". ")[0].rstrip(".")[:160]


def _read_file(file: Path) -> dict[str, np.ndarray]:
    """One safetensors or PyTorch weights file as numpy arrays (torch only for `.bin`).

    A file cut short by an interrupted download or copy (or otherwise damaged) is a
    `CheckpointError` naming it, not the decoder's traceback."""
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"{file}: damaged or incomplete safetensors file ({_first_sentence(err)}); {DOWNLOAD_AGAIN}"
            ) from err
    import pickle
    import zipfile

    import torch

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{file}: damaged or incomplete PyTorch weights file ({_first_sentence(err)}); {DOWNLOAD_AGAIN}"
        ) from err
    if not isinstance(state, Mapping) or not all(hasattr(v, "numpy") for v in state.values()):
        raise CheckpointError(f"{file}: holds no PyTorch state dict (name -> tensor); {DOWNLOAD_AGAIN}")
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}


def _weight_map(index: Path) -> dict[str, str]:
    """A shard index's tensor -> shard file map."""
    try:
        return json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: not a shard index (a JSON object with a 'weight_map')") from err


def _missing_shard(index: Path, shard: str) -> MissingCheckpoint:
    return MissingCheckpoint(f"{index}: lists shard {shard!r}, which {index.parent} lacks; {DOWNLOAD_AGAIN}")


def _check_shard(index: Path, shard: str, listed: set[str], held: set[str]) -> None:
    """A shard holding fewer tensors than its index puts there came from another download."""
    absent = sorted(listed - held)
    if absent:
        raise CheckpointError(
            f"{index.parent / shard}: lacks {len(absent)} tensors its index {index.name} puts there "
            f"(e.g. {absent[0]!r}); the shard and the index are from different downloads: {DOWNLOAD_AGAIN}"
        )


def check_weights(folder: str | Path) -> None:
    """Reads only the headers of a folder's safetensors weights (one file or an index's
    shards): a file cut short, a missing shard or a shard lacking its index's tensors is a
    `CheckpointError` before any run starts, without loading the weights. (PyTorch `.bin`
    files are checked when they are loaded.)"""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    index = folder / (SAFETENSORS_FILE + INDEX_SUFFIX)
    if (folder / SAFETENSORS_FILE).is_file():
        shards = {SAFETENSORS_FILE: set()}
    elif index.is_file():
        weight_map = _weight_map(index)
        shards = {shard: {t for t, s in weight_map.items() if s == shard} for shard in set(weight_map.values())}
    else:
        return
    for shard, listed in sorted(shards.items()):
        if not (folder / shard).is_file():
            raise _missing_shard(index, shard)
        try:
            with safe_open(str(folder / shard), "np") as f:
                held = set(f.keys())
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"{folder / shard}: damaged or incomplete safetensors file ({_first_sentence(err)}); {DOWNLOAD_AGAIN}"
            ) from err
        _check_shard(index, shard, listed, held)


def _read_tensors(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The weights file (or shard index) and all its tensors; safetensors preferred."""
    for name in (SAFETENSORS_FILE, PYTORCH_FILE):
        if (folder / name).is_file():
            return folder / name, _read_file(folder / name)
        index = folder / (name + INDEX_SUFFIX)
        if index.is_file():
            weight_map = _weight_map(index)
            tensors: dict[str, np.ndarray] = {}
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    raise _missing_shard(index, shard)
                held = _read_file(folder / shard)
                _check_shard(index, shard, {t for t, s in weight_map.items() if s == shard}, set(held))
                tensors.update(held)
            return index, tensors
    raise MissingCheckpoint(
        f"{folder}: no weights file ({SAFETENSORS_FILE} or {PYTORCH_FILE}, or their sharded {INDEX_SUFFIX})"
    )


def _canonical(tensors: dict[str, np.ndarray], weights_file: Path, family: Family) -> dict[str, np.ndarray]:
    """BERT's names with the `bert.` prefix; drops buffers and other objectives' heads,
    checks tied decoder tensors."""
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if name.endswith(("embeddings.position_ids", "embeddings.token_type_ids")):
            continue
        if name.startswith(family.ignored):
            log.info("%s: ignoring %s (a head of another objective, unused here)", weights_file, name)
            continue
        key = _to_bert_name(name, family)
        if key in out:
            raise CheckpointError(f"{weights_file}: tensor {name!r} appears both with and without the prefix {family.prefix!r}")
        out[key] = value
    for tied, target in _TIED.items():
        if tied not in out:
            continue
        value = out.pop(tied)
        if target not in out and tied.endswith("bias"):
            out[target] = value
        elif target in out and not np.array_equal(out[target], value):
            raise CheckpointError(
                f"{weights_file}: tensor {_rename(tied, family.names, reverse=True)!r} differs from "
                f"{_rename(target, family.names, reverse=True)!r}; the decoder is tied here, "
                "an untied checkpoint cannot be represented"
            )
    return out


def load_hf_checkpoint(
    path: str | os.PathLike, head: Head = "mlm", num_labels: int | None = None, seed: int = 0
) -> tuple[BertConfig, Params]:
    """Reads a Hugging Face checkpoint (a folder or Hub ID) of any supported family.

    Returns the config and the parameters of `BertForMaskedLM` (head="mlm"),
    `BertForSequenceClassification` ("classification") or `BertModel` ("none").
    `num_labels=None` takes the count from `config.json`. A head the checkpoint lacks
    (pooler, MLM head, classifier) is initialised from `seed` and logged; every other
    irregularity raises a `CheckpointError` that names the file and the tensor.
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r}; expected one of {list(HEADS)}")
    folder = resolve_model(path)
    hf_config = _read_config(folder)
    try:
        config = BertConfig.from_hf_dict(hf_config, num_labels=num_labels)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE}: {err}") from err
    family = config.family
    weights_file, raw = _read_tensors(folder)
    loaded = hf_to_flax(_canonical(raw, weights_file, family))

    def name(p: Path_) -> str:
        return _family_name(p, family)

    expected = _expected_shapes(config, head)
    known = expected | _expected_shapes(config, "mlm") | _expected_shapes(config, "classification")
    known |= _expected_shapes(config, "none")
    unknown = sorted(name(p) for p in loaded if p not in known)
    if unknown:
        raise CheckpointError(f"{weights_file}: unknown tensors for a {family.model_type} model of this config.json: {unknown}")
    unused = sorted(name(p) for p in loaded if p not in expected)
    if unused:
        log.info("%s: not used by head=%r, skipped: %s", weights_file, head, unused)

    params: dict[Path_, jax.Array] = {}
    for p, value in loaded.items():
        if p not in expected:
            continue
        if value.shape != expected[p]:
            raise CheckpointError(
                f"{weights_file}: tensor {name(p)!r} has shape {_hf_shape(p, value.shape)}, "
                f"config.json implies {_hf_shape(p, expected[p])}"
            )
        params[p] = jnp.asarray(value, dtype=jnp.float32)

    missing = [p for p in expected if p not in params]
    required = sorted(name(p) for p in missing if not _initialisable(p))
    if required:
        raise CheckpointError(f"{weights_file}: missing tensors: {required}")
    if missing:
        if head == "mlm" and family.missing_mlm_head and any(p[0] == "cls" for p in missing):
            log.warning("%s: %s", weights_file, family.missing_mlm_head)
        log.warning("%s: initialising from seed %d: %s", weights_file, seed, sorted(name(p) for p in missing))
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

    The checkpoint is of the config's family (`config.model_type`: its names, config keys
    and classes); the architecture follows the params (`cls` -> *ForMaskedLM,
    `classifier` -> *ForSequenceClassification, else the base model). The tied decoder
    is not written, as transformers itself does. The folder is built beside `path` and
    renamed into place, so a crash never leaves a half-written checkpoint; an existing
    `path` is replaced.
    """
    head = _head_of(params)
    family = config.family
    architecture = family.architectures[head]
    expected = _expected_shapes(config, head)
    flat = traverse_util.flatten_dict(params if head != "none" else {"bert": params})
    got = {p: tuple(np.shape(v)) for p, v in flat.items()}
    if got != expected:
        bad = sorted("/".join(p) for p in got.keys() | expected.keys() if got.get(p) != expected.get(p))
        raise ValueError(f"params do not match the config ({architecture}): {bad}")
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in flax_to_hf(flat, family).items()}
    if head == "none":  # base models are saved without their prefix, as transformers does
        tensors = {k.removeprefix(family.prefix): v for k, v in tensors.items()}

    target = Path(path)
    files = []
    if tokenizer_dir is not None:
        from theseus_jax.tokenization import tokenizer_files

        files = tokenizer_files(tokenizer_dir)

    from safetensors.numpy import save_file

    with atomic.replace_dir(target) as staging:
        hf_config = config.to_hf_dict() | {"architectures": [architecture]}
        (staging / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(staging / SAFETENSORS_FILE), metadata={"format": "pt"})
        for f in files:
            shutil.copy2(f, staging / f.name)
    memory.release_freed_memory()  # the export's copies: other sizes than the training steps'
    return target


# --- CLI ----------------------------------------------------------------------------

_CHECK_SENTENCES = (
    "Theseus replaced the planks of his ship one by one.",
    "Is it still the same ship?",
)


def _parity_report(folder: Path, config: BertConfig, params: Params) -> float | None:
    """Max abs difference of every hidden state (and the pooler) to transformers' base model."""
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
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if config.type_vocab_size:
        inputs["token_type_ids"] = types
    ours = BertModel(config).apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], types, output_hidden_states=True
    )
    model, info = transformers.AutoModel.from_pretrained(str(folder), output_loading_info=True)
    model.eval()
    with torch.no_grad():
        theirs = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, output_hidden_states=True)
    diffs = [float(np.max(np.abs(np.asarray(a) - b.numpy()))) for a, b in zip(ours.hidden_states, theirs.hidden_states)]
    print("max abs diff per hidden state (embeddings, layer 1..n):", " ".join(f"{d:.2e}" for d in diffs))
    if ours.pooler_output is not None and not any(k.startswith("pooler") for k in info["missing_keys"]):
        pooler = float(np.max(np.abs(np.asarray(ours.pooler_output) - theirs.pooler_output.numpy())))
        print(f"max abs diff of the pooler output: {pooler:.2e}")
        diffs.append(pooler)
    return max(diffs)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m theseus_jax.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--check", metavar="MODEL", required=True, help="checkpoint folder or Hub ID (org/name[@revision])")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest max abs diff that passes")
    args = parser.parse_args(argv)

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    folder = resolve_model(args.check)
    config, params = load_hf_checkpoint(folder, head="none")
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(
        f"{args.check}: {config.model_type} {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, intermediate {config.intermediate_size}, "
        f"vocab {config.vocab_size}, act {config.hidden_act}; {count:,} parameters ({config.family.architectures['none']})"
    )
    worst = _parity_report(folder, config, params)
    if worst is not None and worst > args.tolerance:
        print(f"FAIL: max abs diff {worst:.2e} > tolerance {args.tolerance:.0e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m theseus_jax.convert"))
