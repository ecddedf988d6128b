"""GPU tests of the softmax family against the NumPy reference.

Every test needs a CUDA device and CuPy (the `cp` fixture skips otherwise).
Inputs are fresh random numbers on each run (the `rng` fixture prints its seed);
outputs written through `out=` are poisoned first with 0xFF bytes (NaN in every
float format), so an element a kernel forgets to write shows up as a NaN mismatch.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpu_softmax
from gpu_softmax import reference
from gpu_softmax.testing import assert_close, poisoned

from conftest import GPU_TEST_MAX_ELEMENTS

pytestmark = pytest.mark.gpu

DTYPES = [np.float16, np.float32, np.float64]
LENGTHS = [1, 2, 31, 32, 33, 127, 1000, 1024, 1025, 2047, 4096, 8191, 32000, 50257, 65536, 131072, 262144, 1048576]
ROW_COUNTS = [1, 3, 64, 4097]
# The float64 reference runs on the CPU: larger cases are skipped (raise this to
# 1 << 28 for a long soak), yet every row length appears with 1 and 3 rows and
# every row count with lengths up to 2047.
MAX_ELEMENTS = GPU_TEST_MAX_ELEMENTS

SWEEP = [(n, r) for n in LENGTHS for r in ROW_COUNTS if n * r <= MAX_ELEMENTS]
assert {n for n, _ in SWEEP} == set(LENGTHS) and {r for _, r in SWEEP} == set(ROW_COUNTS)

FWD = ("softmax", "log_softmax")
BWD = ("softmax_backward", "log_softmax_backward")


def _rand(rng, shape, dtype, scale=2.0):
    x = rng.standard_normal(shape) * scale
    if np.dtype(dtype) == np.float64:
        # Softmax is shift-invariant; the shift keeps logsumexp away from 0, where
        # m + log(sum) cancels and the summation order alone (~1e-16 absolute)
        # would exceed float64's 1e-12 relative tolerance.
        x += 5.0
    return x.astype(dtype)


def _check_forward(cp, x_np, x, axis=-1, what=""):
    """softmax and log_softmax into poisoned out=, logsumexp, all against the reference."""
    dt = x_np.dtype
    for name in FWD:
        out = poisoned(cp, x.shape, dt)
        got = getattr(gpu_softmax, name)(x, axis=axis, out=out)
        assert got is out
        assert_close(cp.asnumpy(got), getattr(reference, name)(x_np, axis=axis), dt, f"{name}{what}")
    lse = gpu_softmax.logsumexp(x, axis=axis)
    ref = reference.logsumexp(x_np, axis=axis)
    assert lse.dtype == ref.dtype and lse.shape == ref.shape
    assert_close(cp.asnumpy(lse), ref, ref.dtype, f"logsumexp{what}")


def _backward_inputs(rng, shape, dtype, axis=-1):
    """{name: (grad_y, y)} for both backward ops.

    float16/float32: y = softmax / log_softmax of Gaussian logits, Gaussian
    grad_y (the kernels sum in float64, so these match the float64 reference).

    float64: the kernels and the reference sum a row in different orders, which
    moves the row sum by ~1e-16; wherever grad_y - sum (or grad_y - exp(y) * sum)
    is within ~1e-4 of 0, that alone exceeds the 1e-12 relative tolerance, so
    Gaussian data fails a few elements in every 1e5 whatever the kernel does. So:
    - softmax_backward: y = k / 2**20 and grad_y = g / 2**10 (random integers k,
      g). Every product and partial sum is then exact in float64 in any order,
      and both sides round only the final multiply: bit-identical results.
    - log_softmax_backward: grad_y of +-1 balanced along the axis (row sum 0 or
      +-1, exact in any order) and exp(y) in [0.01, 0.5], so |grad_x| >= 0.5.
    Neither y needs to be a real (log-)softmax output: the backward formulas
    hold for any y, and the reference applies the same formula.
    """
    if np.dtype(dtype) != np.float64:
        x = _rand(rng, shape, dtype)
        gy = _rand(rng, shape, dtype, scale=1.0)
        return {
            "softmax_backward": (gy, reference.softmax(x, axis=axis)),
            "log_softmax_backward": (gy, reference.log_softmax(x, axis=axis)),
        }
    y_sm = rng.integers(0, 1 << 20, size=shape) / float(1 << 20)
    gy_sm = rng.integers(-(1 << 10), 1 << 10, size=shape) / float(1 << 10)
    moved = np.moveaxis(np.ones(shape), axis, -1)
    n = moved.shape[-1]
    half = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    balanced = np.moveaxis(rng.permuted(np.broadcast_to(half, moved.shape).copy(), axis=-1), -1, axis)
    y_lsm = np.log(rng.uniform(0.01, 0.5, size=shape))
    return {"softmax_backward": (gy_sm, y_sm), "log_softmax_backward": (balanced, y_lsm)}


def _check_backward(cp, inputs, axis=-1, what=""):
    for name in BWD:
        gy_np, y_np = inputs[name]
        got = getattr(gpu_softmax, name)(cp.asarray(gy_np), cp.asarray(y_np), axis=axis)
        assert got.shape == y_np.shape and got.dtype == y_np.dtype
        ref = getattr(reference, name)(gy_np, y_np, axis=axis)
        assert_close(cp.asnumpy(got), ref, y_np.dtype, f"{name}{what}")


# ----------------------------------------------------------------------------------
# the sweep: every row length x row count x dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cols,rows", SWEEP, ids=[f"{r}x{n}" for n, r in SWEEP])
def test_forward_sweep(cp, rng, dtype, cols, rows):
    x_np = _rand(rng, (rows, cols), dtype)
    _check_forward(cp, x_np, cp.asarray(x_np), what=f" {rows}x{cols}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cols,rows", SWEEP, ids=[f"{r}x{n}" for n, r in SWEEP])
def test_backward_sweep(cp, rng, dtype, cols, rows):
    _check_backward(cp, _backward_inputs(rng, (rows, cols), dtype), what=f" {rows}x{cols}")


# ----------------------------------------------------------------------------------
# alignment, layout, out=, in-place

# Lengths reaching every regime: warp, block, split across blocks (few rows).
REGIME_LENGTHS = [1, 3, 7, 33, 1000, 1025, 5000, 40000, 131073]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cols", REGIME_LENGTHS)
@pytest.mark.parametrize("offset", [1, 3])
def test_unaligned_views(cp, rng, dtype, cols, offset):
    rows = 5
    buf_np = _rand(rng, rows * cols + offset, dtype)
    x = cp.asarray(buf_np)[offset:].reshape(rows, cols)
    x_np = buf_np[offset:].reshape(rows, cols)
    _check_forward(cp, x_np, x, what=f" offset {offset}")
    # out= misaligned differently from x: element stores on the whole row.
    for name in FWD:
        obuf = poisoned(cp, rows * cols + offset + 1, dtype)
        out = obuf[offset + 1 :].reshape(rows, cols)
        got = getattr(gpu_softmax, name)(x, out=out)
        assert got is out
        assert_close(cp.asnumpy(out), getattr(reference, name)(x_np), dtype, f"{name} out offset")
    # backward with y and grad_y misaligned differently from each other
    for name, (gy_np, y_np) in _backward_inputs(rng, (rows, cols), dtype).items():
        ybuf = cp.zeros(rows * cols + offset, dtype=dtype)
        ybuf[offset:] = cp.asarray(y_np).reshape(-1)
        gbuf = cp.zeros(rows * cols + 2, dtype=dtype)
        gbuf[2:] = cp.asarray(gy_np).reshape(-1)
        got = getattr(gpu_softmax, name)(gbuf[2:].reshape(rows, cols), ybuf[offset:].reshape(rows, cols))
        assert_close(cp.asnumpy(got), getattr(reference, name)(gy_np, y_np), dtype, f"{name} unaligned")


@pytest.mark.memcheck
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_no_writes_outside_out(cp, rng, dtype):
    """Guard elements around out= keep their sentinel value in every regime."""
    for cols in REGIME_LENGTHS:
        rows = 3
        x_np = _rand(rng, (rows, cols), dtype)
        x = cp.asarray(x_np)
        for lead in (0, 1, 5):
            buf = cp.full(rows * cols + lead + 9, 7.0, dtype=dtype)
            out = buf[lead : lead + rows * cols].reshape(rows, cols)
            gpu_softmax.softmax(x, out=out)
            guard = cp.asnumpy(cp.concatenate([buf[:lead], buf[lead + rows * cols :]]))
            assert (guard == 7.0).all(), f"write outside out (cols={cols}, lead={lead})"
            assert_close(cp.asnumpy(out), reference.softmax(x_np), dtype, f"softmax cols={cols}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", [((4, 300, 5), 1), ((7, 3, 2), 0), ((2, 3, 4097), 2), ((6, 40000), 0), ((3, 5), -2)])
def test_non_last_axis(cp, rng, dtype, shape, axis):
    x_np = _rand(rng, shape, dtype)
    _check_forward(cp, x_np, cp.asarray(x_np), axis=axis, what=f" axis {axis}")
    _check_backward(cp, _backward_inputs(rng, shape, dtype, axis=axis), axis=axis, what=f" axis {axis}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_non_contiguous_input_and_out(cp, rng, dtype):
    x_np = _rand(rng, (6, 2 * 1500), dtype)
    x = cp.asarray(x_np)[:, ::2]
    xs = x_np[:, ::2]
    _check_forward(cp, xs, x, what=" strided")
    out_buf = poisoned(cp, (6, 3000), dtype)
    out = out_buf[:, 1::2]
    got = gpu_softmax.softmax(x, out=out)
    assert got is out
    assert_close(cp.asnumpy(out), reference.softmax(xs), dtype, "softmax strided out")
    assert cp.isnan(out_buf[:, ::2]).all(), "strided out= wrote outside its elements"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("rows,cols", [(4097, 3), (64, 1000), (9, 3000), (3, 65536), (1, 1048576), (300, 33000)])
def test_in_place(cp, rng, dtype, rows, cols):
    x_np = _rand(rng, (rows, cols), dtype)
    for name in FWD:
        x = cp.asarray(x_np)
        got = getattr(gpu_softmax, name)(x, out=x)
        assert got is x
        assert_close(cp.asnumpy(x), getattr(reference, name)(x_np), dtype, f"in-place {name} {rows}x{cols}")


def test_in_place_non_last_axis(cp, rng):
    x_np = _rand(rng, (5, 700, 3), np.float32)
    x = cp.asarray(x_np)
    got = gpu_softmax.log_softmax(x, axis=1, out=x)
    assert got is x
    assert_close(cp.asnumpy(x), reference.log_softmax(x_np, axis=1), np.float32, "in-place axis 1")


def test_out_overlapping_input(cp, rng):
    buf_np = _rand(rng, 4 * 100 + 50, np.float32)
    buf = cp.asarray(buf_np)
    x = buf[:400].reshape(4, 100)
    out = buf[50:450].reshape(4, 100)
    expected = reference.softmax(buf_np[:400].reshape(4, 100))
    gpu_softmax.softmax(x, out=out)
    assert_close(cp.asnumpy(out), expected, np.float32, "overlapping out")


# ----------------------------------------------------------------------------------
# forced stream regime and split rows (small inputs reach the long-row code)


@pytest.mark.memcheck
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("rows,cols", [(3, 1), (5, 777), (2, 5000), (1, 200003), (4, 70000)])
def test_stream_regime(cp, rng, monkeypatch, dtype, rows, cols):
    from gpu_softmax._cuda import softmax as mod

    monkeypatch.setattr(mod, "POLICY", mod.POLICY.replace(force_regime="stream"))
    x_np = _rand(rng, (rows, cols), dtype)
    _check_forward(cp, x_np, cp.asarray(x_np), what=" stream")
    _check_backward(cp, _backward_inputs(rng, (rows, cols), dtype), what=" stream")
    x = cp.asarray(x_np)
    gpu_softmax.softmax(x, out=x)
    assert_close(cp.asnumpy(x), reference.softmax(x_np), dtype, "stream in-place")
    # unaligned
    buf_np = _rand(rng, rows * cols + 1, dtype)
    _check_forward(cp, buf_np[1:].reshape(rows, cols), cp.asarray(buf_np)[1:].reshape(rows, cols), what=" stream unaligned")


@pytest.mark.memcheck
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("rows,cols", [(2, 5000), (7, 16384), (1, 9000)])
def test_split_few_rows(cp, rng, monkeypatch, dtype, rows, cols):
    """Block-regime lengths forced through the split planner (rows split over SMs)."""
    from gpu_softmax._cuda import softmax as mod

    monkeypatch.setattr(mod, "POLICY", mod.POLICY.replace(force_regime="split", split_min_cols=1))
    x_np = _rand(rng, (rows, cols), dtype)
    _check_forward(cp, x_np, cp.asarray(x_np), what=" split")
    _check_backward(cp, _backward_inputs(rng, (rows, cols), dtype), what=" split")


# ----------------------------------------------------------------------------------
# regime edges on this GPU: rows = SMs +- 1, each capacity +- 1, misaligned views


def _edge_lengths(mod, storage, direction, dev):
    vec = mod.VEC[storage]
    wcap = mod._warp_capacity(storage, direction)
    rcap = mod.row_capacity(storage, direction, dev)
    return sorted({wcap - 1, wcap, wcap + 1, wcap + 1 - vec, rcap - vec, rcap - 1, rcap, rcap + 1, mod.SPLIT_MIN_COLS})


def _at_offset(cp, a_np, offset):
    """A CuPy view of a_np's values starting `offset` elements past an allocation."""
    buf = cp.empty(a_np.size + offset, dtype=a_np.dtype)
    view = buf[offset:].reshape(a_np.shape)
    view[...] = cp.asarray(a_np)
    return view


