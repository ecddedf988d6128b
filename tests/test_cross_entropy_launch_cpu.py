"""The cross-entropy regime table and launch plans, checked on the CPU."""

from __future__ import annotations

import pytest

from gpu_softmax._cuda import cross_entropy as ce
from gpu_softmax._cuda.plan import H100, Device

STORAGES = tuple(ce.VARIANTS)
COLS = sorted({1, 2, 3, 7, 8, 9, 31, 32, 33, 127, 128, 129, 255, 256, 257, 1000, 1023, 1024, 1025, 2047, 4096,
               8191, 16384, 16385, 32000, 32768, 32769, 50257, 65536, 128256, 151936, 262144, 1 << 20, (1 << 21) + 3})
ROWS = (1, 3, 7, 64, 4096, 10**7)


def occupancy(name: str, threads: int) -> int:
    assert name in ce.ENTRY_POINTS, name
    return ce.occupancy_of(H100, name, threads)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("soft", [False, True])
def test_every_plan_covers_its_row(storage, soft):
    vec = ce.VEC[storage]
    for cols in COLS:
        for mis in range(vec):
            for rows in ROWS:
                p = ce.plan(storage, rows, cols, mis, soft, H100)
                assert p.kernel in ce.ENTRY_POINTS
                per_row = {"warp": 128, "split": p.k}.get(p.regime, 1)
                assert 1 <= p.grid <= 2**31 - 1 and p.grid <= rows * per_row
                need = cols + mis
                if p.regime == "warp":
                    assert p.block == ce.WARP_BLOCK_THREADS
                    assert p.width in (1, 2, 4, 8, 16, 32)
                    nv = int(p.kernel.split("_")[2][len("warp"):])
                    assert p.width * nv * vec >= need, (cols, mis, p)
                elif p.regime == "row":
                    nv = int(p.kernel.split("_")[2][len("block"):])
                    bound = dict(ce.VARIANTS[storage]["block"])[nv]
                    assert p.block % 32 == 0 and ce.BLOCK_MIN_THREADS <= p.block <= bound
                    assert p.block * nv * vec >= need, (cols, mis, p)
                elif p.regime == "split":
                    nv, bound = ce.VARIANTS[storage]["split"]
                    assert p.block % 32 == 0 and ce.BLOCK_MIN_THREADS <= p.block <= bound
                    assert p.chunk % vec == 0 and p.chunk + mis <= p.block * nv * vec
                    assert p.chunk * (p.k - 1) < cols <= p.chunk * p.k and p.grid == p.groups * p.k
                    assert p.grid <= occupancy(p.kernel, p.block) * H100.n_sm  # co-resident
                else:
                    assert p.regime == "stream" and p.block == ce.STREAM_THREADS
                if soft:
                    assert p.regime == "stream" and "_soft_" in p.kernel
                else:
                    assert "_soft_" not in p.kernel


def test_regime_table_is_ordered_and_short_rows_stay_in_registers():
    for storage in STORAGES:
        limits = [lim for lim, _ in ce.REGIMES[storage]]
        assert limits == sorted(limits)
        assert ce.plan(storage, 4096, 200, 0, False, H100).regime == "warp"
        assert ce.plan(storage, 4096, 4000, 0, False, H100).regime == "row"
        assert ce.plan(storage, 4096, 128256, 0, False, H100).regime == "split"
        assert ce.plan(storage, 4096, 1 << 24, 0, False, H100).regime == "stream"


def test_entry_points_cover_every_name_the_planner_makes():
    names = {ce.prep_name(s) for s in STORAGES}
    for s in STORAGES:
        for cols in COLS:
            for soft in (False, True):
                names.add(ce.plan(s, 64, cols, 0, soft, H100).kernel)
    assert names <= set(ce.ENTRY_POINTS)


def test_occupancy_model_matches_the_launch_bounds():
    """CE kernels get the softmax family's occupancy model: the bounds' promise holds."""
    for name in ce.ENTRY_POINTS:
        e = ce.ENTRIES[name]
        assert ce.occupancy_of(H100, name, e.max_threads) >= e.min_blocks, name


def test_split_needs_a_cooperative_device_and_the_policy_reaches_it():
    no_coop = Device("no cooperative launch", 132, cooperative=False)
    for storage in STORAGES:
        cols = 4 * ce.capacity(storage, "split")
        assert ce.plan(storage, 64, cols, 0, False, H100).regime == "split"
        assert ce.plan(storage, 64, cols, 0, False, no_coop).regime == "stream"
        p = ce.plan(storage, 3, 1025, 0, False, H100, ce.Policy(ce_split_max_chunk=512))
        assert p.regime == "split" and p.k == 3 and p.cooperative, p
        assert ce.plan(storage, 3, 1025, 0, False, H100).regime != "split"


def test_regime_names_are_one_vocabulary():
    """CE's one-block-per-row regime is called "row", as softmax's is."""
    for storage in STORAGES:
        assert [r for _, r in ce.REGIMES[storage]] == ["warp", "row", "split"]
