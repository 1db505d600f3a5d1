"""The book itself: every chapter executes and the site builds with no warning.

The build test runs the same command as `make book` (warnings are errors, every chapter executed
afresh into a temporary folder, never from the execution cache), so a broken chapter fails
`make test`. The other tests read the chapter sources for the book's structural rules.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


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
def test_book_builds_with_every_chapter_executed(tmp_path: Path) -> None:
    """`jupyter-book build` with warnings as errors, every notebook executed from scratch."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(tmp_path),
         "--warningiserror", "--nitpick", "--keep-going"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    html = tmp_path / "_build" / "html"
    for name in toc_files():
        page = html / f"{name}.html"
        assert page.exists(), f"{page} was not built"
        content = page.read_text()
        assert "Traceback (most recent call last)" not in content, f"{name} shows a traceback"
        for kind in ("traceback", "stderr"):
            assert f'output {kind}' not in content, f"{name} shows {kind} output"
