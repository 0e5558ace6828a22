"""A tiny writer for self-contained static HTML: inline CSS, images as base64 data URIs, no JS."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0 auto;
       max-width: 1240px; padding: 0 24px 48px; }
h1 { margin-top: 28px; } h2 { margin-top: 44px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { margin: 20px 0 6px; font-size: 16px; }
p.intro { max-width: 900px; } .note { color: #555; font-size: 14px; }
p.cost { color: #666; font-size: 13px; font-style: italic; }
p.warning { background: #fff3cd; border: 1px solid #e0c060; padding: 6px 10px; max-width: 900px; }
.side { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.side > div { flex: 1 1 560px; min-width: 0; }
img.figure { max-width: 100%; height: auto; display: block; margin: 8px 0 16px; border: 1px solid #eee; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 3px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
table.meta td { text-align: left; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.gallery figure { margin: 0; width: 260px; font-size: 13px; color: #444; }
.gallery img { width: 256px; image-rendering: pixelated; border: 1px solid #ddd; }
nav ol { columns: 2; max-width: 700px; }
code { background: #f4f4f4; padding: 0 4px; border-radius: 3px; }
"""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image(png: bytes, alt: str, css_class: str = "figure") -> str:
    return f'<img class="{css_class}" src="{data_uri(png)}" alt="{esc(alt)}">'


def paragraph(text: str, css_class: str = "") -> str:
    """A paragraph of plain text (escaped); use raw HTML via Section.body for markup."""
    attr = f' class="{css_class}"' if css_class else ""
    return f"<p{attr}>{esc(text)}</p>"


def table(headers, rows, css_class: str = "") -> str:
    """headers None: a table without a header row."""
    attr = f' class="{css_class}"' if css_class else ""
    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>" if headers else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attr}>{head}<tbody>{body}</tbody></table>"


def gallery(items) -> str:
    """items: (png bytes, caption) pairs, shown as a wrapping grid of captioned images."""
    figures = "".join(f"<figure>{image(png, caption, 'tile')}<figcaption>{esc(caption)}</figcaption></figure>"
                      for png, caption in items)
    return f'<div class="gallery">{figures}</div>'


@dataclass
class Section:
    anchor: str
    title: str
    intro: str  # plain text: what the section shows and how to read it
    body: list[str] = field(default_factory=list)  # HTML fragments
    cost: str = ""  # plain text: the samples it used and what it cost

    def html(self) -> str:
        cost = paragraph(self.cost, "cost") if self.cost else ""
        return (f'<section id="{esc(self.anchor)}"><h2>{esc(self.title)}</h2>'
                f'{paragraph(self.intro, "intro")}{cost}{"".join(self.body)}</section>')


def page(title: str, header: list[str], sections: list[Section]) -> str:
    toc = "".join(f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{''.join(header)}"
        f"<nav><ol>{toc}</ol></nav>{''.join(s.html() for s in sections)}</body></html>\n"
    )
