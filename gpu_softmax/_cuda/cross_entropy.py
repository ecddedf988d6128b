"""CUDA launchers for the fused softmax cross-entropy (cuda_src/cross_entropy.cu).

One call is two or three launches on CuPy's current stream: a one-block prep kernel
that reduces the targets and weights to the mean's divisor and the loss/gradient
scales (written to a 5-element device array the main kernel reads), the per-row
kernel that writes each row's loss (and logsumexp) and, for
``cross_entropy_with_grad``, the gradient, and (for a reduced loss, or a loss asked
for in another storage) a one-block finish kernel: a fixed-order float64 sum of the
per-row losses written in the requested storage (no float atomics: the same inputs
give the same bits; a 16-bit loss needs no cast launch afterwards).

Passes over the logits: one read (and one gradient write) in the warp, block and
split regimes; the stream regime (soft labels, or rows longer than the co-resident
blocks hold) reads twice. The split regime runs k blocks per row that wait for
each other: it is planned only when the device supports cooperative launches, with
the grid sized from the occupancy calculator, and launched cooperatively (the
driver refuses a grid that would not be resident rather than letting it hang).

``scale_grad`` is the backward of the autograd bridges: an in-place multiply of a
saved gradient by ``grad_output`` that returns early on the device when the scalar
is exactly 1 (no N x C traffic, no host sync).

Host synchronisation: none with ``validate=False``. ``validate=True`` reads one
scalar (the count of out-of-range targets, computed by the prep kernel) before the
main kernel runs, so a bad target raises before anything is written, also with
``inplace=True``.

Layout costs: a class axis other than the last is moved last with a copy (one
extra read and write of the logits) and the gradient is moved back as a view; with
``inplace=True`` it is then copied into the logits. Non-contiguous logits are
copied first. Soft targets are read in the accumulation dtype (float32, float64
for float64 logits), converted once when they come in another dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import _checks
from .._checks import CrossEntropyArgs
from . import launch, loader

FAMILY = "cross_entropy"

SUFFIX = launch.SUFFIX
VEC = launch.VEC

# storage -> regime -> compiled variants. warp: NV values (128-thread blocks);
# block: (NV, launch-bound threads); split: (NV, launch-bound threads), compiled for
# 2 resident blocks per SM (a block waiting for its row's partials overlaps with
# another's loads); stream: NV (512 threads). Mirrors the GS_ENTRY_CE_* lines of
# cuda_src/cross_entropy.cu; every variant compiles with zero spills for sm_80 and
# sm_90 (tests/test_compile.py).
VARIANTS: dict[str, dict[str, Any]] = {
    "float32": {"warp": (1, 2, 4), "block": ((4, 1024), (8, 1024)), "split": (8, 512), "stream": 4},
    "float16": {"warp": (1, 2), "block": ((2, 1024), (4, 1024)), "split": (4, 384), "stream": 2},
    "bfloat16": {"warp": (1, 2), "block": ((2, 1024), (4, 1024)), "split": (4, 384), "stream": 2},
    "float64": {"warp": (1, 2, 4), "block": ((4, 512), (8, 512)), "split": (8, 256), "stream": 4},
}
WARP_BLOCK_THREADS = 128
BLOCK_MIN_THREADS = 128
STREAM_THREADS = 512
PREP_THREADS = 256
SCALE_THREADS = 256
FINISH_THREADS = 256
FINISH_MAX_ROWS = 1 << 16  # one block sums this many row losses in a few microseconds
REDUCTION_CODE = {"none": 0, "mean": 1, "sum": 2}
NULL = np.uint64(0)  # a null device pointer argument

# Test hook, None in normal use: caps the split regime's chunk (elements) so that
# short rows reach it (the emulator runs every CUDA thread of every block on the CPU).
SPLIT_MAX_CHUNK: int | None = None


def warp_name(nv: int, storage: str) -> str:
    return f"gs_ce_warp{nv}_{SUFFIX[storage]}"


def block_name(nv: int, storage: str) -> str:
    return f"gs_ce_block{nv}_{SUFFIX[storage]}"


def split_name(storage: str) -> str:
    return f"gs_ce_split{VARIANTS[storage]['split'][0]}_{SUFFIX[storage]}"


def stream_name(storage: str, soft: bool) -> str:
    return f"gs_ce_stream{VARIANTS[storage]['stream']}_{'soft' if soft else 'hard'}_{SUFFIX[storage]}"


def finish_name(storage: str) -> str:
    return f"gs_ce_finish_{SUFFIX[storage]}"


def scale_name(storage: str) -> str:
    return f"gs_ce_scale_{SUFFIX[storage]}"


def prep_name(storage: str) -> str:
    return "gs_ce_prep_f64" if storage == "float64" else "gs_ce_prep_f32"


ENTRY_POINTS: tuple[str, ...] = tuple(
    sorted(
        [warp_name(nv, s) for s, v in VARIANTS.items() for nv in v["warp"]]
        + [block_name(nv, s) for s, v in VARIANTS.items() for nv, _ in v["block"]]
        + [f(s) for s in VARIANTS for f in (split_name, scale_name, finish_name)]
        + [stream_name(s, soft) for s in VARIANTS for soft in (False, True)]
        + ["gs_ce_prep_f32", "gs_ce_prep_f64"]
    )
)


# Vocabulary-parallel kernels (launched by _cuda/vocab_parallel.py): a block per row,
# streamed over the local shard, one variant per storage, __launch_bounds__(256).
VP_THREADS = 256


def vp_stats_name(storage: str) -> str:
    return f"gs_vp_stats_{SUFFIX[storage]}"


def vp_finish_name(storage: str) -> str:
    return f"gs_vp_finish_{SUFFIX[storage]}"


ENTRY_POINTS = tuple(
    sorted(ENTRY_POINTS + tuple(f(s) for s in VARIANTS for f in (vp_stats_name, vp_finish_name)))
)


def capacity(storage: str, regime: str) -> int:
    """Longest row (plus misalignment) a held regime keeps in registers (split: per block)."""
    v = VARIANTS[storage]
    if regime == "warp":
        return 32 * max(v["warp"]) * VEC[storage]
    if regime == "block":
        return max(nv * threads for nv, threads in v["block"]) * VEC[storage]
    if regime == "split":
        nv, threads = v["split"]
        return nv * threads * VEC[storage]
    raise ValueError(regime)


# The regime table: first row whose limit covers `need` (row length plus its
# worst misalignment in elements) wins. Soft labels always stream. "split" falls
# back to "stream" when the row needs more co-resident blocks than the device
# holds, or the device cannot launch cooperatively.
REGIMES: dict[str, tuple[tuple[float, str], ...]] = {
    s: ((capacity(s, "warp"), "warp"), (capacity(s, "block"), "block"), (float("inf"), "split")) for s in VARIANTS
}


@dataclass(frozen=True)
class Plan:
    regime: str
    kernel: str
    grid: int
    block: int
    width: int = 0  # warp regime: lanes per row
    k: int = 1  # split regime: blocks per row
    chunk: int = 0  # split regime: elements per block and row (a multiple of VEC)
    groups: int = 0  # split regime: rows in flight (grid // k)

    @property
    def cooperative(self) -> bool:
        return self.k > 1


def plan(storage: str, rows: int, cols: int, mis: int, soft: bool, n_sm: int,
         occupancy: Callable[[str, int], int], cooperative: bool = True) -> Plan:
    """Regime, kernel and launch shape for `rows` rows of `cols` classes.

    `cooperative`: whether the device can launch a cooperative grid (the split
    regime needs its blocks co-resident and is never launched without it)."""
    if rows < 1 or cols < 1:
        raise ValueError("plan() needs at least one row and one class")
    vec = VEC[storage]
    need = cols + mis
    regime = "stream" if soft else next(r for limit, r in REGIMES[storage] if need <= limit)
    if SPLIT_MAX_CHUNK is not None and not soft and need > SPLIT_MAX_CHUNK:
        regime = "split"
    max_grid = 2**31 - 1
    if regime == "warp":
        for nv in VARIANTS[storage]["warp"]:
            width = launch.next_pow2(-(-need // (nv * vec)))
            if width <= 32:
                break
        name = warp_name(nv, storage)
        rpb = WARP_BLOCK_THREADS // width
        cap = max(1, occupancy(name, WARP_BLOCK_THREADS)) * n_sm * 4
        return Plan("warp", name, int(min(-(-rows // rpb), cap, max_grid)), WARP_BLOCK_THREADS, width=width)
    if regime == "block":
        for nv, max_threads in VARIANTS[storage]["block"]:
            threads = max(BLOCK_MIN_THREADS, -(-(-(-need // (nv * vec))) // 32) * 32)
            if threads <= max_threads:
                break
        name = block_name(nv, storage)
        cap = max(1, occupancy(name, threads)) * n_sm * 4
        return Plan("block", name, int(min(rows, cap, max_grid)), threads)
    if regime == "split" and cooperative:
        p = _plan_split(storage, rows, cols, mis, n_sm, occupancy)
        if p is not None:
            return p
    name = stream_name(storage, soft)
    cap = max(1, occupancy(name, STREAM_THREADS)) * n_sm * 2
    return Plan("stream", name, int(min(rows, cap, max_grid)), STREAM_THREADS)


def _plan_split(storage: str, rows: int, cols: int, mis: int, n_sm: int, occupancy) -> Plan | None:
    """k blocks per row each holding a chunk; None when the grid cannot be co-resident."""
    vec = VEC[storage]
    nv, max_threads = VARIANTS[storage]["split"]
    # Largest chunk (a multiple of VEC) one block holds at this misalignment.
    cap = (max_threads * nv * vec - mis) // vec * vec
    if SPLIT_MAX_CHUNK is not None:
        cap = min(cap, max(vec, SPLIT_MAX_CHUNK // vec * vec))
    k = -(-cols // cap)
    chunk = -(-(-(-cols // k)) // vec) * vec  # spread evenly: the blocks finish together
    k = -(-cols // chunk)
    threads = max(BLOCK_MIN_THREADS, -(-(-(-(chunk + mis) // (nv * vec))) // 32) * 32)
    name = split_name(storage)
    resident = occupancy(name, threads) * n_sm
    groups = min(rows, resident // k)
    if k < 2 or groups < 1:
        return None
    return Plan("split", name, groups * k, threads, k=k, chunk=chunk, groups=groups)


def _occupancy(name: str, threads: int) -> int:
    return launch.occupancy(FAMILY, name, threads)


def _launch(name: str, grid: int, block: int, args: tuple, cooperative: bool = False) -> None:
    fn = loader.get_function(FAMILY, name)
    if not cooperative:
        fn((grid, 1, 1), (block, 1, 1), args)
        return
    # The blocks of a split row wait for each other: a cooperative launch makes the
    # driver refuse a grid that is not co-resident instead of letting it hang.
    # plan() only makes such a grid when cooperative_ok() says the device can.
    import cupy

    fn.kernel((grid, 1, 1), (block, 1, 1), args, shared_mem=0, stream=cupy.cuda.get_current_stream(),
              enable_cooperative_groups=True)


_coop: dict[int, bool] = {}


def cooperative_ok() -> bool:
    """Whether the current device launches cooperative grids (cached per device)."""
    dev = launch.device_id()
    ok = _coop.get(dev)
    if ok is None:
        import cupy

        ok = bool(cupy.cuda.Device(dev).attributes.get("CooperativeLaunch", 0))
        _coop[dev] = ok
    return ok


# ----------------------------------------------------------------------------------
# one fused call, step by step: inputs in the kernels' layout, validation and scales
# (prep), outputs, the launch, the reduction, the gradient back in the logits' layout


@dataclass
class _Inputs:
    storage: str
    acc: np.dtype
    x: Any  # (rows, cols) C-contiguous, class axis last
    tgt: Any  # int64 class indices or NULL
    soft_t: Any  # (rows, cols) probabilities in acc or NULL
    w: Any  # (cols,) weights in acc or NULL


def _kernel_inputs(a: CrossEntropyArgs, storage: str | None) -> _Inputs:
    """Logits, targets and weights in the layout and dtypes the kernels read."""
    import cupy

    st = launch.storage_of(a.logits.dtype, storage)
    acc = launch.acc_dtype(st)
    x = launch.rows_last(a.logits, a.layout)
    if a.soft:
        soft_t = launch.rows_last(a.target, a.layout)
        if soft_t.dtype != acc:
            soft_t = soft_t.astype(acc)
        tgt = NULL
    else:
        soft_t = NULL
        tgt = _checks.hard_targets_int64(cupy, a.target, a.layout.cols, a.ignore_index)
    w = NULL if a.weight is None else cupy.ascontiguousarray(a.weight, dtype=acc)
    return _Inputs(st, acc, x, tgt, soft_t, w)


def _grad_output_args(go, acc, want_grad: bool):
    """(pointer to a scalar grad_output or NULL, its value when a Python number, per-row array or NULL)."""
    import cupy

    if not want_grad:
        return NULL, 1.0, NULL
    if isinstance(go, cupy.ndarray):
        if go.ndim == 0:
            return go.astype(acc).reshape(1), 1.0, NULL
        return NULL, 1.0, cupy.ascontiguousarray(go.reshape(-1), dtype=acc)
    return NULL, float(go), NULL


def _validate_targets(a: CrossEntropyArgs, tgt, classes: int, n_bad) -> None:
    """validate=True: the one host read; raises before any per-row kernel runs."""
    import cupy

    bad_count = int(n_bad.get()[0])
    if bad_count:
        bad = (tgt != a.ignore_index) & ((tgt < 0) | (tgt >= classes))
        example = a.target.reshape(-1)[int(cupy.flatnonzero(bad)[0])]
        _checks.raise_bad_targets(bad_count, classes, a.ignore_index, int(example))


def _prep(a: CrossEntropyArgs, st: str, acc, tgt, w, rows: int, classes: int, want_grad: bool):
    """Launch the prep kernel; returns (coef, per-row grad_output or NULL).

    `coef` holds the loss and gradient scales (the mean's divisor reduced on the
    device). With validate=True and hard targets, raises for out-of-range targets.
    """
    import cupy

    g_ptr, g_val, g_rows = _grad_output_args(a.grad_output, acc, want_grad)
    coef = cupy.empty(5, dtype=acc)
    n_bad = cupy.empty(1, dtype=np.uint64)
    _launch(prep_name(st), 1, PREP_THREADS, (
        tgt, np.int64(rows), np.int64(classes), np.int64(a.ignore_index), w,
        np.int32(REDUCTION_CODE[a.reduction]), g_ptr, np.float64(g_val), coef, n_bad,
    ))
    if a.validate and not a.soft:
        _validate_targets(a, tgt, classes, n_bad)
    return coef, g_rows


def _grad_buffer(a: CrossEntropyArgs, x):
    """Where the kernel writes the gradient: over x itself when it is the logits' memory and inplace."""
    import cupy

    same_buffer = x.data.ptr == a.logits.data.ptr and x.shape == a.logits.shape
    return x if (a.inplace and same_buffer) else cupy.empty(x.shape, dtype=x.dtype)


