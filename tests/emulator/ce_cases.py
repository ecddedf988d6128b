"""Cross-entropy inputs the emulated suites and the NumPy tests build alike: option specs made concrete, the
sharded problems of the vocabulary-parallel sweeps, and the rows of special values.

NumPy only, and no gpu_softmax import: the runners import this before the harness installs its fake CuPy.
"""

from __future__ import annotations

import numpy as np


def options_alone(*, softcap: bool = True) -> list[dict]:
    """The plain call, then each option on its own, as specs for draw_options; without logit_softcap where a
    sweep gives the cap a list of its own."""
    alone = [{}, {"reduction": "sum"}, {"reduction": "none"}, {"label_smoothing": 0.1}, {"z_loss": 1e-2},
             {"logit_softcap": 3.0}, {"ignore_index": 2}, {"grad_output": 0.5}, {"weight": "w"}]
    return alone if softcap else [spec for spec in alone if "logit_softcap" not in spec]


def draw_options(spec: dict, rows: int, cols: int, dt, rng, row_dtype) -> dict:
    """The keyword arguments a spec stands for: weight "w" becomes random class weights in dt, grad_output "rows"
    one random grad_output per row in row_dtype (the loss dtype)."""
    kw = dict(spec)
    if kw.get("weight") == "w":
        kw["weight"] = rng.uniform(0.1, 2, cols).astype(dt)
    if kw.get("grad_output") == "rows":
        kw["grad_output"] = rng.standard_normal(rows).astype(row_dtype)
    return kw


def sharded_problems(rng, specs, shards, result_dtype, *, max_vocab_off_float32: int):
    """(dt, widths, rows, spec, kw, logits, target) for every float32/float16/float64 sweep point.

    Every spec runs in float32 on short vocabularies; elsewhere only the first and last (the emulator runs every
    CUDA thread on the CPU), and the other dtypes skip vocabularies above max_vocab_off_float32. About a fifth
    of the targets are ignored.
    """
    for dt in (np.float32, np.float16, np.float64):
        for widths, rows in shards:
            V = sum(widths)
            if V > max_vocab_off_float32 and dt != np.float32:
                continue
            for spec in specs if (dt == np.float32 and V < 1000) else [specs[0], specs[-1]]:
                kw = draw_options(spec, rows, V, dt, rng, result_dtype(dt))
                x = (rng.standard_normal((rows, V)) * 3).astype(dt)
                t = rng.integers(0, V, rows)
                t[rng.random(rows) < 0.2] = kw.get("ignore_index", -100)
                yield dt, widths, rows, spec, kw, x, t


def mark_special_rows(x: np.ndarray, widths) -> np.ndarray:
    """Rows 0-5 of x (at least 8 rows, at least two shards) set to the special cases of a sharded row, in place:
    a NaN in shard 0, +inf in shard 1, all -inf, one -inf, shard 0 all -inf (a padded vocabulary) and shard 1
    all -inf. Rows 6 and later stay as they are."""
    first, second = widths[0], widths[1]
    x[0, first - 1] = np.nan
    x[1, first + second // 2] = np.inf
    x[2, :] = -np.inf
    x[3, 0] = -np.inf
    x[4, :first] = -np.inf
    x[5, first:first + second] = -np.inf
    return x
