"""The elementwise comparison every reference test makes, written once (imported by the test modules beside it)."""

from __future__ import annotations

import numpy as np


def assert_close(actual, expected, rtol, atol, what=""):
    """|a - e| <= atol + rtol |e| on the finite entries; NaN exactly where expected has NaN; infinities equal.

    A plain allclose would let NaN match NaN anywhere and an infinity match a huge finite value, both of which
    hide the special-row bugs these tests are for.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{what}: NaN positions differ")
    inf = np.isinf(e)
    np.testing.assert_array_equal(a[inf], e[inf], err_msg=f"{what}: infinities differ")
    fin = ~np.isnan(e) & ~inf
    np.testing.assert_allclose(a[fin], e[fin], rtol=rtol, atol=atol, err_msg=what)
