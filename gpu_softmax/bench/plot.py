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


def _draw(ax, doc: dict, op: str, dtype: str, rows: list[dict]) -> None:
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["gbps"] == r["gbps"]:
            series.setdefault(r["impl"], []).append((r["shape"][1], r["gbps"]))
    for impl in sorted(series, key=lambda k: (IMPLS.index(k) if k in IMPLS else 99, k)):
        pts = sorted(series[impl])
        style = dict(linewidth=2.5, color="C3") if impl in OURS else {}
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl, **style)
    for r in rows:  # shapes can share a row length: say how many rows each of ours had
        if r["impl"] in OURS and r["gbps"] == r["gbps"]:
            ax.annotate(f"{r['shape'][0]} rows", (r["shape"][1], r["gbps"]), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
    if doc.get("copy_gbps"):
        ax.axhline(doc["copy_gbps"], color="k", linestyle="--", linewidth=1, label="copy bandwidth (ceiling)")
    if doc.get("read_gbps") and op in ("cross_entropy", "logsumexp"):
        ax.axhline(doc["read_gbps"], color="gray", linestyle=":", linewidth=1, label="read bandwidth")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("row length (elements)")
    ax.set_ylabel("GB/s (kernel time)" if doc.get("backend") == "cuda" else "GB/s (host clock, CPU)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{op} {dtype}", fontsize=9)
    ax.legend(fontsize=6)


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
    title = f"{doc.get('device')} ({doc.get('backend')}), {doc.get('date')}"
    paths = []
    n = len(groups)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.8 * nrow), squeeze=False)
    for ax, ((op, dtype), rows) in zip(axes.flat, sorted(groups.items())):
        _draw(ax, doc, op, dtype, rows)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    overview = out_dir / f"{stem}.png"
    fig.savefig(overview, dpi=100)
    plt.close(fig)
    paths.append(overview)
    for (op, dtype), rows in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        _draw(ax, doc, op, dtype, rows)
        ax.set_title(f"{op} {dtype} -- {title}", fontsize=9)
        fig.tight_layout()
        p = out_dir / f"{stem}-{op}-{dtype}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths
