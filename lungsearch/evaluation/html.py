"""The evaluation report as one self-contained HTML page: the tables of ``report.md`` on the left,
the figures beside them on the right (embedded as PNG data URIs, so the page is one file to mail,
attach to a ticket or open from an artifact store, with no server and nothing fetched).

The Markdown is rendered with markdown-it-py (CommonMark + GFM tables) with raw HTML *off*: a
profile name or a row label cannot inject markup into the page.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Mapping

__all__ = ["render_report_html"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1b1f24;background:#fafbfc}
header{padding:14px 24px;background:#1f3a5f;color:#fff}header h1{margin:0;font-size:20px}
.banner{background:#fff4ce;border-bottom:1px solid #e7c75a;padding:8px 24px;font-weight:600}
main{display:grid;grid-template-columns:minmax(0,3fr) minmax(280px,2fr);gap:24px;padding:16px 24px}
@media (max-width:1000px){main{grid-template-columns:1fr}}
section.tables table{border-collapse:collapse;margin:8px 0 18px;background:#fff}
section.tables th,section.tables td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
section.tables th{background:#eef2f6}section.tables td:not(:first-child){font-variant-numeric:tabular-nums}
aside.figures{position:sticky;top:0;align-self:start;max-height:100vh;overflow:auto}
figure{margin:0 0 16px;background:#fff;border:1px solid #d0d7de;padding:8px}
figure img{width:100%;height:auto;display:block}figcaption{color:#57606a;font-size:12px;margin-top:4px}
blockquote{margin:8px 0;padding:6px 12px;border-left:4px solid #e7c75a;background:#fffbea}
"""


def _markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _figure(name: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    label = html.escape(name.replace("_", " "))
    return (
        f'<figure id="fig-{html.escape(name)}"><img alt="{label}" src="data:image/png;base64,{data}">'
        f"<figcaption>{label}</figcaption></figure>"
    )


def render_report_html(title: str, body_markdown: str, figures: Mapping[str, Path], *, synthetic: bool) -> str:
    """The page: ``title``, the report's Markdown (without its figure links) and ``figures``
    (name -> PNG path) beside it; ``synthetic`` puts the phantom-data banner on top."""
    banner = (
        (
            '<div class="banner">Synthetic phantom data: these numbers show the method runs end to end '
            "and how variants compare on phantoms, not clinical performance.</div>"
        )
        if synthetic
        else ""
    )
    figs = "".join(_figure(k, p) for k, p in figures.items() if p.suffix == ".png" and p.is_file())
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1></header>{banner}"
        f'<main><section class="tables">{_markdown(body_markdown)}</section>'
        f'<aside class="figures">{figs}</aside></main></body></html>\n'
    )
