"""The performance goals of the kernel issues, and how a results document measures up to them."""

from __future__ import annotations

# (name, ops, dtypes, shapes, metric, threshold). metric: "pct_copy" / "pct_read" (percent
# of the bandwidth measured in the same run) or "speedup:<impl>" (how many times faster
# than that baseline). "16-bit" is float16 and bfloat16.
_GOAL_FWD_SHAPES = [(32768, 4096), (4096, 32768), (1024, 131072), (256, 262144)]
_GOAL_CE_SHAPES = [(8192, 32000), (4096, 128256), (2048, 262144)]
_ALL_FLOAT = ("float32", "float16", "bfloat16")
GOALS = [
    ("softmax/log_softmax forward >= 90% of copy bandwidth", ("softmax", "log_softmax"), _ALL_FLOAT,
     _GOAL_FWD_SHAPES, "pct_copy", 90.0),
    ("softmax/log_softmax forward >= 75% of copy bandwidth (few rows)", ("softmax", "log_softmax"), _ALL_FLOAT,
     [(8, 262144), (1, 1048576)], "pct_copy", 75.0),
    ("fused CE loss+grad >= 85% of copy bandwidth", ("cross_entropy_with_grad",), _ALL_FLOAT,
     _GOAL_CE_SHAPES, "pct_copy", 85.0),
    ("fused CE loss+grad >= 2x F.cross_entropy fwd+bwd", ("cross_entropy_with_grad",), _ALL_FLOAT,
     [(4096, 128256)], "speedup:torch", 2.0),
    ("CE loss only >= 85% of read bandwidth", ("cross_entropy",), _ALL_FLOAT, _GOAL_CE_SHAPES, "pct_read", 85.0),
]


def _shape_key(shape) -> tuple[int, int]:
    return int(shape[0]), int(shape[1])


def _value(row: dict, metric: str):
    if metric.startswith("speedup:"):
        return (row.get("speedup") or {}).get(metric.split(":", 1)[1])
    return row.get(metric)


def evaluate_goals(doc: dict) -> list[dict]:
    """Each goal case the document measured: our value, the target, and whether it is met.

    Only (op, dtype, shape) cases present in the document appear; a case whose row
    carries no number (failed, skipped) has met=None.
    """
    ours = {(r["op"], r["dtype"], _shape_key(r["shape"])): r for r in doc.get("rows", [])
            if r["impl"] == "gpu_softmax" and r.get("kind", "timing") == "timing"}
    out = []
    for name, ops, dtypes, shapes, metric, threshold in GOALS:
        for op in ops:
            for dtype in dtypes:
                for shape in shapes:
                    r = ours.get((op, dtype, shape))
                    if r is None:
                        continue
                    value = _value(r, metric)
                    ok = None if value is None or value != value else bool(value >= threshold)
                    out.append({"goal": name, "op": op, "dtype": dtype, "shape": list(shape), "metric": metric,
                                "value": value, "target": threshold, "met": ok,
                                "matched": r.get("matched")})
    return out
