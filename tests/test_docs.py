"""The README and docs/ stay inside the repository: every relative link resolves to a file here (and its
#anchor to a heading of that file), and nothing names a place beside the checkout, which a user's clone lacks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

DOCS = sorted([REPO / "README.md", *REPO.glob("CONTRIBUTING.md"), *REPO.glob("docs/**/*.md"), *REPO.glob("examples/**/*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), not images
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, markup and punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]{2,}|`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def test_github_anchor_follows_githubs_rules():
    assert github_anchor("Weights & Biases") == "weights--biases"
    assert github_anchor("`grpo`, `rloo`") == "grpo-rloo"
    assert github_anchor("`rejection_sampling`") == "rejection_sampling"
    assert github_anchor("A real model: SmolLM2-135M-Instruct") == "a-real-model-smollm2-135m-instruct"
    assert github_anchor("DeepSpeed's CPU extension") == "deepspeeds-cpu-extension"


def test_the_documents_exist():
    names = {p.relative_to(REPO).as_posix() for p in DOCS}
    assert {"README.md", "docs/data.md", "docs/recipes.md", "docs/comparison.md", "docs/reliability.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_resolve_inside_the_repository(doc):
    problems = []
    for target in LINK.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https://..., mailto: public addresses
            continue
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.is_relative_to(REPO.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{target}: no heading #{anchor} in {path.relative_to(REPO)}")
    assert not problems, f"{doc.relative_to(REPO)}: " + "; ".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_nothing_names_a_place_beside_the_checkout(doc):
    text = doc.read_text(encoding="utf-8")
    found = [m.group(0) for m in re.finditer(r"\.\./(?:shared|\.\.)\S*|/work/\S+", text)]
    assert not found, f"{doc.relative_to(REPO)} names paths outside the repository: {found}"