def _check_backward_at(cp, inputs, offset, what):
    for name in BWD:
        gy_np, y_np = inputs[name]
        got = getattr(gpu_softmax, name)(_at_offset(cp, gy_np, offset), _at_offset(cp, y_np, offset))
        assert_close(cp.asnumpy(got), getattr(reference, name)(gy_np, y_np), y_np.dtype, f"{name}{what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_regime_edges_on_this_gpu(cp, rng, dtype):
    """Each regime's last length, one more, at both alignments, with rows on both
    sides of the SM count (split below it, one block per row at and above it)."""
    from gpu_softmax._cuda import softmax as mod

    dev = mod.current_device()
    storage = np.dtype(dtype).name
    seen = set()
    for direction in ("fwd", "bwd"):
        for cols in _edge_lengths(mod, storage, direction, dev):
            for rows in (dev.n_sm - 1, dev.n_sm, dev.n_sm + 1):
                if rows * (cols + 1) > 4 * MAX_ELEMENTS:
                    rows = 2  # keep the CPU reference affordable; few rows still split
                for offset in (0, 1):
                    buf = _rand(rng, rows * cols + offset, dtype)
                    x_np = buf[offset:].reshape(rows, cols)
                    x = cp.asarray(buf)[offset:].reshape(rows, cols)
                    mis = mod.worst_misalignment(x.data.ptr, cols, x.itemsize)
                    seen.add(mod.plan(storage, direction, rows, cols, mis, dev).regime)
                    what = f" {direction} {rows}x{cols}+{offset}"
                    if direction == "fwd":
                        _check_forward(cp, x_np, x, what=what)
                    else:
                        _check_backward_at(cp, _backward_inputs(rng, (rows, cols), dtype), offset, what)
    assert {"warp", "row", "split", "stream"} <= seen, seen


@pytest.mark.memcheck
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("rows,cols", [(5, 1031), (3, 4103), (300, 2053), (2, 20000)])
def test_row_regime_staged_in_shared_memory(cp, rng, monkeypatch, dtype, rows, cols):
    """The row regime with most of each row staged in shared memory (cp.async)."""
    from gpu_softmax._cuda import softmax as mod

    monkeypatch.setattr(mod, "POLICY", mod.POLICY.replace(force_regime="stage"))
    x_np = _rand(rng, (rows, cols), dtype)
    _check_forward(cp, x_np, cp.asarray(x_np), what=" stage")
    _check_backward(cp, _backward_inputs(rng, (rows, cols), dtype), what=" stage")
    buf_np = _rand(rng, rows * cols + 1, dtype)
    _check_forward(cp, buf_np[1:].reshape(rows, cols), cp.asarray(buf_np)[1:].reshape(rows, cols), what=" stage unaligned")
    x = cp.asarray(x_np)
    gpu_softmax.softmax(x, out=x)
    assert_close(cp.asnumpy(x), reference.softmax(x_np), dtype, "stage in-place")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cooperative_grids_fit_the_drivers_occupancy(cp, dtype):
    """Every plan with k > 1 over the regime-edge shapes: the occupancy model's grid
    is at most what the driver itself says is resident (issue 24 item 5)."""
    from gpu_softmax._cuda import device, loader
    from gpu_softmax._cuda import softmax as mod

    dev = mod.current_device()
    storage = np.dtype(dtype).name
    checked = 0
    for direction in ("fwd", "bwd", "lse"):
        lengths = _edge_lengths(mod, storage, "fwd" if direction == "lse" else direction, dev)
        for cols in lengths + [1 << 18, 1 << 20, (1 << 21) + 3]:
            for rows in (1, 2, 7, dev.n_sm - 1):
                for mis in (0, mod.VEC[storage] - 1):
                    for pol in (mod.DEFAULT_POLICY, mod.DEFAULT_POLICY.replace(force_regime="split", split_min_cols=1),
                                mod.DEFAULT_POLICY.replace(force_regime="stream")):
                        p = mod.plan(storage, direction, rows, cols, mis, dev, pol)
                        if p.k > 1:
                            fn = loader.get_function(mod.FAMILY, p.kernel).kernel
                            assert p.grid <= device.driver_occupancy(fn, p.block, p.smem) * dev.n_sm, p
                            checked += 1
    assert checked > 0


def test_split_workspace_is_reused_across_calls_and_streams(cp, rng):
    """Split kernels reset their counters: repeated calls, on two streams, stay right."""
    from gpu_softmax._cuda import softmax as mod

    x_np = _rand(rng, (3, 300001), np.float32)
    x = cp.asarray(x_np)
    want = reference.softmax(x_np)
    s = cp.cuda.Stream(non_blocking=True)
    for i in range(6):
        with (s if i % 2 else cp.cuda.Stream.null):
            got = gpu_softmax.softmax(x)
        s.synchronize()
        assert_close(cp.asnumpy(got), want, np.float32, f"split call {i}")
    cp.cuda.Device().synchronize()
    for part, cnt in mod.device.current().workspaces.values():
        assert int(cnt.sum()) == 0


# ----------------------------------------------------------------------------------
# special values


def _special_rows(cols, dtype, rng):
    """Rows: plain, NaN inside, +inf inside, all -inf, some -inf, +inf and -inf,
    all equal, one huge value, NaN and +inf."""
    base = _rand(rng, (9, cols), dtype)
    j = cols // 2
    base[1, j] = np.nan
    base[2, j] = np.inf
    base[3, :] = -np.inf
    base[4, ::2] = -np.inf
    base[5, 0] = np.inf
    base[5, -1] = -np.inf
    base[6, :] = 3.0
    base[7, j] = 60.0 if dtype != np.float16 else 11.0
    base[8, 0] = np.nan
    base[8, -1] = np.inf
    return base


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cols", [1, 2, 5, 64, 1000, 3000, 40000])
def test_nan_inf_rows(cp, rng, dtype, cols):
    x_np = _special_rows(cols, dtype, rng)
    _check_forward(cp, x_np, cp.asarray(x_np), what=f" special cols={cols}")


@pytest.mark.memcheck
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_nan_inf_rows_stream_and_split(cp, rng, monkeypatch, dtype):
    from gpu_softmax._cuda import softmax as mod

    x_np = _special_rows(70001, dtype, rng)
    for force in ("stream", "split"):
        monkeypatch.setattr(mod, "POLICY", mod.DEFAULT_POLICY.replace(force_regime=force))
        _check_forward(cp, x_np, cp.asarray(x_np), what=f" special {force}")


def test_logsumexp_conventions(cp):
    x = cp.asarray(np.array([[-np.inf, -np.inf], [np.inf, 0.0], [np.nan, np.inf], [0.0, np.log(3.0)]], dtype=np.float32))
    got = cp.asnumpy(gpu_softmax.logsumexp(x))
    assert got.dtype == np.float32
    assert got[0] == -np.inf and got[1] == np.inf and np.isnan(got[2])
    assert abs(got[3] - np.log(4.0)) < 1e-6
    got16 = gpu_softmax.logsumexp(x.astype(cp.float16))
    assert got16.dtype == np.float32


def test_near_zero_logsumexp_and_dominant_rows(cp, rng):
    """Rows where one element dominates: log_softmax's max element is -log(1+tiny)
    and logsumexp can land near 0; both need the sum kept as 1 + r."""
    x_np = np.zeros((4097, 2), dtype=np.float32)
    x_np[:, 0] = rng.uniform(-0.7, 0.0, 4097).astype(np.float32)
    x_np[:, 1] = x_np[:, 0] - rng.uniform(3.0, 15.0, 4097).astype(np.float32)
    _check_forward(cp, x_np, cp.asarray(x_np), what=" dominant")


# ----------------------------------------------------------------------------------
# empty inputs, bf16, streams, huge inputs


@pytest.mark.parametrize("shape,axis", [((0, 5), -1), ((3, 0), -1), ((3, 0), 0), ((2, 0, 4), 1)])
def test_empty(cp, shape, axis):
    x = cp.zeros(shape, dtype=cp.float32)
    x_np = np.zeros(shape, dtype=np.float32)
    for name in FWD:
        got = getattr(gpu_softmax, name)(x, axis=axis)
        assert got.shape == shape
    lse = gpu_softmax.logsumexp(x, axis=axis)
    ref = reference.logsumexp(x_np, axis=axis)
    assert lse.shape == ref.shape and lse.dtype == ref.dtype
    assert_close(cp.asnumpy(lse), ref, np.float32, "empty logsumexp")
    for name in BWD:
        got = getattr(gpu_softmax, name)(x, x, axis=axis)
        assert got.shape == shape


def _to_bf16_bits(a32: np.ndarray) -> np.ndarray:
    return (a32.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("rows,cols", [(64, 33), (7, 1000), (3, 5000), (2, 70000)])
def test_bfloat16_storage(cp, rng, rows, cols):
    from gpu_softmax._cuda import softmax as mod

    bits = _to_bf16_bits(_rand(rng, (rows, cols), np.float32))
    xf = _from_bf16_bits(bits).astype(np.float64)  # exactly the bf16 values
    x = cp.asarray(bits)
    for name in FWD:
        out = poisoned(cp, x.shape, cp.uint16)  # bf16 words, NaN
        got = mod.forward_raw(x, -1, name, out=out, storage="bfloat16")
        assert got is out and got.dtype == cp.uint16
        assert_close(_from_bf16_bits(cp.asnumpy(got)), getattr(reference, name)(xf), "bfloat16", f"bf16 {name}")
    lse = mod.forward_raw(x, -1, "logsumexp", storage="bfloat16")
    assert lse.dtype == cp.float32
    assert_close(cp.asnumpy(lse), reference.logsumexp(xf), np.float32, "bf16 logsumexp")
    y_bits = _to_bf16_bits(reference.softmax(xf).astype(np.float32))
    g_bits = _to_bf16_bits(_rand(rng, (rows, cols), np.float32))
    got = mod.backward_raw(cp.asarray(g_bits), cp.asarray(y_bits), -1, "softmax_backward", storage="bfloat16")
    ref = reference.softmax_backward(_from_bf16_bits(g_bits).astype(np.float64), _from_bf16_bits(y_bits).astype(np.float64))
    assert_close(_from_bf16_bits(cp.asnumpy(got)), ref, "bfloat16", "bf16 softmax_backward")


def test_runs_on_current_stream(cp, rng):
    x_np = _rand(rng, (300, 5000), np.float32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        x = cp.asarray(x_np)
        y = gpu_softmax.softmax(x)
        lse = gpu_softmax.logsumexp(x)
        z = gpu_softmax.log_softmax(x, out=x)
    s.synchronize()
    assert_close(cp.asnumpy(y), reference.softmax(x_np), np.float32, "stream softmax")
    assert_close(cp.asnumpy(lse), reference.logsumexp(x_np), np.float32, "stream logsumexp")
    assert_close(cp.asnumpy(z), reference.log_softmax(x_np), np.float32, "stream log_softmax")


def _need_free_bytes(cp, n):
    free, _ = cp.cuda.Device().mem_info
    if free < n:
        pytest.skip(f"needs {n / 2**30:.1f} GiB free GPU memory, {free / 2**30:.1f} GiB free")


@pytest.mark.parametrize("rows,cols", [((1 << 21) + 1, 1024), ((1 << 15) + 1, 65536)])
def test_more_than_2_31_elements(cp, rng, rows, cols):
    """float16 in place, > 2**31 elements: 64-bit offsets in the warp and split regimes."""
    n = rows * cols
    assert n > 2**31
    _need_free_bytes(cp, n * 2 + (1 << 30) * 2)
    x = cp.empty((rows, cols), dtype=cp.float16)
    step = max(1, (1 << 26) // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        x[r0:r1] = (cp.random.standard_normal((r1 - r0, cols), dtype=cp.float32) * 2).astype(cp.float16)
    pick_np = np.array([0, 1, rows // 2, rows - 2, rows - 1])
    pick = cp.asarray(pick_np)
    x_np = cp.asnumpy(x[pick])
    lse = gpu_softmax.logsumexp(x)
    assert_close(cp.asnumpy(lse[pick]), reference.logsumexp(x_np), np.float32, "huge logsumexp")
    got = gpu_softmax.softmax(x, out=x)
    assert got is x
    assert_close(cp.asnumpy(x[pick]), reference.softmax(x_np), np.float16, "huge softmax")
    del x, lse, got
    cp.get_default_memory_pool().free_all_blocks()