def _launch_fused(a: CrossEntropyArgs, inp: _Inputs, coef, g_rows, grad, row_loss, row_lse) -> Plan:
    rows, cols = a.layout.rows, a.layout.cols
    x = inp.x
    p = plan(inp.storage, rows, cols, launch.worst_misalignment(x.data.ptr, cols, x.itemsize), a.soft,
             launch.sm_count(), _occupancy, cooperative_ok())
    args = (
        x, grad, inp.tgt, inp.soft_t, inp.w, coef, g_rows, row_loss, row_lse,
        np.int64(rows), np.int64(cols), np.int64(a.ignore_index),
        np.float64(a.label_smoothing), np.float64(a.z_loss), np.float64(a.logit_softcap or 0.0),
    )
    if p.regime == "warp":
        args = args + (np.int32(p.width),)
    elif p.regime == "split":
        part, cnt = _split_workspace(p, inp.acc)
        args = args + (np.int32(p.k), np.int64(p.chunk), part, cnt)
    _launch(p.kernel, p.grid, p.block, args, cooperative=p.cooperative)
    return p


def _split_workspace(p: Plan, acc):
    """Partials [group][2 rounds][k][2] and per-group arrival counters (zeroed)."""
    import cupy

    return cupy.empty(p.groups * 2 * p.k * 2, dtype=acc), cupy.zeros(p.groups, dtype=np.uint64)


def _reduce(a: CrossEntropyArgs, row_loss, acc, loss_storage: str | None):
    """The loss from the per-row losses (the mean's divisor is already in each row): per
    row, or their fixed-order sum, in `loss_storage` (None: the accumulation dtype).

    The finish kernel sums (one block, float64, fixed order) and converts in one launch,
    so a 16-bit loss needs no cast afterwards; rows past FINISH_MAX_ROWS are first
    summed by CuPy's reduction (also a fixed order)."""
    import cupy

    reduce = a.reduction != "none"
    out_st = loss_storage or ("float64" if acc == np.float64 else "float32")
    if not reduce and np.dtype(out_st if out_st != "bfloat16" else np.uint16) == row_loss.dtype:
        return row_loss.reshape(a.loss_shape)
    rows = row_loss.size
    if reduce and rows > FINISH_MAX_ROWS:
        row_loss, rows = row_loss.sum().reshape(1), 1
    out = cupy.empty(() if reduce else a.loss_shape, dtype=np.uint16 if out_st == "bfloat16" else out_st)
    grid = 1 if reduce else int(min(-(-rows // FINISH_THREADS), launch.sm_count() * 4))
    _launch(finish_name(out_st), grid, FINISH_THREADS, (row_loss, out, np.int64(rows), np.int32(reduce)))
    return out


def _grad_to_logits_layout(a: CrossEntropyArgs, grad):
    """The rows-last gradient in the logits' layout; with inplace, in the logits' memory."""
    import cupy

    layout = a.layout
    grad = cupy.moveaxis(grad, -1, layout.axis) if layout.inner != 1 else grad.reshape(a.logits.shape)
    if a.inplace:
        if grad.data.ptr != a.logits.data.ptr:
            a.logits[...] = grad
        grad = a.logits
    return grad


def _empty_rows(a: CrossEntropyArgs, acc, want_grad: bool, return_logsumexp: bool):
    import cupy

    if a.reduction == "none":
        loss = cupy.empty(a.loss_shape, dtype=acc)
    else:
        loss = cupy.full((), np.nan if a.reduction == "mean" else 0.0, dtype=acc)
    out = [loss]
    if want_grad:
        out.append(a.logits if a.inplace else cupy.empty(a.logits.shape, dtype=a.logits.dtype))
    if return_logsumexp:
        out.append(cupy.empty(a.loss_shape, dtype=acc))
    return out


def _run(a: CrossEntropyArgs, want_grad: bool, return_logsumexp: bool, storage: str | None,
         loss_storage: str | None = None):
    import cupy

    rows = a.layout.rows
    if loss_storage is not None and loss_storage not in launch.STORAGES:
        raise ValueError(f"loss_storage must be one of {launch.STORAGES} or None, got {loss_storage!r}")
    if rows == 0:
        out = _empty_rows(a, launch.acc_dtype(launch.storage_of(a.logits.dtype, storage)), want_grad,
                          return_logsumexp)
        return out[0] if len(out) == 1 else tuple(out)
    inp = _kernel_inputs(a, storage)
    coef, g_rows = _prep(a, inp.storage, inp.acc, inp.tgt, inp.w, rows, a.layout.cols, want_grad)
    row_loss = cupy.empty(rows, dtype=inp.acc)
    row_lse = cupy.empty(rows, dtype=inp.acc) if return_logsumexp else NULL
    grad = _grad_buffer(a, inp.x) if want_grad else NULL
    _launch_fused(a, inp, coef, g_rows, grad, row_loss, row_lse)
    out = [_reduce(a, row_loss, inp.acc, loss_storage)]
    if want_grad:
        out.append(_grad_to_logits_layout(a, grad))
    if return_logsumexp:
        out.append(row_lse.reshape(a.loss_shape))
    return out[0] if len(out) == 1 else tuple(out)


def cross_entropy(a: CrossEntropyArgs, return_logsumexp: bool = False, *, storage: str | None = None,
                  loss_storage: str | None = None):
    """Loss only: each logits row read once, nothing of size N x C written.

    `loss_storage`: the loss's storage (e.g. the logits' own, as the torch bridge
    returns it; "bfloat16" as uint16 words); None: the accumulation dtype."""
    return _run(a, False, return_logsumexp, storage, loss_storage)


def cross_entropy_with_grad(a: CrossEntropyArgs, return_logsumexp: bool = False, *, storage: str | None = None,
                            loss_storage: str | None = None):
    """(loss, grad_logits[, lse]): the logits read once and the gradient written once (twice read when streamed)."""
    return _run(a, True, return_logsumexp, storage, loss_storage)


def scale_grad(grad, grad_output, cols: int, inner: int, *, storage: str | None = None) -> None:
    """grad *= grad_output in place, on the device; nothing happens past one scalar read when it is 1.

    grad: a C-contiguous gradient in the logits' own layout (class axis of length
    `cols` followed by `inner` elements per class); grad_output: a 0-d or 1-element
    array (one scalar) or one value per row (the loss shape, rows ordered as in
    grad), in the accumulation dtype of grad's storage."""
    import cupy

    st = launch.storage_of(grad.dtype, storage)
    acc = launch.acc_dtype(st)
    if not grad.flags.c_contiguous:
        raise ValueError("scale_grad needs a C-contiguous gradient")
    if grad_output.dtype != acc:
        raise TypeError(f"grad_output must be {acc} for {st} gradients, got {grad_output.dtype}")
    n = grad.size
    if n == 0:
        return
    scalar = grad_output.size == 1 and grad_output.ndim <= 1
    if not scalar and grad_output.size * cols != n:
        raise ValueError(f"grad_output has {grad_output.size} values, expected 1 or one per row ({n // cols})")
    go = cupy.ascontiguousarray(grad_output.reshape(-1))
    slots = -(-(n + VEC[st]) // VEC[st])
    name = scale_name(st)
    # One wave of resident blocks, grid-stride: the common grad_output == 1 launch is
    # then as short as a launch can be (every block reads one scalar and leaves).
    grid = int(min(-(-slots // SCALE_THREADS), max(1, _occupancy(name, SCALE_THREADS)) * launch.sm_count()))
    _launch(name, grid, SCALE_THREADS, (
        grad, np.int64(n), np.int64(cols), np.int64(inner), go if scalar else NULL, NULL if scalar else go,
    ))
