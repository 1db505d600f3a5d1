"""The built site, opened page by page in a real browser (headless Chromium from Debian).

The `built_book` fixture builds the whole book once; it is served here on loopback and every
page of the table of contents is opened with network access to anything but loopback refused
(so the site must work offline: MathJax is served by the site itself). For each page we wait
until MathJax has typeset it, then check what a reader sees: typeset equations and no raw TeX,
images that load and carry alt text, internal links and anchors that resolve, launch and
download buttons whose notebooks exist in the repository, in sync with their chapters. The
search page must find a chapter, and a math-heavy page must print with its math and figures.

On a failure the test saves a screenshot of a math-heavy page (and of the failing page) to
``_build/site-test/``, so that the failure can be seen.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from test_book import toc_files

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "_build" / "site-test"
MATH_HEAVY_PAGE = "book/02-explaining/lrp"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

_spec = importlib.util.spec_from_file_location("notebooks", ROOT / "scripts" / "notebooks.py")
notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebooks)

pytestmark = pytest.mark.slow

# What a reader sees of one page, gathered in the page once MathJax has finished.
PAGE_FACTS = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const images = await Promise.all([...document.images].map(async (img) => {
    img.loading = "eager";
    let decoded = true;
    try { await img.decode(); } catch (error) { decoded = false; }
    return {src: img.currentSrc || img.src, loaded: decoded && img.naturalWidth > 0,
            alt: img.getAttribute("alt"), inOutput: !!img.closest(".cell_output")};
  }));
  const reading = document.body.cloneNode(true);
  reading.querySelectorAll("pre, code, script, style, textarea, mjx-container, .highlight")
         .forEach((node) => node.remove());
  return {
    mathElements: document.querySelectorAll(".math").length,
    untypeset: [...document.querySelectorAll(".math")]
      .filter((node) => !node.querySelector("mjx-container"))
      .map((node) => node.textContent.trim().slice(0, 80)),
    errors: [...document.querySelectorAll("mjx-merror")]
      .map((node) => node.getAttribute("data-mjx-error") || node.textContent),
    displayEquations: document.querySelectorAll('mjx-container[display="true"]').length,
    inlineEquations: document.querySelectorAll('mjx-container:not([display="true"])').length,
    text: reading.textContent,
    images: images,
    links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
    ids: [...document.querySelectorAll("[id]")].map((node) => node.id),
    figures: [...document.querySelectorAll("figure")].map((figure) =>
      (figure.querySelector("figcaption") || {textContent: ""}).textContent.trim()),
  };
}
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        """Keep the server quiet: the tests report what matters."""


@pytest.fixture(scope="module")
def site(built_book: Path) -> Iterator[str]:
    """The built site, served on a free loopback port; yields its base URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(built_book))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser_context(site: str) -> Iterator[tuple]:
    """A headless Chromium context that refuses every request off loopback (and records it)."""
    from playwright import sync_api as playwright_api
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(chromium).exists(), f"no Chromium at {chromium}: `make test` installs Debian's chromium package"
    refused: list[str] = []

    def only_loopback(route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.route("**/*", only_loopback)
        yield context, refused
        browser.close()


@pytest.fixture(scope="module")
def visits(site: str, browser_context: tuple) -> dict[str, dict]:
    """Every page of the table of contents, opened and read once: page name -> facts."""
    context, _ = browser_context
    page = context.new_page()
    facts = {}
    for name in toc_files():
        response = page.goto(site + name + ".html", wait_until="load")
        assert response is not None and response.ok, f"{name}.html: HTTP {response and response.status}"
        facts[name] = page.evaluate(PAGE_FACTS)
    page.close()
    return facts


def fail_with_screenshots(message: str, site: str, browser_context: tuple, pages: list[str]) -> None:
    """Save screenshots of the math-heavy page and of the failing pages, then fail."""
    context, _ = browser_context
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    saved = []
    for name in [MATH_HEAVY_PAGE, *pages[:3]]:
        page = context.new_page()
        page.goto(site + name + ".html", wait_until="load")
        page.evaluate(PAGE_FACTS)
        path = SCREENSHOTS / (name.replace("/", "--") + ".png")
        page.screenshot(path=str(path), full_page=True)
        saved.append(str(path.relative_to(ROOT)))
        page.close()
    pytest.fail(f"{message}\nscreenshots: {', '.join(saved)}")


def check(problems: dict[str, list], what: str, site: str, browser_context: tuple) -> None:
    problems = {name: found for name, found in problems.items() if found}
    if problems:
        details = "\n".join(f"  {name}: {found[:5]}" for name, found in problems.items())
        fail_with_screenshots(f"{what}:\n{details}", site, browser_context, list(problems))


# --------------------------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------------------------


def test_every_equation_is_typeset_without_errors(visits, site, browser_context) -> None:
    problems = {}
    for name, facts in visits.items():
        found = [f"not typeset: {text}" for text in facts["untypeset"]]
        found += [f"MathJax error: {error}" for error in facts["errors"]]
        problems[name] = found
    check(problems, "math that did not render", site, browser_context)
    # Every chapter but the preface has math, and every labelled equation of a source page is
    # typeset as a display equation (with its number) on its page.
    pages_with_math = {name for name, facts in visits.items() if facts["mathElements"]}
    chapters = {c.relative_to(ROOT).with_suffix("").as_posix() for c in notebooks.chapters()}
    assert chapters - pages_with_math <= {"book/00-front/preface"}
    for name, facts in visits.items():
        labelled = len(re.findall(r"^\$\$ \(eq-[\w-]+\)$", (ROOT / f"{name}.md").read_text(), re.M))
        assert facts["displayEquations"] >= labelled, f"{name}: {facts['displayEquations']} < {labelled}"


def test_no_raw_tex_delimiters_in_the_text(visits, site, browser_context) -> None:
    problems = {}
    for name, facts in visits.items():
        text = facts["text"]
        problems[name] = [
            f"{delimiter!r} near ...{text[max(0, text.index(delimiter) - 40):text.index(delimiter) + 40]!r}"
            for delimiter in ("$$", "$", "\\(", "\\[", "\\begin{")
            if delimiter in text
        ]
    check(problems, "raw TeX outside code", site, browser_context)


def test_mathjax_is_served_by_the_site_and_nothing_is_fetched_from_elsewhere(visits, browser_context, built_book) -> None:
    _, refused = browser_context
    assert refused == [], f"pages asked for resources off the site: {sorted(set(refused))[:10]}"
    assert (built_book / "_static" / "mathjax" / "tex-chtml.js").exists()


# --------------------------------------------------------------------------------------------
# Images and figures
# --------------------------------------------------------------------------------------------


def test_every_image_loads_and_has_alt_text(visits, site, browser_context) -> None:
    problems = {}
    for name, facts in visits.items():
        found = [f"does not load: {image['src']}" for image in facts["images"] if not image["loaded"]]
        found += [
            f"no alt text: {image['src']}" for image in facts["images"]
            if image["inOutput"] and (not image["alt"] or image["alt"].endswith((".png", ".svg", ".jpg")))
        ]
        problems[name] = found
    check(problems, "broken images or missing alt text", site, browser_context)
    figures = [caption for facts in visits.values() for caption in facts["figures"]]
    assert len(figures) >= 40 and all(caption.startswith("Fig.") for caption in figures), figures[:5]


def test_figures_are_opaque_so_they_read_in_dark_mode_too(built_book: Path) -> None:
    images = sorted((built_book / "_images").glob("*.png"))
    assert len(images) >= 40
    transparent = []
    for path in images:
        with Image.open(path) as image:
            if image.mode in ("RGBA", "LA", "P") and np.asarray(image.convert("RGBA"))[..., 3].min() < 255:
                transparent.append(path.name)
    assert transparent == [], f"figures with transparent pixels (unreadable on a dark page): {transparent[:5]}"


# --------------------------------------------------------------------------------------------
# Links, launch and download buttons
# --------------------------------------------------------------------------------------------


def _ids_of(path: Path) -> set[str]:
    from bs4 import BeautifulSoup

    return {tag["id"] for tag in BeautifulSoup(path.read_text(errors="replace"), "html.parser").find_all(id=True)}


def test_every_internal_link_and_anchor_resolves(visits, site, browser_context, built_book) -> None:
    ids = {f"{name}.html": set(facts["ids"]) for name, facts in visits.items()}
    problems = {}
    for name, facts in visits.items():
        found = []
        for link in facts["links"]:
            if not link.startswith(site):
                continue
            parts = urlsplit(link)
            relative = unquote(parts.path[len(urlsplit(site).path):]) or "index.html"
            target = built_book / relative
            if target.is_dir():
                target, relative = target / "index.html", relative.rstrip("/") + "/index.html"
            if not target.is_file():
                found.append(f"missing page {relative}")
            elif parts.fragment and target.suffix == ".html":
                if relative not in ids:
                    ids[relative] = _ids_of(target)
                if unquote(parts.fragment) not in ids[relative]:
                    found.append(f"missing anchor {relative}#{parts.fragment}")
        problems[name] = found
    check(problems, "broken internal links", site, browser_context)


def test_every_chapter_has_binder_and_colab_buttons_to_its_synced_notebook(visits, site, browser_context, built_book) -> None:
    problems = {}
    for chapter in notebooks.chapters():
        name = chapter.relative_to(ROOT).with_suffix("").as_posix()
        links = visits[name]["links"]
        notebook = notebooks.notebook_path(chapter).relative_to(ROOT).as_posix()
        found = []
        colab = [link for link in links if link.startswith("https://colab.research.google.com/github/")]
        binder = [link for link in links if link.startswith("https://mybinder.org/v2/gh/")]
        if not colab or not colab[0].endswith(f"/blob/main/{notebook}"):
            found.append(f"Colab link {colab[:1]} does not open {notebook}")
        if not binder or parse_qs(urlsplit(binder[0]).query).get("urlpath") != [f"lab/tree/{notebook}"]:
            found.append(f"Binder link {binder[:1]} does not open {notebook}")
        if not (ROOT / notebook).is_file() or (ROOT / notebook).read_text() != notebooks.render(chapter):
            found.append(f"{notebook} is missing or out of date")
        downloads = [link for link in links if "/_sources/" in link]
        for suffix in (".md", ".ipynb"):
            if not any(link.endswith(f"_sources/{name}{suffix}") for link in downloads):
                found.append(f"no download button for the {suffix} file")
        problems[name] = found
    check(problems, "launch or download buttons", site, browser_context)


# --------------------------------------------------------------------------------------------
# Search and print
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("word", "chapter"), [("SmoothGrad", "smoothgrad"), ("Rescale", "deeplift")])
def test_search_finds_a_chapter_by_a_word_in_it(word, chapter, site, browser_context) -> None:
    context, _ = browser_context
    page = context.new_page()
    page.goto(f"{site}search.html?q={word}", wait_until="load")
    page.wait_for_function(
        "() => document.querySelectorAll('#search-results li a').length > 0", timeout=60_000
    )
    results = page.eval_on_selector_all("#search-results li a", "links => links.map(a => a.href)")
    page.close()
    assert any(link.split("#")[0].endswith(f"/{chapter}.html") for link in results), results[:10]


def test_a_math_heavy_page_prints_with_its_math_and_figures(site, browser_context) -> None:
    context, _ = browser_context
    page = context.new_page()
    page.emulate_media(media="print")
    page.goto(site + MATH_HEAVY_PAGE + ".html", wait_until="load")
    facts = page.evaluate(PAGE_FACTS)
    assert facts["displayEquations"] >= 5 and not facts["errors"]
    visible = page.evaluate(
        """() => ({
          math: [...document.querySelectorAll('mjx-container[display="true"]')]
                  .filter((node) => node.getBoundingClientRect().width > 0).length,
          figures: [...document.querySelectorAll('.cell_output img')]
                  .filter((node) => node.getBoundingClientRect().width > 100).length,
          sidebar: (() => { const s = document.querySelector('.bd-sidebar-primary');
                            return s ? s.getBoundingClientRect().width : 0; })(),
        })"""
    )
    pdf = page.pdf(format="A4")
    page.close()
    assert visible["math"] == facts["displayEquations"], visible
    assert visible["figures"] >= 3, visible
    assert visible["sidebar"] == 0, "the navigation sidebar is printed"
    assert pdf.startswith(b"%PDF") and len(pdf) > 100_000
