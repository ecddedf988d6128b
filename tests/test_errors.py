"""Argument errors: type, message, and that they come before any computation.

Every check runs for both the top-level dispatcher (`gpu_softmax.<fn>`) and the
NumPy reference (`gpu_softmax.reference.<fn>`).
"""

from __future__ import annotations

import array

import numpy as np
import pytest

import gpu_softmax
from gpu_softmax import reference

MODULES = pytest.mark.parametrize("mod", [gpu_softmax, reference], ids=["gpu_softmax", "reference"])
SOFTMAX_FNS = ("softmax", "log_softmax", "logsumexp")
OUT_FNS = ("softmax", "log_softmax")
BACKWARD_FNS = ("softmax_backward", "log_softmax_backward")
CE_FNS = ("cross_entropy", "cross_entropy_with_grad")


@pytest.fixture
def x(rng):
    return rng.standard_normal((4, 5))


@pytest.fixture
def target(rng):
    return rng.integers(0, 5, size=4)


def _ce(mod, name):
    return getattr(mod, name)


# ----------------------------------------------------------------------------------
# non-float inputs -> TypeError


@MODULES
@pytest.mark.parametrize("fn", SOFTMAX_FNS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex128, np.uint8])
def test_softmax_family_non_float_input(mod, fn, dtype, rng):
    x = (rng.standard_normal((3, 4)) * 3).astype(dtype)
    with pytest.raises(TypeError, match=r"x must be float16, float32 or float64, got dtype"):
        getattr(mod, fn)(x)


@MODULES
@pytest.mark.parametrize("fn", BACKWARD_FNS)
def test_backward_non_float_grad_y(mod, fn, x):
    y = reference.softmax(x)
    with pytest.raises(TypeError, match=r"grad_y must be float16, float32 or float64"):
        getattr(mod, fn)(np.ones(x.shape, dtype=np.int64), y)


@MODULES
@pytest.mark.parametrize("fn", BACKWARD_FNS)
def test_backward_non_float_y(mod, fn, x):
    with pytest.raises(TypeError, match=r"y must be float16, float32 or float64"):
        getattr(mod, fn)(x, np.ones(x.shape, dtype=np.int32))


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64])
def test_cross_entropy_non_float_logits(mod, fn, dtype, target, rng):
    logits = (rng.standard_normal((4, 5)) * 3).astype(dtype)
    with pytest.raises(TypeError, match=r"logits must be float16, float32 or float64"):
        getattr(mod, fn)(logits, target)


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
def test_cross_entropy_non_float_weight(mod, fn, x, target):
    with pytest.raises(TypeError, match=r"weight must be float16, float32 or float64"):
        getattr(mod, fn)(x, target, weight=np.ones(5, dtype=np.int64))


# ----------------------------------------------------------------------------------
# non-array inputs -> TypeError


NON_ARRAYS = [
    pytest.param(lambda a: a.tolist(), id="list"),
    pytest.param(lambda a: array.array("d", a.ravel()), id="array.array"),
    pytest.param(lambda a: float(a.ravel()[0]), id="float"),
    pytest.param(lambda a: memoryview(a), id="memoryview"),
]


@MODULES
@pytest.mark.parametrize("fn", SOFTMAX_FNS)
@pytest.mark.parametrize("convert", NON_ARRAYS)
def test_softmax_family_non_array_input(mod, fn, convert, x):
    with pytest.raises(TypeError, match=r"x must be a NumPy or CuPy array, got"):
        getattr(mod, fn)(convert(x))


@MODULES
@pytest.mark.parametrize("fn", BACKWARD_FNS)
@pytest.mark.parametrize("which", ["grad_y", "y"])
def test_backward_non_array_input(mod, fn, which, x):
    y = reference.softmax(x)
    args = {"grad_y": x, "y": y}
    args[which] = args[which].tolist()
    with pytest.raises(TypeError, match=rf"{which} must be a NumPy or CuPy array"):
        getattr(mod, fn)(args["grad_y"], args["y"])


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
@pytest.mark.parametrize("which", ["logits", "target", "weight"])
def test_cross_entropy_non_array_input(mod, fn, which, x, target):
    args = {"logits": x, "target": target, "weight": np.ones(5)}
    args[which] = args[which].tolist()
    with pytest.raises(TypeError, match=rf"{which} must be a NumPy or CuPy array"):
        getattr(mod, fn)(args["logits"], args["target"], weight=args["weight"])


