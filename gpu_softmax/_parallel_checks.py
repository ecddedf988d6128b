"""Cross-rank checks of the vocabulary-parallel loss (gpu_softmax.torch.parallel).

Every rank describes its call in one short row of int64 (:func:`describe`); one
all-gather gives every rank the same table, and :func:`agree` reads it. Because all
ranks read the same table, they all raise the same error, or none does, before the
collective that carries the statistics (whose size depends on the row count and
dtype: ranks that disagreed there would wait for each other forever). A rank whose
own arguments fail a local check still joins the gather, flagged, so the others stop
too instead of waiting. What is compared, and what it costs: docs/vocab_parallel_checks.md.
"""

from __future__ import annotations

import struct
from typing import Any

FIELDS = ("error", "rows", "width", "vocab_start", "vocab_size", "dtype", "ignore_index", "reduction",
          "label_smoothing", "z_loss", "logit_softcap", "weight_len", "validate", "target_min", "target_max",
          "target_sum", "target_isum", "weight_sum", "weight_isum")
INDEX = {name: i for i, name in enumerate(FIELDS)}
NOT_GIVEN = -1
DTYPES = ("float16", "bfloat16", "float32", "float64")
from .options import REDUCTIONS, CEOptions
# compared as they are; the layout fields and the checksums have their own rules
SAME_EVERYWHERE = {
    "rows": "the number of loss rows (logits' size without the class dim)",
    "dtype": "the logits' dtype",
    "ignore_index": "ignore_index",
    "reduction": "reduction",
    "label_smoothing": "label_smoothing",
    "z_loss": "z_loss",
    "logit_softcap": "logit_softcap",
    "weight_len": "weight (given or not, and its length)",
    "validate": "validate",
}


def float_bits(v: Any) -> int:
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


def _show(field: str, v: int) -> str:
    if field == "logit_softcap" and v == 0:
        return "None"  # no cap travels as 0.0 (a cap is positive)
    if field in ("label_smoothing", "z_loss", "logit_softcap"):
        return repr(struct.unpack("<d", struct.pack("<q", v))[0])
    if field == "dtype":
        return DTYPES[v] if 0 <= v < len(DTYPES) else "unsupported"
    if field == "reduction":
        return repr(REDUCTIONS[v]) if 0 <= v < len(REDUCTIONS) else "?"
    if field == "weight_len":
        return "no weight" if v == NOT_GIVEN else f"weight of {v}"
    if field == "validate":
        return str(bool(v))
    return str(v)


def describe(*, rows: int, width: int, vocab_start: int | None, vocab_size: int | None, dtype: str,
             opts: CEOptions, weight_len: int | None, validate: bool,
             target_range: tuple[int, int] | None = None) -> list[int]:
    """This rank's row of the table (checksums 0: the caller fills them in with validate=True).

    ``target_range``: (min, max) of the non-ignored targets when they are range-checked
    (CPU tensors), so a bad target stops every rank, not just the one holding it."""
    row = [0] * len(FIELDS)
    row[INDEX["rows"]] = int(rows)
    row[INDEX["width"]] = int(width)
    row[INDEX["vocab_start"]] = NOT_GIVEN if vocab_start is None else int(vocab_start)
    row[INDEX["vocab_size"]] = NOT_GIVEN if vocab_size is None else int(vocab_size)
    row[INDEX["dtype"]] = DTYPES.index(dtype)
    row[INDEX["ignore_index"]] = int(opts.ignore_index)
    row[INDEX["reduction"]] = REDUCTIONS.index(opts.reduction)
    row[INDEX["label_smoothing"]] = float_bits(opts.label_smoothing)
    row[INDEX["z_loss"]] = float_bits(opts.z_loss)
    row[INDEX["logit_softcap"]] = float_bits(opts.logit_softcap or 0.0)
    row[INDEX["weight_len"]] = NOT_GIVEN if weight_len is None else int(weight_len)
    row[INDEX["validate"]] = int(bool(validate))
    row[INDEX["target_min"]], row[INDEX["target_max"]] = target_range or (0, 0)
    return row


def error_row() -> list[int]:
    """The row of a rank whose own arguments were refused: the others stop too."""
    row = [0] * len(FIELDS)
    row[INDEX["error"]] = 1
    return row


