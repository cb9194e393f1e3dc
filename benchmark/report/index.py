"""``reports/index.md`` and ``index.html`` from one small block model.

Blocks: ("h1" | "h2" | "h3" | "p", text), ("ul", [text, ...]), ("table", headers, rows),
("img", alt, src). Text may hold inline Markdown: ``[text](href)``, ``**bold**``, ```code```.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.store.atomic import write_text

Block = tuple[Any, ...]

_INLINE = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)|\*\*(.+?)\*\*|`([^`]+)`")


def inline_html(text: str) -> str:
    out, pos = [], 0
    for match in _INLINE.finditer(text):
        out.append(html.escape(text[pos : match.start()]))
        link_text, href, bold, code = match.groups()
        if href is not None:
            out.append(f'<a href="{html.escape(href)}">{html.escape(link_text)}</a>')
        elif bold is not None:
            out.append(f"<strong>{html.escape(bold)}</strong>")
        else:
            out.append(f"<code>{html.escape(code)}</code>")
        pos = match.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    parts: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "p":
            parts.append(block[1])
        elif kind == "ul":
            parts.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            frame = pd.DataFrame(
                [[_md_cell(c) for c in row] for row in block[2]], columns=[_md_cell(h) for h in block[1]]
            )
            parts.append(frame.to_markdown(index=False, disable_numparse=True))
        elif kind == "img":
            parts.append(f"![{block[1]}]({block[2]})")
    return "\n\n".join(parts) + "\n"


def render_html(blocks: list[Block], title: str) -> str:
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3", "p"):
            body.append(f"<{kind}>{inline_html(block[1])}</{kind}>")
        elif kind == "ul":
            body.append("<ul>\n" + "\n".join(f"<li>{inline_html(i)}</li>" for i in block[1]) + "\n</ul>")
        elif kind == "table":
            head = "".join(f"<th>{inline_html(h)}</th>" for h in block[1])
            rows = "\n".join(
                "<tr>" + "".join(f"<td>{inline_html(str(c))}</td>" for c in row) + "</tr>" for row in block[2]
            )
            body.append(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>")
        elif kind == "img":
            body.append(
                f'<p><img src="{html.escape(block[2])}" alt="{html.escape(block[1])}" style="max-width:100%"></p>'
            )
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
    )
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_index(blocks: list[Block], reports_dir: Path, title: str) -> list[Path]:
    reports_dir.mkdir(parents=True, exist_ok=True)
    md, page = reports_dir / "index.md", reports_dir / "index.html"
    write_text(md, render_markdown(blocks))  # atomic: an interrupted aggregation leaves no half page
    write_text(page, render_html(blocks, title))
    return [md, page]