@MODULES
@pytest.mark.parametrize("fn", OUT_FNS)
def test_non_array_out(mod, fn, x):
    with pytest.raises(TypeError, match=r"out must be a NumPy or CuPy array"):
        getattr(mod, fn)(x, out=x.tolist())


@pytest.mark.parametrize("fn", reference.__all__)
def test_reference_rejects_non_numpy_arrays(fn, x, target):
    # The reference computes on NumPy arrays only; anything else is a TypeError.
    f = getattr(reference, fn)
    if fn in CE_FNS:
        args = (x.tolist(), target)
    elif fn in BACKWARD_FNS:
        args = (x.tolist(), x.tolist())
    elif fn == "linear_cross_entropy_with_grad":
        args = (x.tolist(), x, target)
    else:
        args = (x.tolist(),)
    with pytest.raises(TypeError, match=r"must be a NumPy or CuPy array"):
        f(*args)


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
def test_numpy_scalar_target_is_not_an_array(mod, fn, rng):
    # A 0-d target must be a 0-d array: a NumPy scalar is not an array.
    with pytest.raises(TypeError, match=r"target must be a NumPy or CuPy array"):
        getattr(mod, fn)(rng.standard_normal(5), np.int64(2))


@pytest.mark.gpu
@pytest.mark.parametrize("fn", CE_FNS)
def test_mixing_cupy_and_numpy_arrays(cp, fn, x, target):
    with pytest.raises(TypeError, match=r"cannot mix CuPy and NumPy arrays"):
        getattr(gpu_softmax, fn)(cp.asarray(x), target)
    with pytest.raises(TypeError, match=r"cannot mix CuPy and NumPy arrays"):
        gpu_softmax.softmax(cp.asarray(x), out=np.empty_like(x))
    with pytest.raises(TypeError, match=r"cannot mix CuPy and NumPy arrays"):
        gpu_softmax.softmax_backward(cp.asarray(x), x)


@pytest.mark.gpu
def test_reference_rejects_cupy_arrays(cp, x):
    with pytest.raises(TypeError, match=r"gpu_softmax.reference computes on NumPy arrays"):
        reference.softmax(cp.asarray(x))


# ----------------------------------------------------------------------------------
# axis


BAD_AXES = [
    pytest.param(2, r"axis 2 is out of range for \w+ with 2 dimension", id="too-large"),
    pytest.param(-3, r"axis -3 is out of range for \w+ with 2 dimension", id="too-small"),
    pytest.param(1.0, r"axis must be an integer, got 1\.0", id="float"),
    pytest.param(None, r"axis must be an integer, got None", id="None"),
    pytest.param(True, r"axis must be an integer, got True", id="bool"),
    pytest.param((0, 1), r"axis must be an integer", id="tuple"),
]


@MODULES
@pytest.mark.parametrize("fn", SOFTMAX_FNS)
@pytest.mark.parametrize("axis,msg", BAD_AXES)
def test_softmax_family_bad_axis(mod, fn, axis, msg, x):
    with pytest.raises(ValueError, match=msg):
        getattr(mod, fn)(x, axis)


@MODULES
@pytest.mark.parametrize("fn", BACKWARD_FNS)
@pytest.mark.parametrize("axis,msg", BAD_AXES)
def test_backward_bad_axis(mod, fn, axis, msg, x):
    with pytest.raises(ValueError, match=msg):
        getattr(mod, fn)(x, reference.softmax(x), axis)


# ----------------------------------------------------------------------------------
# 0-d input


@MODULES
@pytest.mark.parametrize("fn", SOFTMAX_FNS)
def test_softmax_family_zero_dim_input(mod, fn):
    with pytest.raises(ValueError, match=r"x is 0-dimensional"):
        getattr(mod, fn)(np.array(1.5))


