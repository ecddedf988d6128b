"""The results on paper: the table's cells, the markdown report, the JSON document, the files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .cases import REFERENCE_IMPL
from .goals import evaluate_goals
from .plot import no_plot_reason, plot


def _fmt_bytes(n) -> str:
    if n is None:
        return ""
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return format(v, spec)


def _fmt_rate(v) -> str:
    """One decimal from 10 up, three significant digits below: a slow CPU float16 row
    reads 0.0400 GB/s, not 0.0."""
    if v is None or v != v:
        return ""
    if v == 0 or abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{min(8, 2 - math.floor(math.log10(abs(v))))}f}"


def _spread(lo, hi) -> str:
    return "" if lo is None or lo != lo else f"{lo:.4f}-{hi:.4f}"


TABLE_HEADER = ["op", "impl", "dtype", "shape", "kernel ms", "p10-p90 ms", "call ms", "call p10-p90", "GB/s",
                "% copy", "matched ref", "speed-up", "peak mem", "host overhead us", "note"]


def _matched_cell(r: dict) -> str:
    if r["matched"] is None:
        return ""
    if r["matched"]:
        return "yes"
    err = r.get("max_rel_err")
    return f"NO ({err:.2e})" if err is not None and err == err else "NO"


def _row_cells(r: dict) -> list[str]:
    sp = ", ".join(f"{k} {v:.2f}x" for k, v in (r.get("speedup") or {}).items())
    gpu = r.get("backend") == "cuda"  # without a GPU call and kernel time are one host-clock time
    return [r["op"], r["impl"], r["dtype"], f"{r['shape'][0]}x{r['shape'][1]}", _fmt(r["ms"], ".4f"),
            _spread(r["ms_p10"], r["ms_p90"]), _fmt(r.get("call_ms"), ".4f") if gpu else "",
            _spread(r.get("call_p10"), r.get("call_p90")) if gpu else "", _fmt_rate(r["gbps"]),
            _fmt_rate(r["pct_copy"]), _matched_cell(r), sp, _fmt_bytes(r.get("peak_mem_bytes")),
            _fmt(r.get("host_overhead_us"), ".1f"), str(r.get("note", "")).replace("|", "/").replace("\n", " ")]


def table(doc: dict) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of the results table, without the columns no row fills."""
    cells = [_row_cells(r) for r in doc["rows"]]
    keep = [i for i, _ in enumerate(TABLE_HEADER) if i < 4 or any(c[i] for c in cells)]
    header = [TABLE_HEADER[i] for i in keep]
    if doc.get("backend") != "cuda":
        header = ["median ms" if h == "kernel ms" else h for h in header]
    return header, [[c[i] for i in keep] for c in cells]


def compile_summary(doc: dict) -> str:
    cs = doc.get("compile_seconds") or {}
    if not cs:
        return ""
    names = {"nvrtc": "NVRTC (our kernels, background; a warm kernel cache makes it short)",
             "torch.compile": "torch.compile"}
    parts = [f"{names.get(k, k + ' first-call JIT')} {v:.1f} s" for k, v in cs.items()]
    return "compile: " + "; ".join(parts)


def _preamble(doc: dict) -> list[str]:
    lines = [
        f"# gpu_softmax benchmark: {doc.get('device')} ({doc.get('backend')} backend), {doc.get('date')}",
        "",
        f"Copy bandwidth (read + write): {doc.get('copy_gbps', float('nan')):.1f} GB/s; "
        f"read-only: {doc.get('read_gbps', float('nan')):.1f} GB/s",
        "",
    ]
    if doc.get("package_version") or doc.get("commit"):
        built = f", commit {doc['commit']}" if doc.get("commit") else ", commit unknown"
        lines += [f"gpu-softmax {doc.get('package_version', '?')}{built}, cuda_src tree {doc.get('cuda_src_tree')}.", ""]
    if doc.get("timing"):
        lines += [f"Timing: {doc['timing']}. GB/s counts the fewest bytes each op must move (inputs read once, "
                  "outputs written once); speed-up is baseline time / our time.", ""]
    if doc.get("backend") != "cuda":
        lines += [f"No GPU: every row times the NumPy reference on the CPU (impl \"{REFERENCE_IMPL}\"); "
                  "these are not GPU numbers.", ""]
    if doc.get("elapsed_s") is not None:
        lines += [f"Elapsed {doc['elapsed_s']:.1f} s in the benchmark loop. {compile_summary(doc)}".rstrip(), ""]
    return lines


def _goal_lines(goals: list[dict]) -> list[str]:
    lines = ["", "## Goals", "", "| goal | op | dtype | shape | ours | target | met |", "|---|---|---|---|---|---|---|"]
    for g in goals:
        unit = "x" if g["metric"].startswith("speedup") else "%"
        met = "n/a" if g["met"] is None else ("yes" if g["met"] else "**no**")
        lines.append(f"| {g['goal']} | {g['op']} | {g['dtype']} | {g['shape'][0]}x{g['shape'][1]} | "
                     f"{_fmt(g['value'], '.1f' if unit == '%' else '.2f')}{unit if g['value'] is not None else ''}"
                     f" | {g['target']:g}{unit} | {met} |")
    return lines


def markdown_table(doc: dict) -> str:
    lines = _preamble(doc)
    header, cells = table(doc)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    goals = evaluate_goals(doc) if doc.get("backend") == "cuda" else []
    if goals:
        lines += _goal_lines(goals)
    if doc.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    return float(o)


def write_results(doc: dict, out_dir: Path, stem: str = "results") -> list[Path]:
    """`<stem>.json`, `<stem>.md`, and with matplotlib `<stem>.png` (every (op, dtype) as a
    panel) plus one `<stem>-<op>-<dtype>.png` per (op, dtype)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps(doc, indent=2, default=json_default) + "\n")
    paths[1].write_text(markdown_table(doc))
    if no_plot_reason(doc) is None:
        try:
            paths += plot(doc, out_dir, stem)
        except Exception as exc:  # a plotting problem must not lose the numbers
            print(f"bench: plot failed ({type(exc).__name__}: {exc})")
    return paths
