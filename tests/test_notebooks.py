"""The chapters' notebooks for Colab and Binder (scripts/notebooks.py) and the launch set-up.

A notebook that drifts from its chapter fails here: regenerate with
``.venv/bin/python scripts/notebooks.py``.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("notebooks", ROOT / "scripts" / "notebooks.py")
notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebooks)

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
MACROS = CONFIG["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]
CHAPTERS = notebooks.chapters()


def test_every_executable_page_of_the_toc_is_a_chapter_with_a_notebook() -> None:
    assert len(CHAPTERS) >= 13
    missing = [str(c.relative_to(ROOT)) for c in CHAPTERS if not notebooks.notebook_path(c).exists()]
    assert not missing, f"chapters without a notebook (run scripts/notebooks.py): {missing}"
    strays = {p for p in (ROOT / "book").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts}
    assert strays == {notebooks.notebook_path(c) for c in CHAPTERS}, "a notebook without a chapter"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_notebook_is_in_sync_with_its_chapter(chapter: Path) -> None:
    committed = notebooks.notebook_path(chapter).read_text()
    assert committed == notebooks.render(chapter), (
        f"{notebooks.notebook_path(chapter).relative_to(ROOT)} is out of date: "
        "run .venv/bin/python scripts/notebooks.py"
    )


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_notebook_is_valid_plain_and_runs_the_chapters_code(chapter: Path) -> None:
    notebook = nbformat.read(notebooks.notebook_path(chapter), as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "committed outputs"
    assert "pip" in code[0].source and CONFIG["repository"]["url"] in code[0].source
    chapter_code = [c.source for c in jupytext.read(chapter, fmt="md:myst").cells if c.cell_type == "code"]
    assert [cell.source for cell in code[1:]] == chapter_code
    text = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    leftovers = re.findall(r"(?<![\w\\}])\{[a-z:]+\}`|^\([\w-]+\)=$|^:::|^`{3,}\{|\$\$ \(eq-", text, re.M)
    assert not leftovers, f"MyST markup Colab cannot render: {sorted(set(leftovers))}"
    outside_code = re.sub(r"^`{3,}.*?^`{3,}$|`[^`\n]+`", "", text, flags=re.M | re.S)
    macros = [name for name in MACROS if re.search(r"\\" + name + r"(?![A-Za-z])", outside_code)]
    assert not macros, f"book macros left unexpanded: {macros}"


def test_install_cell_does_nothing_where_the_package_is_installed(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: calls.append(args))
    cell = nbformat.read(notebooks.notebook_path(CHAPTERS[0]), as_version=4).cells[0].source
    exec(compile(cell, "install-cell", "exec"), {})
    assert calls == []


def test_install_cell_installs_the_package_with_myst_nb_when_missing(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: calls.append(command))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    cell = nbformat.read(notebooks.notebook_path(CHAPTERS[0]), as_version=4).cells[0].source
    exec(compile(cell, "install-cell", "exec"), {})
    assert len(calls) == 1
    requirement = calls[0][-1]
    assert requirement.startswith("understanding-nn[notebook] @ git+https://github.com/")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^notebook = \["myst-nb', pyproject, re.M), "the notebook extra must bring myst-nb"


def test_equations_are_numbered_and_references_resolved_in_order() -> None:
    chapter = ROOT / "book" / "02-explaining" / "lrp.md"
    source = chapter.read_text()
    labels = re.findall(r"^\$\$ \((eq-[\w-]+)\)$", source, re.M)
    text = "\n".join(
        c.source for c in nbformat.read(notebooks.notebook_path(chapter), as_version=4).cells
        if c.cell_type == "markdown"
    )
    assert re.findall(r"\\tag\{(\d+)\}", text) == [str(n) for n in range(1, len(labels) + 1)]
    first_reference = re.search(r"\{eq\}`([\w-]+)`", source)[1]
    assert f"[({labels.index(first_reference) + 1})](" in text
    assert f"book/02-explaining/lrp.html#equation-{first_reference})" in text


@pytest.mark.parametrize(
    ("tex", "expected"),
    [
        (r"\norm{x - x_0}^2", r"\lVert x - x_0 \rVert^2"),
        (r"\norm{\frac{a}{b}}", r"\lVert \frac{a}{b} \rVert"),
        (r"\Rel{l+1}{k}", r"R^{(l+1)}_{k}"),
        (r"\E[x] + \Epsilon", r"\mathbb{E}[x] + \Epsilon"),
        (r"\LRP{\epsilon} and \zB", r"\text{LRP-}\epsilon and z^{\mathcal{B}}"),
        (r"\reals^d", r"\mathbb{R}^d"),
    ],
)
def test_macros_are_written_out(tex: str, expected: str) -> None:
    assert notebooks.expand_macros(tex, MACROS) == expected


def test_a_macro_missing_its_argument_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"\\norm"):
        notebooks.expand_macros(r"\norm x", MACROS)


def test_launch_buttons_and_binder_environment() -> None:
    launch = CONFIG["launch_buttons"]
    assert launch["binderhub_url"] == "https://mybinder.org"
    assert launch["colab_url"] == "https://colab.research.google.com"
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", CONFIG["repository"]["url"])
    assert "book/**/*.ipynb" in CONFIG["exclude_patterns"]
    requirements = (ROOT / "binder" / "requirements.txt").read_text()
    assert "-r ../requirements.txt" in requirements.splitlines()
    post_build = ROOT / "binder" / "postBuild"
    assert post_build.stat().st_mode & 0o111, "binder/postBuild must be executable"
    assert "pip install --no-deps --editable ." in post_build.read_text()