@MODULES
@pytest.mark.parametrize("fn", BACKWARD_FNS)
def test_backward_zero_dim_input(mod, fn):
    with pytest.raises(ValueError, match=r"y is 0-dimensional"):
        getattr(mod, fn)(np.array(1.0), np.array(0.5))


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
def test_cross_entropy_zero_dim_logits(mod, fn):
    with pytest.raises(ValueError, match=r"logits is 0-dimensional"):
        getattr(mod, fn)(np.array(1.5), np.array(0))


# ----------------------------------------------------------------------------------
# out=


@MODULES
@pytest.mark.parametrize("fn", OUT_FNS)
@pytest.mark.parametrize("out_dtype", [np.float32, np.float16, np.int64])
def test_out_wrong_dtype(mod, fn, out_dtype, x):
    out = np.full(x.shape, 3, dtype=out_dtype)
    before = out.copy()
    with pytest.raises(TypeError, match=r"out has dtype \w+, expected float64"):
        getattr(mod, fn)(x, out=out)
    np.testing.assert_array_equal(out, before)


@MODULES
@pytest.mark.parametrize("fn", OUT_FNS)
@pytest.mark.parametrize("out_shape", [(5, 4), (4, 5, 1), (20,), (4, 6)])
def test_out_wrong_shape(mod, fn, out_shape, x):
    out = np.full(out_shape, 3.0)
    with pytest.raises(ValueError, match=r"out has shape .*, expected \(4, 5\)"):
        getattr(mod, fn)(x, out=out)
    assert (out == 3.0).all()


# ----------------------------------------------------------------------------------
# backward: grad_y / y mismatches


@MODULES
@pytest.mark.parametrize("fn", BACKWARD_FNS)
def test_backward_dtype_mismatch(mod, fn, x):
    y = reference.softmax(x)
    with pytest.raises(TypeError, match=r"grad_y has dtype float32 but y has dtype float64; they must match"):
        getattr(mod, fn)(x.astype(np.float32), y)


@MODULES
@pytest.mark.parametrize("fn", BACKWARD_FNS)
@pytest.mark.parametrize("gshape", [(5, 4), (4, 1), (1, 4, 5), (20,)])
def test_backward_shape_mismatch(mod, fn, gshape, x, rng):
    y = reference.softmax(x)
    with pytest.raises(ValueError, match=r"grad_y has shape .* but y has shape \(4, 5\); they must match"):
        getattr(mod, fn)(rng.standard_normal(gshape), y)


# ----------------------------------------------------------------------------------
# cross entropy: target


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
@pytest.mark.parametrize("tshape", [(5,), (4, 1), (1, 4), (4, 5, 1), ()])
def test_hard_target_shape_mismatch(mod, fn, tshape, x):
    target = np.full(tshape, 1, dtype=np.int64)
    with pytest.raises(ValueError, match=r"class indices must have logits' shape without the class axis, \(4,\)"):
        getattr(mod, fn)(x, target)


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
def test_hard_target_shape_mismatch_non_last_axis(mod, fn, rng):
    logits = rng.standard_normal((2, 5, 3))
    with pytest.raises(ValueError, match=r"without the class axis, \(2, 3\)"):
        getattr(mod, fn)(logits, rng.integers(0, 5, size=(2, 5)), axis=1)


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
@pytest.mark.parametrize("tshape", [(4,), (5, 4), (4, 5, 1), (4, 6)])
def test_soft_target_shape_mismatch(mod, fn, tshape, x, rng):
    with pytest.raises(ValueError, match=r"class probabilities must have logits' shape, \(4, 5\)"):
        getattr(mod, fn)(x, rng.uniform(size=tshape))


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
def test_bool_target(mod, fn, x, rng):
    with pytest.raises(TypeError, match=r"target must hold integer class indices or float class probabilities, got dtype bool"):
        getattr(mod, fn)(x, rng.integers(0, 2, size=4).astype(bool))


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
@pytest.mark.parametrize("tdtype", [np.complex128, np.str_, object])
def test_other_non_numeric_target(mod, fn, tdtype, x):
    target = np.array([1, 2, 0, 3]).astype(tdtype)
    with pytest.raises(TypeError, match=r"target must hold integer class indices or float class probabilities"):
        getattr(mod, fn)(x, target)


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
@pytest.mark.parametrize("bad", [5, 6, 1000, -1, -99, -101])
def test_target_out_of_range(mod, fn, bad, x, target):
    t = target.copy()
    t[2] = bad
    t[0] = -100  # ignore_index is fine
    with pytest.raises(ValueError, match=rf"1 target value\(s\) \(e\.g\. {bad}\) outside \[0, 5\) and not equal to ignore_index=-100"):
        getattr(mod, fn)(x, t)


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
def test_target_out_of_range_counts_all_bad_values(mod, fn, x):
    with pytest.raises(ValueError, match=r"3 target value\(s\).*outside \[0, 5\).*validate=False"):
        getattr(mod, fn)(x, np.array([5, -1, 2, 9]))


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
def test_default_ignore_index_is_out_of_range_with_custom_ignore_index(mod, fn, x):
    # -100 is only special while it is the ignore_index.
    with pytest.raises(ValueError, match=r"not equal to ignore_index=-1"):
        getattr(mod, fn)(x, np.array([-100, 1, 2, 3]), ignore_index=-1)


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
def test_ignore_index_not_an_integer(mod, fn, x, target):
    with pytest.raises(TypeError, match=r"ignore_index must be an integer, got -100\.0"):
        getattr(mod, fn)(x, target, ignore_index=-100.0)


