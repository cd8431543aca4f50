"""Charts of a bench result with matplotlib (Agg backend, no display): PNG or SVG by extension.

Owns the picture: per placement, bars of bulk throughput and of efficiency (throughput per busy
CPU) per mechanism, and bars of connection rates. Whiskers show the min-max over rounds. A
mechanism whose runs failed gets no bar but the word "failed", so a failure is never drawn as 0.
"""

from __future__ import annotations

import io
import os
from typing import Any

from ..errors import BadInput, MissingTool
from .report import ORDER, TITLES

COLORS = {
    "host": "#4c72b0",
    "host-remap": "#64b5cd",
    "direct": "#8172b2",
    "nat": "#55a868",
    "proxy": "#c44e52",
    "docker-proxy": "#dd8452",
    "docker-iptables": "#937860",
}


def _panels(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(placement, scenario, key, y-label) for every chart panel that has data."""
    out: list[tuple[str, str, str, str]] = []
    for placement in sorted({r["placement"] for r in rows}, key=lambda p: (p != "local", p)):
        have = {r["scenario"] for r in rows if r["placement"] == placement}
        for sc in ("bulk-in", "bulk-out", "bulk-udp"):
            if sc in have:
                out.append((placement, sc, "value", "Gbit/s"))
                out.append((placement, sc, "efficiency", "Gbit/s per busy CPU"))
        for sc in ("conn", "rr"):
            if sc in have:
                out.append((placement, sc, "value", "requests/s"))
    return out


def require() -> None:
    """Raise MissingTool now, before a run of minutes, when the chart could not be drawn after it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise MissingTool("matplotlib", "python3-matplotlib (or pip install matplotlib)") from e


def render(rows: list[dict[str, Any]], fmt: str = "png", title: str = "") -> bytes:
    require()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(rows)
    if not panels:
        raise BadInput("--plot: the result has no successful or failed runs to draw; run some scenarios")
    ncols = 2
    nrows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(nrows, ncols, figsize=(12, 3.4 * nrows), squeeze=False)
    for ax, (placement, sc, key, ylabel) in zip(axes.flat, panels, strict=False):
        sect = sorted(
            (r for r in rows if r["placement"] == placement and r["scenario"] == sc),
            key=lambda r: ORDER.index(r["mechanism"]) if r["mechanism"] in ORDER else 99,
        )
        names = [r["mechanism"] for r in sect]
        meds, lo, hi = [], [], []
        for r in sect:
            s = r[key]
            m = s["median"]
            meds.append(m or 0.0)
            lo.append(0.0 if m is None else m - s["min"])
            hi.append(0.0 if m is None else s["max"] - m)
        xs = range(len(names))
        ax.bar(xs, meds, yerr=[lo, hi], capsize=3, color=[COLORS.get(n, "#999999") for n in names])
        for x, r in zip(xs, sect, strict=True):
            if r[key]["median"] is None:
                ax.text(x, 0, "failed", ha="center", va="bottom", color="red", rotation=90)
            elif r[key]["failed"]:
                ok = r[key]["n"] - r[key]["failed"]
                ax.text(
                    x,
                    r[key]["median"] / 2,
                    f"{ok}/{r[key]['n']} ok",
                    ha="center",
                    va="center",
                    color="red",
                    fontsize=8,
                    rotation=90,
                )
            if r[key]["median"] is not None and key == "efficiency" and r.get("ratio_vs_host"):
                rh = r["ratio_vs_host"]["median"]
                if rh is not None:
                    ax.text(x, r[key]["median"], f"{rh:.2f}x", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=20, fontsize=8)
        ax.set_ylabel(ylabel)
        what = "efficiency" if key == "efficiency" else TITLES.get(sc, sc).split(" (")[0]
        ax.set_title(f"{sc} · {placement}: {what}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write(path: str, rows: list[dict[str, Any]], title: str = "") -> None:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in ("png", "svg"):
        raise BadInput(f"--plot {path}: give a file name ending in .png or .svg")
    data = render(rows, ext, title)
    with open(path, "wb") as f:
        f.write(data)
