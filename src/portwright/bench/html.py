"""The one-page HTML report: header, the chart (inline SVG), the table and the ratios.

Owns only presentation; every figure on the page comes from the same aggregates as the terminal
table. The page has no external resources, so it can be mailed or attached to an issue as is.
"""

from __future__ import annotations

import html
from typing import Any

from . import plot, report


def render(doc: dict[str, Any]) -> str:
    rows = doc["summary"]
    head = report.header_lines(doc["machine"], doc["config"], doc.get("started"))
    try:
        svg = plot.render(rows, "svg", head[0]).decode()
        svg = svg[svg.find("<svg") :]
    except Exception as e:  # the page is still useful without the chart; say why it is missing
        svg = f"<p><em>chart unavailable: {html.escape(str(e))}</em></p>"
    table = report.table(rows, doc.get("skipped"))
    ratios = report.headline_text(doc.get("headline", []))
    scale = doc.get("scale")
    scale_txt = ""
    if scale:
        from .scale import scale_table

        scale_txt = f"<h2>Scale</h2><pre>{html.escape(scale_table(scale))}</pre>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>portwright bench</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }}
.meta {{ color: #555; }}
</style></head><body>
<h1>portwright bench</h1>
<p class="meta">{"<br>".join(html.escape(x) for x in head)}</p>
{svg}
<h2>Results</h2>
<pre>{html.escape(table)}</pre>
<h2>Ratios</h2>
<pre>{html.escape(ratios)}</pre>
{scale_txt}
<p class="meta">Raw samples: run with <code>--json FILE</code>. The article's figures (4-CPU laptop,
iperf3 -P 10 -t 60) are shown for reference only; compare mechanisms within one run.</p>
</body></html>
"""


def write(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(doc))
