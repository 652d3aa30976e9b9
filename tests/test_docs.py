"""The docs a newcomer reads: every local link and #anchor resolves, the README stays short,
and its test command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_USE = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])+\]\[([^\]]*)\]")
REFERENCE_DEF = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*<?(\S+?)>?(?:\s+\".*\")?\s*$", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (links there are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def github_anchor(heading: str) -> str:
    """GitHub's heading id: Markdown markup and punctuation dropped (except '-' and '_'),
    lowercase, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").replace("*", "")
    return "".join(c for c in text.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's id in a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    ids = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text())):
        slug = github_anchor(title)
        ids.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return ids


def local_targets(path: Path) -> list[str]:
    """The local link targets of a file: inline links, images and reference definitions."""
    text = prose(path.read_text())
    targets = INLINE_LINK.findall(text) + [url for _, url in REFERENCE_DEF.findall(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]  # http:, mailto:, ...


def test_anchor_rule_matches_github():
    assert github_anchor("Training step on the AMD EPYC Zen 5 (issue 22)") == "training-step-on-the-amd-epyc-zen-5-issue-22"
    assert github_anchor("e5-small 12 -> 6 on GermEval 2018: the final table") == "e5-small-12---6-on-germeval-2018-the-final-table"
    assert github_anchor("A. The step users run vs `benchmarks.profile_step`'s") == "a-the-step-users-run-vs-benchmarksprofile_steps"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_local_links_and_anchors_resolve(path):
    broken = []
    for target in local_targets(path):
        file_part, _, anchor = target.partition("#")
        file = (path.parent / file_part).resolve() if file_part else path
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with that anchor in {file.name}")
    text = prose(path.read_text())
    defined = {label.lower() for label, _ in REFERENCE_DEF.findall(text)}
    broken += [f"[{label}]: reference never defined" for label in REFERENCE_USE.findall(text)
               if label and label.lower() not in defined]
    assert not broken, f"{path.name}: " + "; ".join(broken)


def test_readme_stays_short():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= 200, f"README.md has {lines} lines; move reference material to docs/"


def test_readme_test_command_is_the_one_ci_runs():
    script = (REPO / ".ci" / "run").read_text().splitlines()
    (command,) = [line for line in script if line.strip() and not line.startswith(("#", "set ", "cd "))]
    blocks = re.findall(r"^```bash\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M)
    assert command in [b.strip() for b in blocks], f".ci/run's command is not a code block of README.md: {command}"
