"""The documentation site: `mkdocs build --strict` succeeds (no broken link, every API object found),
the README links into every page and to anchors that exist, and the built home page and API page
render in headless Chromium with their JavaScript running and raising no error."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
pytestmark = pytest.mark.slow

# Put first into <head> of the pages under test: collects uncaught errors, rejected promises and
# resources that failed to load (capture phase), and after load writes them onto <html>.
PROBE_SCRIPT = """<script>window.__errors = [];
addEventListener("error", e => __errors.push(e.message || ("failed to load " + (e.target.src || e.target.href))), true);
addEventListener("unhandledrejection", e => __errors.push("unhandled rejection: " + e.reason));
addEventListener("load", () => setTimeout(() =>
  document.documentElement.setAttribute("data-js-errors", __errors.join(" | ") || "none"), 500));
</script>"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built once, strictly, into a temporary folder."""
    missing = [name for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
               if _missing(name)]
    if missing:
        pytest.skip(f"the docs extra is not installed ({', '.join(missing)} missing): pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(REPO / "mkdocs.yml"), "--site-dir", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=os.environ | {"NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # the parent package of a dotted name is missing
        return True


def test_the_readme_links_to_every_docs_page_and_only_to_anchors_that_exist(site):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 250
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", readme)
    pages = {page for page, _ in links if page.endswith(".md")}
    every = {f"docs/{p.relative_to(REPO / 'docs').as_posix()}" for p in (REPO / "docs").rglob("*.md")}
    assert every - pages == set(), "docs pages the README does not link to"
    for page, anchor in links:
        assert (REPO / page).is_file(), page
        if anchor and page.endswith(".md"):
            built = site / Path(page).relative_to("docs").with_suffix("") / "index.html"
            built = site / "index.html" if page == "docs/index.md" else built
            assert f'id="{anchor}"' in built.read_text(encoding="utf-8"), f"{page}#{anchor}: no such anchor"


def test_the_api_page_documents_the_public_functions_from_their_docstrings(site):
    html = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("hgpose.load", "hgpose.predict.Predictor", "hgpose.train.config.TrainConfig",
                 "hgpose.train.loop.train", "hgpose.evaluate.evaluate_checkpoint", "hgpose.explore",
                 "hgpose.model.export.export_onnx"):
        assert f'id="{name}"' in html, f"no API entry for {name}"
    from hgpose.evaluate import evaluate_checkpoint

    first_words = " ".join(evaluate_checkpoint.__doc__.replace("`", "").split()[:6])
    assert first_words in re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))  # the docstring itself


@pytest.fixture(scope="module")
def served(site):
    """The built site with the probe script in every page, served on 127.0.0.1 (the search worker and
    fetches do not run from file:// URLs); yields the base URL."""
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        page.write_text(text.replace("<head>", "<head>" + PROBE_SCRIPT, 1), encoding="utf-8")
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request lines in the test output
        pass


def rendered_dom(url: str) -> tuple[str, str]:
    """(the DOM after Chromium ran the page's scripts, Chromium's console log)."""
    if BROWSER is None:
        pytest.skip("no headless Chromium installed (apt-get install chromium)")
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--enable-logging=stderr", "--v=0", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


@pytest.mark.parametrize("path, expected", [
    ("/", ["stacked-hourglass human pose estimator", "Getting started", "make demo"]),
    ("/api/", ["evaluate_checkpoint", "TrainConfig", "Predictor", "A model ready for inference"]),
])
def test_home_and_api_pages_render_in_chromium_with_no_javascript_error(served, path, expected):
    dom, console = rendered_dom(served + path)
    html_tag = re.search(r"<html([^>]*)>", dom)
    assert html_tag, "Chromium printed no DOM"
    errors = re.search(r'data-js-errors="([^"]*)"', html_tag.group(1))
    assert errors, "the page never finished loading"
    assert errors.group(1) == "none", errors.group(1)
    assert not re.search(r"CONSOLE.*(Uncaught|Error)", console), console[-2000:]
    # Material's bundle ran: it marks <html> with its focus-visible polyfill's class (not in the built file)
    assert "js-focus-visible" in html_tag.group(1) and "no-js" not in html_tag.group(1), html_tag.group(1)
    if path == "/":  # and gave the home page's code blocks their copy buttons
        assert 'data-md-type="copy"' in dom
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)))
    assert len(text) > 1000 and all(phrase in text for phrase in expected), [p for p in expected if p not in text]
