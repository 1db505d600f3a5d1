"""The book itself: every chapter executes and the site builds with no warning.

The build test runs the same command as `make book` (warnings are errors, every chapter executed
afresh into a temporary folder, never from the execution cache), so a broken chapter fails
`make test`. The other tests read the chapter sources for the book's structural rules.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"


def toc_files() -> list[str]:
    """Every page of _toc.yml, in reading order (part landing pages before their chapters)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())

    def walk(entries: list[dict]) -> list[str]:
        return [name for entry in entries for name in [entry["file"], *walk(entry.get("sections", []))]]

    return [toc["root"], *(name for part in toc.get("parts", []) for name in walk(part["chapters"]))]


def chapters() -> list[Path]:
    """The teaching chapters: executable pages with goals, summary and exercises."""
    return [
        ROOT / f"{name}.md"
        for name in toc_files()
        if "kernelspec:" in (ROOT / f"{name}.md").read_text() and not name.endswith("preface")
    ]


def test_toc_lists_only_existing_pages_and_every_page_is_listed() -> None:
    listed = {ROOT / f"{name}.md" for name in toc_files()}
    missing = [str(p) for p in listed if not p.exists()]
    assert not missing, f"_toc.yml lists pages that do not exist: {missing}"
    unlisted = sorted(str(p.relative_to(ROOT)) for p in BOOK.rglob("*.md") if p not in listed)
    assert not unlisted, f"pages in book/ missing from _toc.yml: {unlisted}"


@pytest.mark.parametrize("chapter", chapters(), ids=lambda p: p.stem)
def test_chapter_has_goals_summary_and_exercises_with_solutions(chapter: Path) -> None:
    text = chapter.read_text()
    assert ":::{admonition} In this chapter" in text, "no list of goals at the start"
    assert re.search(r"^## Summary", text, re.M), "no summary section"
    exercises = re.findall(r"^`{3,}\{exercise\}\n:label: (\S+)", text, re.M)
    solutions = re.findall(r"^`{3,}\{solution\} (\S+)", text, re.M)
    assert len(exercises) >= 2, f"only {len(exercises)} exercises"
    assert sorted(exercises) == sorted(solutions), "every exercise needs exactly one solution"


@pytest.mark.parametrize("page", [ROOT / f"{n}.md" for n in toc_files()], ids=lambda p: p.stem)
def test_math_follows_the_book_rules(page: Path) -> None:
    text = page.read_text()
    assert not re.search(r"^\s*([-*]|\d+\.)\s.*\$\$", text, re.M), "display math inside a list item"
    assert not re.search(r"[Ee]q(uation)?\.? ?\(\d+\)", text), "hand-written equation number"
    labels = set(re.findall(r"^\$\$ \((eq-[\w-]+)\)$", text, re.M))
    for reference in re.findall(r"\{eq\}`([\w-]+)`", text):
        assert reference in labels, f"{{eq}} reference to {reference!r} has no label on this page"


@pytest.mark.slow
def test_book_builds_with_every_chapter_executed(built_book: Path) -> None:
    """`jupyter-book build` with warnings as errors, every notebook executed from scratch
    (the `built_book` fixture fails if the build does)."""
    for name in toc_files():
        page = built_book / f"{name}.html"
        assert page.exists(), f"{page} was not built"
        content = page.read_text()
        assert "Traceback (most recent call last)" not in content, f"{name} shows a traceback"
        for kind in ("traceback", "stderr"):
            assert f'output {kind}' not in content, f"{name} shows {kind} output"
        # Progress bars are for people watching (the build's kernels would otherwise show them).
        assert "\u2501" not in content, f"{name} shows a progress bar"


def test_the_workflow_builds_the_book_once_and_publishes_that_build() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    steps = workflow["jobs"]["build"]["steps"]
    commands = [step.get("run", "") for step in steps]
    assert commands.count("make test") == 1, commands
    assert not any("make book" in command or "jupyter-book" in command for command in commands), commands
    test_step = next(step for step in steps if step.get("run") == "make test")
    output = test_step["env"]["UNDERSTANDING_NN_BOOK_OUTPUT"]
    upload = next(step for step in steps if "upload-pages-artifact" in step.get("uses", ""))
    assert upload["with"]["path"] == f"{output}/_build/html"
    assert steps.index(upload) > steps.index(test_step)


def test_every_chapter_and_section_has_a_stable_label() -> None:
    """Teachers link to sections: every heading carries an explicit label, unique in the book."""
    seen: dict[str, str] = {}
    for name in toc_files():
        lines = (ROOT / f"{name}.md").read_text().splitlines()
        in_code = False
        for index, line in enumerate(lines):
            if line.startswith("```"):
                in_code = not in_code
            if in_code or not re.match(r"#{1,3} ", line):
                continue
            label = re.fullmatch(r"\(([\w-]+)\)=", lines[index - 1]) if index else None
            assert label, f"{name}: heading {line!r} has no label line above it"
            assert label[1] not in seen, f"label {label[1]} used in {name} and {seen[label[1]]}"
            seen[label[1]] = name


def test_cite_page_lists_every_chapter_with_its_address_and_citation_file_matches() -> None:
    import understanding_nn

    cite = (BOOK / "cite.md").read_text()
    for name in toc_files():
        text = (ROOT / f"{name}.md").read_text()
        label = re.search(r"^\((ch-[\w-]+)\)=$", text, re.M)
        if label and "kernelspec:" in text:
            assert f"| {{ref}}`{label[1]}` | `{name}.html` |" in cite, f"{name} missing from the cite page"
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["version"] == understanding_nn.__version__
    assert f"Version {understanding_nn.__version__}" in cite
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert citation["repository-code"] == config["repository"]["url"]
    assert citation["url"] == config["html"]["baseurl"].rstrip("/") + "/"