# ----------------------------------------------------------------------------------
# cross entropy: weight, label_smoothing, reduction, z_loss, logit_softcap, flags


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
@pytest.mark.parametrize("wshape", [(4,), (6,), (1,), (5, 1), (1, 5), ()])
def test_weight_wrong_shape(mod, fn, wshape, x, target):
    with pytest.raises(ValueError, match=r"weight has shape .*, expected \(5,\): one weight per class"):
        getattr(mod, fn)(x, target, weight=np.ones(wshape))


# ----------------------------------------------------------------------------------
# one keyword of the cross-entropy out of its range or of the wrong type


def _softcap_case(cap, shown):
    # one rule, one message (issue #15 item 11): 0, negatives, inf and NaN alike
    msg = rf"logit_softcap must be a positive finite number \(or None to turn it off\), got {shown}"
    return pytest.param("logit_softcap", cap, msg, ValueError, id=f"logit_softcap-{cap}")


BAD_CE_KEYWORDS = [
    *(pytest.param("axis", *bad.values, ValueError, id=f"axis-{bad.id}") for bad in BAD_AXES),
    *(pytest.param("label_smoothing", eps, r"label_smoothing must be in \[0\.0, 1\.0\]", ValueError,
                   id=f"label_smoothing-{eps}") for eps in [-0.1, 1.0000001, 2.0, float("nan"), float("inf")]),
    pytest.param("label_smoothing", "0.1", r"label_smoothing must be a real number", TypeError,
                 id="label_smoothing-str"),
    *(pytest.param("reduction", red, r"reduction must be one of \('none', 'mean', 'sum'\)", ValueError,
                   id=f"reduction-{red!r}") for red in ["avg", "Mean", "", "elementwise_mean", None, 0]),
    *(pytest.param("z_loss", z, r"z_loss must be in \[0\.0, inf\)", ValueError, id=f"z_loss-{z}")
      for z in [-1e-4, -1.0, float("inf"), float("nan")]),
    *(_softcap_case(cap, shown) for cap, shown in
      [(0.0, r"0\.0"), (0, "0"), (-1.0, r"-1\.0"), (-30, "-30"), (float("inf"), "inf"), (float("nan"), "nan")]),
    pytest.param("validate", 1, r"validate must be True or False, got 1", TypeError, id="validate-1"),
]


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
@pytest.mark.parametrize("keyword,value,msg,error", BAD_CE_KEYWORDS)
def test_cross_entropy_bad_keyword(mod, fn, keyword, value, error, msg, x, target):
    with pytest.raises(error, match=msg):
        getattr(mod, fn)(x, target, **{keyword: value})


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
def test_empty_class_axis(mod, fn):
    with pytest.raises(ValueError, match=r"logits has an empty class axis"):
        getattr(mod, fn)(np.ones((3, 0)), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"logits has an empty class axis"):
        getattr(mod, fn)(np.ones((0,)), np.array(0))


