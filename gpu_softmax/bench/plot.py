"""Plots: GB/s against row length per (op, dtype), with the copy bandwidth as the ceiling.

matplotlib is the `bench` extra's: imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

from .cases import IMPLS, OURS


def _groups(doc: dict) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in doc["rows"]:
        if r.get("kind", "timing") == "timing":
            groups.setdefault((r["op"], r["dtype"]), []).append(r)
    return groups


def no_plot_reason(doc: dict) -> str | None:
    """Why there can be no plot (None: there can)."""
    try:
        import matplotlib  # noqa: F401
    except Exception:
        return 'matplotlib is not installed (pip install ".[bench]")'
    if not any(r["gbps"] == r["gbps"] for rows in _groups(doc).values() for r in rows):
        return "no row has a timing (every case was skipped or failed; see the notes)"
    return None


FONT_PT = 9  # the smallest text on a plot: legend, annotations, ticks
# A ceiling this many times above the fastest row would flatten the rows onto the axis
# (the CPU reference against memcpy): the axis is then scaled to the data and the
# ceiling stated in words instead of drawn.
OFF_SCALE_RATIO = 5.0


def _series(rows: list[dict]) -> dict[str, list[tuple[int, int, float]]]:
    """{impl: [(row length, rows, GB/s)]} of the timed rows, sorted by row length."""
    series: dict[str, list[tuple[int, int, float]]] = {}
    for r in rows:
        if r["gbps"] == r["gbps"]:
            series.setdefault(r["impl"], []).append((r["shape"][1], r["shape"][0], r["gbps"]))
    return {k: sorted(v) for k, v in series.items()}


def _draw_series(ax, impl: str, pts: list[tuple[int, int, float]]) -> None:
    """Points joined into a line only where they differ in row length alone: shapes that
    differ in both dimensions are not a trend along the x axis."""
    one_row_count = len({p[1] for p in pts}) == 1
    style = dict(linewidth=2.5, color="C3") if impl in OURS else {}
    ax.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", markersize=6,
            linestyle="-" if one_row_count else "none", label=impl, **style)


def _ceilings(doc: dict, op: str) -> list[tuple[str, float, str]]:
    """(label, GB/s, line style) of the bandwidths this panel compares against."""
    out = []
    if doc.get("copy_gbps"):
        out.append(("copy bandwidth (ceiling)", doc["copy_gbps"], "--"))
    if doc.get("read_gbps") and op in ("cross_entropy", "logsumexp"):
        out.append(("read bandwidth", doc["read_gbps"], ":"))
    return out


def _draw_ceilings(ax, ceilings: list[tuple[str, float, str]], fastest: float) -> None:
    """Lines where the data reach near them, else one line of text: a ceiling far above
    every row would squash the rows onto the axis."""
    off_scale = [c for c in ceilings if c[1] > OFF_SCALE_RATIO * fastest]
    for label, gbps, style in ceilings:
        if (label, gbps, style) not in off_scale:
            ax.axhline(gbps, color="k" if style == "--" else "gray", linestyle=style, linewidth=1, label=label)
    if off_scale:
        words = "; ".join(f"{label.split(' (')[0]} {gbps:.1f} GB/s" for label, gbps, _ in off_scale)
        ax.text(0.01, 0.98, f"above this axis: {words}", transform=ax.transAxes, fontsize=FONT_PT, va="top")
    drawn = [g for label, g, s in ceilings if (label, g, s) not in off_scale]
    ax.set_ylim(0, max([fastest] + drawn) * 1.25)


def _draw(ax, doc: dict, op: str, dtype: str, rows: list[dict]) -> None:
    series = _series(rows)
    for impl in sorted(series, key=lambda k: (IMPLS.index(k) if k in IMPLS else 99, k)):
        _draw_series(ax, impl, series[impl])
    for r in rows:  # shapes can share a row length: say how many rows each of ours had
        if r["impl"] in OURS and r["gbps"] == r["gbps"]:
            ax.annotate(f"{r['shape'][0]} rows", (r["shape"][1], r["gbps"]), fontsize=FONT_PT,
                        textcoords="offset points", xytext=(4, 4))
    _draw_ceilings(ax, _ceilings(doc, op), max(p[2] for pts in series.values() for p in pts))
    ax.set_xscale("log", base=2)
    ax.margins(x=0.15)  # room for the row-count labels beside the outermost points
    ax.set_xlabel("row length (elements)", fontsize=FONT_PT + 1)
    ax.set_ylabel("GB/s (kernel time)" if doc.get("backend") == "cuda" else "GB/s (host clock, CPU)",
                  fontsize=FONT_PT + 1)
    ax.tick_params(labelsize=FONT_PT)
    ax.set_title(f"{op} {dtype}", fontsize=FONT_PT + 1)
    ax.legend(fontsize=FONT_PT, loc="lower right")


def case_figure(doc: dict, op: str, dtype: str, rows: list[dict]):
    """The figure of one (op, dtype): its rows against row length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _draw(ax, doc, op, dtype, rows)
    ax.set_title(f"{op} {dtype} -- {_title(doc)}", fontsize=FONT_PT + 1)
    fig.tight_layout()
    return fig


def _title(doc: dict) -> str:
    return f"{doc.get('device')} ({doc.get('backend')}), {doc.get('date')}"


def plot(doc: dict, out_dir: Path, stem: str = "results") -> list[Path]:
    """GB/s against row length, one line per implementation, copy bandwidth as the ceiling;
    one file per (op, dtype) and an overview with every (op, dtype) as a panel.
    Returns [] without matplotlib or without a timed row (no_plot_reason says which)."""
    if no_plot_reason(doc) is not None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {k: v for k, v in _groups(doc).items() if any(r["gbps"] == r["gbps"] for r in v)}
    out_dir = Path(out_dir)
    title = _title(doc)
    paths = []
    n = len(groups)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.8 * nrow), squeeze=False)
    for ax, ((op, dtype), rows) in zip(axes.flat, sorted(groups.items())):
        _draw(ax, doc, op, dtype, rows)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=FONT_PT + 2)
    fig.tight_layout()
    overview = out_dir / f"{stem}.png"
    fig.savefig(overview, dpi=100)
    plt.close(fig)
    paths.append(overview)
    for (op, dtype), rows in sorted(groups.items()):
        fig = case_figure(doc, op, dtype, rows)
        p = out_dir / f"{stem}-{op}-{dtype}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths
