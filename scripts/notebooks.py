"""Generate the chapters' Jupyter notebooks (for Colab, Binder and download) from their MyST sources.

Colab opens only ``.ipynb`` files, and it knows neither MyST's roles and directives nor the
book's TeX macros. Each executable chapter ``book/<part>/<name>.md`` therefore gets a generated
twin ``book/<part>/<name>.ipynb``, committed without outputs, that

- starts with a cell installing the package when it is missing (Colab, a fresh Jupyter);
- keeps every code cell exactly as in the chapter;
- turns the MyST markup of the text cells into plain Markdown: labels dropped, citations and
  cross-references as links into the published book, equations numbered with ``\\tag``,
  the book's macros written out, goals as a quote, exercises with collapsible solutions.

The book build ignores these files (``exclude_patterns`` in ``_config.yml``); the launch buttons
of each page point to them. ``tests/test_notebooks.py`` fails when a notebook drifts from its
chapter. Usage::

    python scripts/notebooks.py          # regenerate every notebook
    python scripts/notebooks.py --check  # list the notebooks that are out of date (exit 1)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent

INSTALL_CELL = """\
# This chapter needs the book's package (and myst-nb, for `glue`). In the book's repository and
# on Binder they are installed already and this cell does nothing; elsewhere (Colab) it installs
# them from the repository.
import importlib.util
import subprocess
import sys

if not all(importlib.util.find_spec(module) for module in ("understanding_nn", "myst_nb")):
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", {requirement!r}], check=True)
"""


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def chapters() -> list[Path]:
    """The executable pages of the table of contents (MyST notebooks), in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())

    def walk(entries: list[dict]) -> list[str]:
        return [name for entry in entries for name in [entry["file"], *walk(entry.get("sections", []))]]

    names = [toc["root"], *(name for part in toc.get("parts", []) for name in walk(part["chapters"]))]
    pages = [ROOT / f"{name}.md" for name in names]
    return [page for page in pages if page.exists() and "kernelspec:" in page.read_text()]


def notebook_path(chapter: Path) -> Path:
    return chapter.with_suffix(".ipynb")


# --------------------------------------------------------------------------------------------
# MyST -> plain Markdown
# --------------------------------------------------------------------------------------------


def expand_macros(text: str, macros: dict[str, str | list]) -> str:
    """Write out the book's TeX macros (MathJax ``tex.macros`` format: body, or [body, n_args])."""
    for name, definition in macros.items():
        body, n_args = (definition, 0) if isinstance(definition, str) else definition
        pattern = re.compile(r"\\" + name + r"(?![A-Za-z])")
        position = 0
        while match := pattern.search(text, position):
            end, args = match.end(), []
            for _ in range(n_args):
                end, argument = _braced(text, end, name)
                args.append(argument)
            expansion = body
            for index, argument in enumerate(args, start=1):
                expansion = expansion.replace(f"#{index}", argument)
            # A macro without arguments followed by a letter would glue onto it: keep a space.
            if not n_args and expansion[-1].isalpha() and end < len(text) and text[end].isalpha():
                expansion += " "
            text = text[: match.start()] + expansion + text[end:]
            position = match.start() + len(expansion)
    return text


def _braced(text: str, start: int, macro: str) -> tuple[int, str]:
    """The ``{...}`` argument starting at ``start`` (after spaces): (end index, content)."""
    while start < len(text) and text[start] == " ":
        start += 1
    if start >= len(text) or text[start] != "{":
        raise ValueError(f"macro \\{macro} needs a braced argument at ...{text[start - 20:start + 20]!r}")
    depth = 0
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return index + 1, text[start + 1 : index]
    raise ValueError(f"unbalanced braces after \\{macro}")