def _listing(field: str, table: list[list[int]]) -> str:
    return ", ".join(f"rank {p}: {_show(field, r[INDEX[field]])}" for p, r in enumerate(table))


def agree(table: list[list[int]], rank: int) -> tuple[int, int]:
    """(vocab_start of `rank`, vocab_size) from every rank's row; the same error on every rank."""
    pre = "vocab_parallel_cross_entropy: "
    failed = [p for p, r in enumerate(table) if r[INDEX["error"]]]
    if failed:
        raise RuntimeError(
            f"{pre}rank(s) {failed} refused their arguments (the error is raised there); every rank stops "
            "here instead of waiting for them"
        )
    for field, what in SAME_EVERYWHERE.items():
        if len({r[INDEX[field]] for r in table}) > 1:
            raise ValueError(f"{pre}{what} must be the same on every rank; got {_listing(field, table)}")

    widths = [r[INDEX["width"]] for r in table]
    given_size = [r[INDEX["vocab_size"]] for r in table]
    sizes = [s if s != NOT_GIVEN else sum(widths) for s in given_size]
    if len(set(sizes)) > 1:
        shown = ", ".join(f"rank {p}: {s}" + (" (given)" if g != NOT_GIVEN else " (sum of the widths)")
                          for p, (s, g) in enumerate(zip(sizes, given_size)))
        raise ValueError(f"{pre}vocab_size must be the same on every rank; got {shown}")
    V = sizes[0]
    starts = [r[INDEX["vocab_start"]] if r[INDEX["vocab_start"]] != NOT_GIVEN else sum(widths[:p])
              for p, r in enumerate(table)]
    problem = _tiling_problem(starts, widths, V)
    if problem:
        shards = ", ".join(f"rank {p} [{s}, {s + w})" + ("" if table[p][INDEX["vocab_start"]] != NOT_GIVEN
                                                          else " (from the widths)")
                           for p, (s, w) in enumerate(zip(starts, widths)))
        raise ValueError(
            f"{pre}the shards must cover the vocabulary [0, {V}) exactly once, but {problem}; shards: {shards}. "
            "vocab_start must be the sum of the widths of the shards before this one, vocab_size the sum of "
            "all widths"
        )

    ignore = table[0][INDEX["ignore_index"]]
    bad = [(p, v) for p, r in enumerate(table) for v in (r[INDEX["target_min"]], r[INDEX["target_max"]])
           if not 0 <= v < V]
    if bad:
        raise ValueError(
            f"{pre}target holds values outside [0, {V}) and not equal to ignore_index={ignore} "
            f"(e.g. {bad[0][1]} on rank {bad[0][0]})"
        )
    for field in ("target_sum", "weight_sum"):
        i = INDEX[field]
        if len({(r[i], r[i + 1]) for r in table}) > 1:
            what = "target" if field == "target_sum" else "weight"
            raise ValueError(
                f"{pre}{what} must be the same on every rank (validate=True compares checksums of it), "
                f"but ranks {_groups(table, i)} hold different values"
            )
    return starts[rank], V


def _groups(table: list[list[int]], i: int) -> list[list[int]]:
    seen: dict[tuple[int, int], list[int]] = {}
    for p, r in enumerate(table):
        seen.setdefault((r[i], r[i + 1]), []).append(p)
    return list(seen.values())


def _tiling_problem(starts: list[int], widths: list[int], V: int) -> str | None:
    """What is wrong with the shards [start, start + width) as a cover of [0, V), or None."""
    pos = 0
    for s, w in sorted((s, w) for s, w in zip(starts, widths) if w > 0):
        if s > pos:
            return f"columns [{pos}, {s}) are held by no rank"
        if s < pos:
            return f"columns [{s}, {min(pos, s + w)}) are held by two ranks"
        pos = s + w
    if pos < V:
        return f"columns [{pos}, {V}) are held by no rank"
    if pos > V:
        return f"columns [{V}, {pos}) lie beyond vocab_size"
    for s, w in zip(starts, widths):
        if w == 0 and not 0 <= s <= V:
            return f"an empty shard starts at {s}, outside [0, {V}]"
    return None
