"""CPU tests of the softmax launch logic: regime table, launch shapes, entry points.

No GPU needed: plan() takes the SM count and an occupancy function as arguments,
so these tests feed it the shapes of real devices.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from gpu_softmax._cuda import loader
from gpu_softmax._cuda import softmax as sm

MAX_GRID = 2**31 - 1
DIRECTIONS = ("fwd", "bwd", "lse")

# Register counts are what NVRTC 12.9 reports for sm_90 (rounded up); the
# occupancy model is the hardware's: 64k registers and 2048 threads per SM.
_REGS = {"warp": 80, "block": 128, "stream": 64}


def fake_occupancy(name: str, threads: int) -> int:
    regime = re.match(r"gs_\w+?_(warp|block|stream)\d", name).group(1)
    regs = _REGS[regime]
    if "lse_block" in name:
        regs = 32
    per_warp = -(-regs * 32 // 256) * 256
    return max(0, min(65536 // (per_warp * (threads // 32)), 2048 // threads, 32))


DEVICES = {"H100": 132, "A100": 108, "small": 20}


def check_plan(p: sm.Plan, storage: str, direction: str, rows: int, cols: int, mis: int, n_sm: int) -> None:
    vec = sm.VEC[storage]
    assert p.kernel in sm.ENTRY_POINTS, p
    assert 1 <= p.grid <= MAX_GRID, p
    assert p.block % 32 == 0 and 32 <= p.block <= 1024, p
    nv = int(re.search(r"(\d+)_\w+$", p.kernel).group(1))
    if p.regime == "warp":
        assert p.block == sm.WARP_BLOCK_THREADS
        assert p.width in (1, 2, 4, 8, 16, 32)
        if direction != "lse":
            # the whole row, shifted by its misalignment, is held by `width` lanes
            assert p.width * nv * vec >= cols + mis, p
        return
    assert p.k >= 1 and p.chunk >= 1
    if p.k == 1:
        assert p.chunk == cols
    else:
        assert p.chunk % vec == 0, p
        assert (p.k - 1) * p.chunk < cols <= p.k * p.chunk, p  # every chunk non-empty
        assert p.groups >= 1 and p.grid == p.groups * p.k, p
        assert p.groups <= rows
        # co-residency: every block of the grid fits on the device at once
        assert p.grid <= fake_occupancy(p.kernel, p.block) * n_sm, p
    if "_block" in p.kernel and not p.kernel.startswith("gs_lse"):
        assert p.block <= sm.BLOCK_MAX_THREADS
        assert p.block * nv * vec >= p.chunk + mis, p  # the chunk fits the registers
    else:
        assert p.block <= max(sm.STREAM_THREADS, sm.LSE_THREADS)
        assert p.chunk < 2**30 + 2**20


def _lengths():
    s = set(range(1, 4200))
    for base in (8192, 16384, 32768, 65536, 131072, 262144, 524288, 1 << 20, 1 << 21):
        s.update(range(base - 20, base + 21))
    rng = np.random.default_rng(1234)
    s.update(int(v) for v in rng.integers(1, 1 << 21, 3000))
    s.update([32000, 50257, 1 << 21])
    return sorted(s)


@pytest.mark.parametrize("storage", sm.STORAGES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_every_length_gets_a_valid_plan(storage, direction):
    vec = sm.VEC[storage]
    for cols in _lengths():
        for rows in (1, 3, 64, 4097):
            for mis in {0, vec - 1, (cols * 7) % vec}:
                for n_sm in (132, 20):
                    p = sm.plan(storage, direction, rows, cols, mis, n_sm, fake_occupancy)
                    check_plan(p, storage, direction, rows, cols, mis, n_sm)


@pytest.mark.parametrize("storage", sm.STORAGES)
def test_huge_shapes_use_64_bit_safe_grids(storage):
    for rows, cols in [(2**33, 1), (2**31 + 7, 3), (2**22, 1024), (2**20, 4096), (2**17, 40000), (3, 2**31 + 5)]:
        for direction in DIRECTIONS:
            p = sm.plan(storage, direction, rows, cols, 0, 132, fake_occupancy)
            check_plan(p, storage, direction, rows, cols, 0, 132)


def test_regime_table_is_small_and_ordered():
    for key, table in sm.REGIMES.items():
        limits = [lim for lim, _ in table]
        assert limits == sorted(limits) and limits[-1] == float("inf")
        assert len(table) <= 4
    assert sm.REGIMES[("float32", "fwd")][0] == (1024, "warp")
    assert sm.REGIMES[("float16", "fwd")][0] == (1024, "warp")


def test_long_rows_are_held_on_chip_on_an_h100():
    """The performance shapes never fall back to the two-read stream regime."""
    for storage in ("float32", "float16", "bfloat16"):
        for rows, cols in [(32768, 4096), (4096, 32768), (1024, 131072), (256, 262144), (8, 262144), (1, 1 << 20)]:
            p = sm.plan(storage, "fwd", rows, cols, 0, 132, fake_occupancy)
            assert p.regime in ("block", "split"), (storage, rows, cols, p)
            if rows <= 16:
                assert p.grid >= 100, p  # few rows still fill the GPU


def test_force_stream_hook(monkeypatch):
    monkeypatch.setattr(sm, "FORCE_REGIME", "stream")
    p = sm.plan("float32", "fwd", 1, 200003, 0, 132, fake_occupancy)
    assert p.regime == "stream" and p.k > 1
    p = sm.plan("float32", "fwd", 5, 7, 0, 132, fake_occupancy)
    assert p.regime == "stream" and p.k == 1


def test_worst_misalignment():
    assert sm.worst_misalignment(0, 4096, 4) == 0
    assert sm.worst_misalignment(4, 4096, 4) == 1
    assert sm.worst_misalignment(0, 4095, 4) == 3
    assert sm.worst_misalignment(2, 8, 2) == 1
    assert sm.worst_misalignment(8, 6, 8) == 1


def test_entry_points_match_the_source():
    src = loader.module_source(sm.FAMILY)
    assert set(loader.extern_c_kernels(src)) == set(sm.ENTRY_POINTS)
    assert len(sm.ENTRY_POINTS) == len(set(sm.ENTRY_POINTS))
    for storage in sm.STORAGES:
        assert any(n.endswith("_" + sm.SUFFIX[storage]) for n in sm.ENTRY_POINTS)


# The NVRTC compile of this family (sm_80 and sm_90, zero spills, every entry point compiled) is
# tests/test_compile.py's, through the same compile_check the CLI uses.
