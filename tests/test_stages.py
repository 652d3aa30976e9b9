"""The stage registry: needs derived from where a stage starts and its teacher, depth variants."""

import dataclasses

import ml_collections

from theseus_jax.experiments import pipelines, report
from theseus_jax.experiments.stages import PIPELINES, STAGES, find


def test_needs_follow_from_starts_and_teacher():
    """Pinned to the hand-written table the registry replaced (pipelines.STAGE_NEEDS at be8ea06)."""
    before = {
        "cls_successor": ("lm_compress",),
        "cls_successor_kd": ("lm_compress", "cls_predecessor"),
        "cls_compress_kd": ("cls_predecessor",),
        "cls_truncated_kd": ("cls_predecessor",),
    }
    assert {name: stage.needs for name, stage in STAGES.items() if stage.needs} == before
    assert [s.name for s in STAGES.values() if s.teacher] == ["cls_successor_kd", "cls_compress_kd", "cls_truncated_kd"]
    assert [s.name for s in STAGES.values() if s.student] == [
        "cls_successor", "cls_compress", "cls_successor_kd", "cls_compress_kd", "cls_truncated_kd"]
    assert list(PIPELINES) == ["lm_baseline", "lm_compress", "cls_baseline", "cls_compress"]


def test_a_depth_variant_is_a_stage_of_its_own_compared_with_the_truncated_model_of_its_depth():
    variant = dataclasses.replace(STAGES["cls_compress"], depth=4)
    assert (variant.name, variant.truncated, variant.needs) == ("cls_compress_L4", "cls_truncated_L4", ())
    assert find("cls_compress_L4") == variant and find("cls_truncated_kd_L3").truncated == "cls_truncated_L3"
    assert find("cls_predecessor_L4") is None and find("cls_successor_L4") is None  # no depth of their own
    assert report._labels(["cls_predecessor", "cls_truncated_L4", "cls_compress_L4", "cls_compress", "cls_truncated"]) == {
        "cls_compress": ("", "successor"), "cls_compress_L4": ("_cls_compress_L4", "cls_compress_L4"),
        "cls_truncated": ("_cls_truncated", "truncated"), "cls_truncated_L4": ("_cls_truncated_L4", "truncated_L4"),
    }


def test_a_depth_variant_trains_at_its_depth_from_the_same_seeds_predecessor(tmp_path, monkeypatch):
    runs = []

    def fake_train(stage, cfg, workdir, model, teacher_dir):
        runs.append((stage.name, cfg.compression.num_successor_layers, workdir, model, teacher_dir))
        return {"metric": "macro_f1", "selection": "validation", "validation": {"macro_f1": 0.5}, "learning_rate": 1e-4,
                "run_dir": str(workdir), "time_until_best_s": 1.0, "total_time_s": 2.0}

    monkeypatch.setattr(pipelines, "_train", fake_train)
    cfg = ml_collections.ConfigDict({"seeds": "0", "cls": {"learning_rate": 1e-4, "learning_rates": ""},
                                     "compression": {"num_successor_layers": 6}, "cls_model": "predecessor"})
    previous = {"cls_predecessor": {"per_seed": [{"seed": 0, "best_model_dir": "teacher/best"}]}}
    pipelines.run_stage(find("cls_truncated_kd_L3"), cfg, tmp_path / "cls_truncated_kd_L3", previous)
    pipelines.run_stage(STAGES["cls_compress"], cfg, tmp_path / "cls_compress", previous)
    assert runs == [
        ("cls_truncated_kd_L3", 3, tmp_path / "cls_truncated_kd_L3", "truncated", "teacher/best"),
        ("cls_compress", 6, tmp_path / "cls_compress", "teacher/best", None),
    ]