class Converter:
    """Plain-Markdown rendering of one chapter's text cells."""

    def __init__(self, chapter: Path, site: str, macros: dict) -> None:
        self.site = site.rstrip("/") + "/"
        self.macros = macros
        self.page = chapter.relative_to(ROOT).with_suffix(".html").as_posix()
        self.equations: dict[str, int] = {}
        source = chapter.read_text()
        for number, label in enumerate(re.findall(r"^\$\$ \((eq-[\w-]+)\)$", source, re.M), start=1):
            self.equations[label] = number

    def link(self, anchor: str, page: str | None = None) -> str:
        return f"{self.site}{page or self.page}#{anchor}"

    def __call__(self, text: str) -> str:
        text = re.sub(r"^\([\w-]+\)=\n", "", text, flags=re.M)
        text = re.sub(
            r"^\$\$\n(.*?)\n\$\$ \((eq-[\w-]+)\)$",
            lambda m: f"$$\n{m[1]}\n\\tag{{{self.equations[m[2]]}}}\n$$",
            text, flags=re.M | re.S,
        )
        # An equation reference links to the numbered equation in the published chapter.
        text = re.sub(
            r"\{eq\}`([\w-]+)`",
            lambda m: f"[({self.equations[m[1]]})]({self.link('equation-' + m[1])})",
            text,
        )
        text = re.sub(
            r"\{cite\}`([^`]+)`",
            lambda m: "(" + "; ".join(
                f"[{key.strip()}]({self.site}book/bibliography.html)" for key in m[1].split(",")
            ) + ")",
            text,
        )
        text = re.sub(r"\{(?:ref|numref)\}`([^`<]+?)\s*<([\w-]+)>`", r"*\1*", text)
        text = re.sub(r"\{numref\}`([\w-]+)`", "the figure", text)
        text = re.sub(r"\{ref\}`([\w-]+)`", r"*\1*", text)
        text = re.sub(r"\{glue:text\}`([\w]+)(:[^`]*)?`", r"`\1`", text)
        text = re.sub(
            r"^:::\{admonition\} (.*?)\n(?::class: \w+\n)?(.*?)^:::$",
            lambda m: "> **" + m[1] + "**\n>\n" + re.sub(r"^", "> ", m[2].rstrip("\n"), flags=re.M),
            text, flags=re.M | re.S,
        )
        text = re.sub(
            r"^:::\{(note|tip|warning|important)\}\n(.*?)^:::$",
            lambda m: f"> **{m[1].capitalize()}.** " + m[2].strip().replace("\n", "\n> "),
            text, flags=re.M | re.S,
        )
        text = re.sub(
            r"^(`{3,})\{exercise\}\n:label: [\w-]+\n(.*?)^\1$",
            lambda m: "**Exercise.** " + m[2].strip(), text, flags=re.M | re.S,
        )
        text = re.sub(
            r"^(`{3,})\{solution\} [\w-]+\n(?::class: dropdown\n)?(.*?)^\1$",
            lambda m: "<details><summary>Solution</summary>\n\n" + m[2].strip() + "\n\n</details>",
            text, flags=re.M | re.S,
        )
        # Code (fenced blocks and inline spans) is shown as typed, macros included.
        pieces = re.split(r"(^`{3,}.*?^`{3,}$|`[^`\n]+`)", text, flags=re.M | re.S)
        return "".join(
            piece if index % 2 else expand_macros(piece, self.macros) for index, piece in enumerate(pieces)
        )


# --------------------------------------------------------------------------------------------
# Notebooks
# --------------------------------------------------------------------------------------------


def build_notebook(chapter: Path) -> nbformat.NotebookNode:
    """The Colab/Binder notebook of ``chapter``: install cell, then the chapter's cells."""
    settings = config()
    repository = settings["repository"]["url"]
    site = settings["html"]["baseurl"]
    macros = settings["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]
    source = jupytext.read(chapter, fmt="md:myst")
    convert = Converter(chapter, site, macros)
    title = chapter.relative_to(ROOT).with_suffix(".html").as_posix()
    requirement = f"understanding-nn[notebook] @ git+{repository}@{settings['repository'].get('branch', 'main')}"
    cells = [
        nbformat.v4.new_code_cell(INSTALL_CELL.format(requirement=requirement)),
        nbformat.v4.new_markdown_cell(
            f"*This notebook is generated from a chapter of the Understanding NN book; read it with "
            f"numbered equations, cross-references and figures at <{site.rstrip('/')}/{title}>. "
            f"Numbers that the book prints inside the text appear here as `names`: the cells compute them.*"
        ),
    ]
    for cell in source.cells:
        if cell.cell_type == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(convert(cell.source)))
        elif cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(cell.source)
            tags = cell.metadata.get("tags")
            if tags:
                new.metadata["tags"] = list(tags)
            cells.append(new)
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    # Cell ids are random by default; number them so the file is reproducible.
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index}"
    return notebook


def render(chapter: Path) -> str:
    return nbformat.writes(build_notebook(chapter)) + "\n"


def out_of_date() -> list[Path]:
    """Notebooks that are missing or differ from what their chapter generates."""
    return [
        notebook_path(chapter) for chapter in chapters()
        if not notebook_path(chapter).exists() or notebook_path(chapter).read_text() != render(chapter)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only list out-of-date notebooks")
    arguments = parser.parse_args()
    if arguments.check:
        stale = out_of_date()
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)}")
        return 1 if stale else 0
    for chapter in chapters():
        notebook_path(chapter).write_text(render(chapter))
        print(f"wrote {notebook_path(chapter).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