@MODULES
def test_inplace_not_bool(mod, x, target):
    with pytest.raises(TypeError, match=r"inplace must be True or False, got 'yes'"):
        mod.cross_entropy_with_grad(x, target, inplace="yes")


@MODULES
def test_inplace_read_only_logits(mod, x, target):
    x.flags.writeable = False
    with pytest.raises(ValueError, match=r"inplace=True needs writable logits"):
        mod.cross_entropy_with_grad(x, target, inplace=True)


# ----------------------------------------------------------------------------------
# grad_output


@MODULES
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_output_array_with_scalar_reduction(mod, reduction, x, target):
    with pytest.raises(ValueError, match=rf"grad_output must be a scalar for reduction='{reduction}', got shape \(4,\)"):
        mod.cross_entropy_with_grad(x, target, reduction=reduction, grad_output=np.ones(4))


@MODULES
def test_grad_output_array_wrong_shape(mod, x, target):
    with pytest.raises(ValueError, match=r"grad_output has shape \(5,\), expected the loss shape \(4,\)"):
        mod.cross_entropy_with_grad(x, target, reduction="none", grad_output=np.ones(5))


@MODULES
def test_grad_output_integer_array(mod, x, target):
    with pytest.raises(TypeError, match=r"grad_output must be a float scalar or array, got dtype int64"):
        mod.cross_entropy_with_grad(x, target, reduction="none", grad_output=np.ones(4, dtype=np.int64))


@MODULES
def test_grad_output_not_a_number(mod, x, target):
    with pytest.raises(TypeError, match=r"grad_output must be a NumPy or CuPy array"):
        mod.cross_entropy_with_grad(x, target, reduction="none", grad_output=[1.0] * 4)


# ----------------------------------------------------------------------------------
# errors come before any write


@MODULES
def test_inplace_with_bad_target_leaves_logits_unchanged(mod, x, target):
    before = x.copy()
    t = target.copy()
    t[1] = 7
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        mod.cross_entropy_with_grad(x, t, inplace=True)
    np.testing.assert_array_equal(x, before)


@MODULES
@pytest.mark.parametrize("bad", [
    {"reduction": "avg"},
    {"label_smoothing": 1.5},
    {"z_loss": -1.0},
    {"logit_softcap": 0.0},
    {"weight": np.ones(4)},
    {"grad_output": np.ones(3)},
    {"axis": 3},
])
def test_inplace_with_bad_option_leaves_logits_unchanged(mod, bad, x, target):
    before = x.copy()
    with pytest.raises((ValueError, TypeError)):
        mod.cross_entropy_with_grad(x, target, inplace=True, **bad)
    np.testing.assert_array_equal(x, before)


@MODULES
@pytest.mark.parametrize("fn", OUT_FNS)
def test_out_is_x_with_bad_axis_leaves_x_unchanged(mod, fn, x):
    before = x.copy()
    with pytest.raises(ValueError, match=r"out of range"):
        getattr(mod, fn)(x, 5, out=x)
    np.testing.assert_array_equal(x, before)


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
def test_bad_target_leaves_inputs_unchanged(mod, fn, x, target):
    before_x, before_t = x.copy(), target.copy()
    w = np.ones(5)
    t = target.copy()
    t[3] = -5
    with pytest.raises(ValueError):
        getattr(mod, fn)(x, t, weight=w)
    np.testing.assert_array_equal(x, before_x)
    np.testing.assert_array_equal(w, np.ones(5))


@MODULES
@pytest.mark.parametrize("fn", CE_FNS)
def test_uint64_target_that_wraps_to_ignore_index_is_out_of_range(mod, fn, x):
    t = np.array([1, 2**64 - 100, 2, 0], dtype=np.uint64)
    try:
        getattr(mod, fn)(x, t)
    except ValueError as exc:
        assert "outside [0, 5)" in str(exc)
    else:
        raise AssertionError("no ValueError for target 18446744073709551516")
