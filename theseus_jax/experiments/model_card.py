"""The model card (README.md) of an exported model folder, so `best/` uploads to the Hub as is.

Written at the end of a run, when its numbers are known: the metadata Hugging Face reads
(base_model, language and license from the source model's card or config, pipeline tag,
tags, the test metric with its selection protocol) and a short text: what the model is,
how it was made, its numbers with intervals and how to load it.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import ml_collections
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from theseus_jax import atomic
from theseus_jax.experiments import stages
from theseus_jax.models.hub import parse_hub_id
from theseus_jax.tokenization import PACKAGED_MODEL_ID

CARD_FILE = "README.md"
PIPELINE_TAGS = {"classification": "text-classification", "mlm": "fill-mask"}
THESEUS = "Theseus Compression (BERT-of-Theseus)"


def how_made(result: dict[str, Any]) -> tuple[str, bool]:
    """The card's method line and whether Theseus Compression made the model, from the run's
    stage in the registry (depth variants included) and whether it distilled."""
    stage = stages.find(result["name"]) or stages.find(result["name"], stages.PIPELINES)
    training = "masked-language-model fine-tuning" if result["objective"] == "mlm" else "downstream training"
    made_by_theseus = bool(stage and (stage.compresses or "lm_compress" in stage.starts))
    if stage and stage.compresses:
        made = (f"{THESEUS} during {training}: the successor layers replaced the base model's modules with a growing "
                "probability, then were exported alone")
    elif made_by_theseus:
        made = f"downstream training of the successor that {THESEUS} made during masked-language-model fine-tuning"
    elif stage and "truncated" in stage.starts:
        made = f"downstream training of the base model's bottom {result['parameters']['exported_layers']} layers (truncation)"
    elif result["objective"] == "mlm":
        made = "masked-language-model fine-tuning of the base model on the run's text"
    else:
        made = "downstream training (a classification head fine-tuned with the whole encoder)"
    if result.get("distillation"):
        made += ", distilling a fine-tuned teacher's logits beside the labels"
    return made, made_by_theseus


def base_model_id(reference: str, folder: Path | None) -> str | None:
    """The Hub ID a model reference stands for: the packaged model's, a Hub ID, or the repository
    of a folder in the Hugging Face cache; None for other local folders (their ID is unknown)."""
    if reference in ("", "packaged"):
        return PACKAGED_MODEL_ID
    hub_id = parse_hub_id(reference)
    if hub_id is not None and not Path(reference).is_dir():
        return hub_id[0]
    cached = re.search(r"models--([^/]+)--([^/]+)", str(folder or reference))
    return f"{cached[1]}/{cached[2]}" if cached else None


def _source_metadata(folder: Path | None) -> dict[str, Any]:
    """language and license from the source model's card, else its config.json."""
    if folder is None:
        return {}
    found: dict[str, Any] = {}
    card = folder / CARD_FILE
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    # huggingface_hub warns of a card without a metadata block; such a card has nothing to read.
    if text.startswith("---"):
        data = ModelCard(text).data
        found = {key: getattr(data, key, None) for key in ("language", "license")}
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        found = {key: found.get(key) or config.get(key) for key in ("language", "license")}
    return {key: value for key, value in found.items() if value}


def _named(reference: str | None) -> str:
    return f"`{reference}`" if reference else "a random initialisation"


def _interval(ci: list[float] | None) -> str:
    return f" (95% bootstrap interval [{ci[0]:.4f}, {ci[1]:.4f}] over the test examples)" if ci else ""


def render(result: dict[str, Any], cfg: ml_collections.ConfigDict, base_reference: str | None,
           base_folder: Path | None) -> ModelCard:
    """The card of one finished run (`result`: the run record `pipelines._run` reports)."""
    metric = result["metric"]
    value = result["test"].get(metric)
    base = base_model_id(base_reference, base_folder) if base_reference is not None else None
    data = cfg.cls.data if result["objective"] == "classification" else cfg.lm.data
    sources = (result.get("data") or {}).get("sources", {})
    dataset = Path(sources.get("train") or data.train_path).name or "local data"
    pipeline_tag = PIPELINE_TAGS[result["objective"]]
    made, compressed = how_made(result)
    card_data = ModelCardData(
        base_model=base,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["theseus-jax", "bert-of-theseus", "theseus-compression"] if compressed else ["theseus-jax"],
        model_name=f"{result['name']} (theseus-jax)",
        eval_results=[EvalResult(
            task_type=pipeline_tag, dataset_type=data.format, dataset_name=dataset, dataset_split="test",
            metric_type=metric, metric_value=value,
            metric_name=f"test {metric} at the step chosen on {result['selection']}",
        )] if value is not None else None,
        **_source_metadata(base_folder),
    )
    parameters = result["parameters"]
    ratio = result.get("compression_ratio")
    command = shlex.join(sys.argv) if sys.argv and sys.argv[0].endswith("launch.py") else None
    lines = [
        f"# {result['name']}",
        "",
        f"A {parameters['exported_layers']}-layer {pipeline_tag} model ({parameters['exported_model']:,} parameters) made with "
        f"theseus-jax from {_named(base or base_reference)}"
        + (f" (compression ratio {ratio:.2f} in parameters)" if ratio else "") + ".",
        "",
        "## How it was made",
        "",
        f"- method: {made}",
        f"- data: `{sources.get('train') or data.train_path}` (format {data.format}); validation: {sources.get('validation', 'n/a')}; "
        f"test: {sources.get('test', 'n/a')}",
        f"- seed {result['seed']}, learning rate {result['learning_rate']:g}, selected step {result['selected_step']} "
        f"(chosen on {result['selection']})",
    ]
    if command:
        lines.append(f"- command: `{command}`")
    lines += ["", "## Results", ""]
    lines += [f"- test {metric}: **{value:.4f}**{_interval(result.get('test_ci95'))}" if value is not None else "- not evaluated"]
    validation = result["validation"].get(metric)
    if validation is not None:
        lines.append(f"- validation {metric}: {validation:.4f}")
    if result.get("collapsed"):
        lines.append("- WARNING: the selected model predicts one class for at least 99% of the examples")
    auto = "AutoModelForSequenceClassification" if result["objective"] == "classification" else "AutoModelForMaskedLM"
    lines += [
        "",
        "## How to use",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {auto}",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_HUB_ID")',
        f'model = {auto}.from_pretrained("PATH_OR_HUB_ID")',
        "```",
        "",
        "or with theseus-jax: `python -m theseus_jax.inference --model PATH_OR_HUB_ID --text \"...\"`.",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def write(folder: Path, card: ModelCard) -> None:
    """README.md into an exported model folder, atomically."""
    atomic.write_text(Path(folder) / CARD_FILE, str(card))
