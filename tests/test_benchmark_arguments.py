"""The benchmarks' comma-separated choices: a subset is kept in order, a typo is refused."""

import pytest

from benchmarks import bench_dots, bench_training


def test_a_subset_of_cases_is_kept_in_the_given_order():
    assert bench_training.parse_args(["--cases", "forward, full-cls"]).cases == ["forward", "full-cls"]
    assert bench_training.parse_args([]).cases == list(bench_training.CASES)


def test_an_unknown_choice_exits_2_with_one_line_naming_it_and_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_dots.parse_args(["--variants", "default,ynn-off"])
    assert exit_.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--variants: unknown ynn-off; choose from default,no-ynn,onednn" in line
