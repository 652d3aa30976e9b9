"""Where a benchmark's section lands in BENCHMARKS.md, and the CPU kind it names."""

from benchmarks import report

OLDER = f"{report.OLDER}\n\n### Same title\n\nold numbers\n"


def test_a_new_section_goes_before_the_older_part_which_it_never_overwrites(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\n## Current\n\nkept\n\n{OLDER}")
    report.write_section(path, "Same title", "python -m benchmarks.x", "new numbers")
    assert path.read_text() == (f"# Benchmarks\n\n## Current\n\nkept\n\n## Same title\n\nCommand: `python -m benchmarks.x`\n\n"
                                f"new numbers\n\n{OLDER}")
    report.write_section(path, "Same title", "python -m benchmarks.x --again", "newer numbers")
    text = path.read_text()
    assert "newer numbers" in text and "new numbers" not in text and text.endswith(OLDER)


def test_without_an_older_part_a_new_section_is_appended(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    report.write_section(path, "T", "c", "b")
    assert path.read_text() == "# Benchmarks\n\n## T\n\nCommand: `c`\n\nb\n"


def test_cpu_kind_names_model_family_and_model_of_the_first_processor():
    cpuinfo = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n\n"
               "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: other\n")
    assert report.cpu_kind(cpuinfo) == "AMD EPYC (family 26, model 2)"
    assert report.cpu_kind("model name\t: Intel(R) Xeon(R) Processor\n") == "Intel(R) Xeon(R) Processor"
