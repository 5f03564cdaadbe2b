"""The documentation site (mkdocs.yml, docs/): it builds with no warning, and its code runs.

* ``mkdocs build --strict`` succeeds, into a temporary directory, and the API reference has an
  entry for every public name.
* Every ```python block of every page runs, as tests/test_readme.py does for the README: a
  page's blocks in order in one namespace of their own (later blocks may use earlier ones'
  names), with warnings as errors. The pages share one interpreter, started once, so JAX,
  Equinox and Flax are imported once; a failure is reported against its page, with a
  traceback at the page's own line numbers. ```bash blocks are commands to read, not run; no
  other fence is allowed, so no Python can hide in an untested block.
* The figures copied into docs/assets/ are those of examples/ and benchmarks/
  (``python docs/make_figures.py`` refreshes them).
"""

import importlib
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import stable_layers

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)


def env():
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    clean["NO_MKDOCS_2_WARNING"] = "1"  # Material's banner about MkDocs 2.0, not a warning
    return clean


def fences(page):
    """(language, first line number of the code, code) of each fenced block of a page."""
    text = page.read_text()
    for m in FENCE.finditer(text):
        yield m.group(1).strip(), text.count("\n", 0, m.start(2)) + 1, m.group(2)


def page_script(page):
    """The page's python blocks, each at its own line numbers, blank lines between them."""
    lines = []
    for lang, first, code in fences(page):
        if lang == "python":
            lines += [""] * (first - 1 - len(lines)) + code.splitlines()
    return "\n".join(lines)


def rel(page):
    return page.relative_to(ROOT).as_posix()


PAGES_WITH_CODE = [p for p in PAGES if page_script(p).strip()]


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env(),
    )
    assert out.returncode == 0, out.stderr[-5000:]
    assert "WARNING" not in out.stderr, out.stderr[-5000:]
    api = (site / "api" / "stable_layers" / "index.html").read_text()
    for name in stable_layers.__all__:
        assert f'id="stable_layers.{name}"' in api, f"no API entry for stable_layers.{name}"
    for framework in ("equinox", "linen", "nnx"):
        page = (site / "api" / framework / "index.html").read_text()
        for name in importlib.import_module(f"stable_layers.{framework}").__all__:
            path = f"stable_layers.{framework}.{name}"
            assert f'id="{path}"' in page, f"no API entry for {path}"


def test_every_code_block_is_python_or_bash():
    for page in PAGES:
        for lang, line, _ in fences(page):
            assert lang in ("python", "bash"), f"{rel(page)}:{line}: a ```{lang} block"
    assert len(PAGES_WITH_CODE) >= 5, PAGES_WITH_CODE


# Runs each page of the JSON list [[name, source], ...] in the file argv[1] in a namespace of
# its own, and writes {name: None or the traceback} as JSON to the file argv[2].
RUNNER = """
import json, sys, traceback
pages, results = json.load(open(sys.argv[1])), {}
for name, source in pages:
    try:
        exec(compile(source, name, "exec"), {"__name__": "__main__"})
        results[name] = None
    except BaseException:
        results[name] = traceback.format_exc()
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def page_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pages")
    (tmp / "pages.json").write_text(json.dumps([[rel(p), page_script(p)] for p in PAGES_WITH_CODE]))
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", RUNNER, tmp / "pages.json", tmp / "results.json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env(),
        cwd=ROOT,  # so a traceback quotes the page's lines
    )
    assert out.returncode == 0, out.stderr[-5000:]
    return json.loads((tmp / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=rel)
def test_page_code_runs(page, page_results):
    assert page_results[rel(page)] is None, f"{rel(page)}:\n{page_results[rel(page)]}"


def test_copied_figures_are_current():
    spec = importlib.util.spec_from_file_location("make_figures", DOCS / "make_figures.py")
    make_figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_figures)
    for name, source in make_figures.COPIES.items():
        copy = DOCS / "assets" / name
        assert copy.read_bytes() == (ROOT / source).read_bytes(), (
            f"docs/assets/{name} differs from {source}: run python docs/make_figures.py"
        )
    assert (DOCS / "assets" / "accuracy_ulp.png").is_file()


def test_readme_links_to_the_docs_resolve():
    links = re.findall(r"\]\((docs/[^)#\s]+)", (ROOT / "README.md").read_text())
    assert links, "the README links to no docs page"
    for link in links:
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"
