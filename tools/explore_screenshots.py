"""Screenshots of the explore report's sections for the docs (docs/explore/), taken with headless Chromium.

    python tools/explore_screenshots.py demo-out/explore/index.html --out docs/explore [--sections probes ...]
    python tools/explore_screenshots.py compare/index.html --out docs/explore --prefix compare- --sections heatmaps

Each section is cut out of the page into a copy with the page's style, rendered at 1280 px wide and
cropped below its last non-white row. Needs the `chromium` command (Debian: apt-get install chromium)
and Pillow.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SECTIONS = ("where-joint-information-lives", "over-training", "attributions-checked", "joint-dependency",
                    "calibration", "skip-vs-low-branch", "occlusion-sensitivity")
WIDTH = 1280


def browser() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


def section_pages(html: str) -> dict[str, str]:
    """{anchor: a page holding only that section, with the original <head>}."""
    head = html[: html.index("<body>") + len("<body>")]
    found = re.findall(r'(<section id="([^"]+)">.*?</section>)', html, flags=re.S)
    return {anchor: f"{head}{body}</body></html>" for body, anchor in found}


def screenshot(chrome: str, page: Path, png: Path, height: int = 6000) -> None:
    subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={WIDTH},{height}", f"--screenshot={png}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(png).convert("L"))
    rows = np.flatnonzero((pixels < 250).any(axis=1))
    bottom = int(rows[-1]) + 16 if len(rows) else pixels.shape[0]
    Image.open(png).crop((0, 0, WIDTH, min(bottom, pixels.shape[0]))).save(png, optimize=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="an explore report's index.html")
    parser.add_argument("--out", type=Path, default=Path("docs/explore"), help="folder for the PNGs")
    parser.add_argument("--sections", nargs="*", default=list(DEFAULT_SECTIONS), help="section anchors")
    parser.add_argument("--prefix", default="", help="put before each PNG's name (a comparison page's sections "
                                                     "share their anchors with the report's)")
    args = parser.parse_args(argv)
    chrome = browser()
    if chrome is None:
        print("no chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    pages = section_pages(args.page.read_text(encoding="utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for anchor in args.sections:
            if anchor not in pages:
                print(f"{args.page}: no section {anchor!r} (has: {', '.join(pages)})", file=sys.stderr)
                continue
            page = Path(tmp) / f"{anchor}.html"
            page.write_text(pages[anchor], encoding="utf-8")
            png = args.out / f"{args.prefix}{anchor}.png"
            screenshot(chrome, page, png)
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
