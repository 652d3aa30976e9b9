"""The training benchmark's command line: a subset of cases or candidates is kept in order,
a typo is refused in one line, candidates time training steps only."""

import pytest

from benchmarks import bench_training


def test_a_subset_of_cases_is_kept_in_the_given_order():
    assert bench_training.parse_args(["--cases", "forward, full-cls"]).cases == ["forward", "full-cls"]
    assert bench_training.parse_args([]).cases == list(bench_training.CASES)


def test_an_unknown_choice_exits_2_with_one_line_naming_it_and_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_training.parse_args(["--candidates", "no_dropout,fused_qkv"])
    assert exit_.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--candidates: unknown fused_qkv; choose from {','.join(bench_training.CANDIDATES)}" in line


def test_candidates_default_to_the_full_classification_step_and_refuse_the_forward(capsys):
    args = bench_training.parse_args(["--candidates", "no_dropout", "--model", "e5-small", "--layers", "4"])
    assert (args.cases, args.candidates, args.rounds, args.batch) == (["full-cls"], ["no_dropout"], 3, 16)
    assert bench_training.model_shape(args.model, args.layers) == bench_training.E5_SMALL | {"num_hidden_layers": 4}
    with pytest.raises(SystemExit) as exit_:
        bench_training.parse_args(["--candidates", "no_dropout", "--cases", "forward"])
    assert exit_.value.code == 2 and "leave forward out of --cases" in capsys.readouterr().err


def test_quick_is_the_small_model_unless_another_is_named():
    assert bench_training.parse_args(["--quick"]).model == "quick"
    assert bench_training.parse_args(["--quick", "--model", "bert-base"]).model == "bert-base"
    assert bench_training.parse_args([]).model == "bert-base"


def test_hf_bfloat16_computes_its_forward_in_bfloat16_under_autocast():
    torch = pytest.importorskip("torch")
    from benchmarks import training_workers

    case = bench_training.make_case("full-cls", bench_training.parse_args(["--hf-dtype", "bfloat16"]), bench_training.BERT_BASE)
    assert (case["dtype"], case["hf_dtype"]) == ("float32", "bfloat16")
    weight = torch.ones(4, 4, requires_grad=True)
    with training_workers.torch_autocast(case, "cpu"):
        out = torch.ones(2, 4) @ weight
    assert out.dtype == torch.bfloat16 and weight.dtype == torch.float32  # the weights stay float32
    with training_workers.torch_autocast(case | {"hf_dtype": "float32"}, "cpu"):
        assert (torch.ones(2, 4) @ weight).dtype == torch.float32


@pytest.mark.slow  # two JAX workers compile a 1-layer step: about 30 s
def test_candidates_write_their_section(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    bench_training.main(["--quick", "--layers", "1", "--batch", "2", "--length", "16", "--rounds", "1",
                         "--candidates", "no_dropout,xla_no_ynn", "--output", str(output)])
    text = output.read_text()
    assert "## Training step: candidate changes against the current step (--quick)" in text
    assert "| full-cls | no_dropout | diagnostic only" in text and f"`{bench_training.NO_YNN}`" in text
