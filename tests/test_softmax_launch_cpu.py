"""CPU tests of the softmax launch logic: planner, occupancy model, bytes in flight,
generated entry points, launch flags.

No GPU needed: plan() takes a Device description, so these tests feed it the
shapes of real GPUs (H100, H200, A100) and of a small one.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from gpu_softmax._cuda import loader
from gpu_softmax._cuda import plan as P
from gpu_softmax._cuda import softmax as sm

MAX_GRID = 2**31 - 1
DIRECTIONS = ("fwd", "bwd", "lse")
SMALL = sm.Device("small", 20, smem_per_sm=101376, smem_per_block=101376 - 1024, l2_bytes=4 << 20)
DEVICES = (sm.H100, P.A100, SMALL)


def _nv(p: sm.Plan) -> int:
    return int(re.search(r"(\d+)_\w+$", p.kernel).group(1))


def check_plan(p: sm.Plan, storage: str, direction: str, rows: int, cols: int, mis: int, dev: sm.Device) -> None:
    vec = sm.VEC[storage]
    arrays = 2 if direction == "bwd" else 1
    assert p.kernel in sm.ENTRY_POINTS, p
    assert 1 <= p.grid <= MAX_GRID, p
    assert p.block % 32 == 0 and 32 <= p.block <= 1024, p
    template = re.match(r"gs_\w+?_(warp|row|split|stream|block)\d", p.kernel).group(1)
    maxt, _ = sm.BOUNDS[template]
    assert p.block <= maxt, p  # never above the launch bound
    occ = sm.blocks_per_sm(dev, template, p.block, p.smem)
    assert occ >= 1, p
    assert 1 <= p.resident <= occ, p
    assert p.inflight_bytes_per_sm > 0, p
    assert p.smem + P.STATIC_SMEM_MAX <= dev.smem_per_block, p
    assert p.cooperative == (p.k > 1)
    nv = _nv(p)
    if p.regime == "warp":
        assert p.block == sm.WARP_BLOCK_THREADS and p.width in (1, 2, 4, 8, 16, 32), p
        if direction != "lse":
            assert p.width * nv * vec >= cols + mis, p  # the whole row, shifted, is held
        return
    assert p.k >= 1 and p.chunk >= 1
    if p.k == 1:
        assert p.chunk == cols and p.groups == 0, p
    else:
        assert rows < dev.n_sm, p  # rows split only when they are fewer than SMs
        assert p.chunk % vec == 0, p
        assert (p.k - 1) * p.chunk < cols <= p.k * p.chunk, p  # every chunk non-empty
        assert p.groups >= 1 and p.grid == p.groups * p.k and p.groups <= rows, p
        assert p.grid <= occ * dev.n_sm, p  # co-resident by the occupancy model
    if p.regime == "row":
        assert direction != "lse" and p.k == 1
        assert p.block * (nv + p.ss) * vec >= cols + mis, p  # registers + staged slots hold the row
        assert p.smem == p.ss * p.block * 16 * arrays, p
        assert p.ss == 0 or p.block * (nv + p.ss - 1) * vec < cols + mis, p  # no wasted staged column
        assert cols < 2**31
    elif p.regime == "split" and template == "split":
        assert p.block * nv * vec >= p.chunk + mis, p  # the chunk fits the registers
    else:
        assert p.chunk < 2**30 + 2**20


def _lengths():
    s = set(range(1, 2200, 7)) | set(range(1000, 1100))
    for base in (4096, 8192, 16384, 32768, 65536, 73728, 131072, 147456, 262144, 1 << 20):
        s.update(range(base - 6, base + 7))
    rng = np.random.default_rng(1234)
    s.update(int(v) for v in rng.integers(1, 1 << 21, 400))
    s.update([32000, 50257, 1 << 21])
    return sorted(s)


@pytest.mark.parametrize("storage", sm.STORAGES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_every_length_gets_a_valid_plan(storage, direction):
    vec = sm.VEC[storage]
    for cols in _lengths():
        for mis in {0, vec - 1, (cols * 7) % vec}:
            for dev in DEVICES:
                for rows in (1, 3, dev.n_sm - 1, dev.n_sm, dev.n_sm + 1, 4097):
                    p = sm.plan(storage, direction, rows, cols, mis, dev)
                    check_plan(p, storage, direction, rows, cols, mis, dev)


@pytest.mark.parametrize("storage", sm.STORAGES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_rows_at_least_sms_are_never_split(storage, direction):
    """rows >= SMs: one row per block, no workspace, no cooperative launch."""
    for dev in DEVICES:
        for cols in _lengths()[::5]:
            for rows in (dev.n_sm, dev.n_sm + 1, 4096):
                p = sm.plan(storage, direction, rows, cols, 0, dev)
                assert p.k == 1 and not p.cooperative and p.groups == 0, (rows, cols, p)


@pytest.mark.parametrize("storage", ("float32", "float16", "bfloat16"))
@pytest.mark.parametrize("direction", ("fwd", "bwd"))
def test_row_count_edge_at_the_sm_count(storage, direction):
    dev = sm.H100
    cols = sm.SPLIT_MIN_COLS
    p = sm.plan(storage, direction, dev.n_sm - 1, cols, 0, dev)
    assert p.regime == "split" and p.k > 1 and p.cooperative, p
    p = sm.plan(storage, direction, dev.n_sm, cols, 0, dev)
    assert p.regime == "row" and p.k == 1, p
    # shorter rows are not split just to fill SMs
    p = sm.plan(storage, direction, dev.n_sm - 1, cols - 1, 0, dev)
    assert p.k == 1, p


@pytest.mark.parametrize("storage", sm.STORAGES)
@pytest.mark.parametrize("direction", ("fwd", "bwd"))
@pytest.mark.parametrize("dev", (sm.H100, P.A100), ids=lambda d: d.name)
def test_capacity_edges(storage, direction, dev):
    """Each regime's last length, one more, and the same at the worst misalignment."""
    vec = sm.VEC[storage]
    rows = 4096
    wcap = sm._warp_capacity(storage, direction)
    rcap = sm.row_capacity(storage, direction, dev)
    for mis in (0, vec - 1):
        assert sm.plan(storage, direction, rows, wcap - mis, mis, dev).regime == "warp"
        assert sm.plan(storage, direction, rows, wcap - mis + 1, mis, dev).regime == "row"
        p = sm.plan(storage, direction, rows, rcap - mis, mis, dev)
        assert p.regime == "row" and p.ss > 0 and p.block == sm.ROW_MAX_THREADS, p
        check_plan(p, storage, direction, rows, rcap - mis, mis, dev)
        p = sm.plan(storage, direction, rows, rcap - mis + 1, mis, dev)
        assert p.regime == "stream" and p.k == 1, p


def test_row_capacity_holds_the_goal_rows_on_chip():
    # One SM holds a 128 KiB float32 row (32768) and a 256 KiB float16 row (131072).
    for dev in (sm.H100, sm.H200):
        assert sm.row_capacity("float32", "fwd", dev) >= 32768 + 3
        assert sm.row_capacity("float16", "fwd", dev) >= 131072 + 7
        assert sm.row_capacity("bfloat16", "fwd", dev) >= 131072 + 7
        assert sm.row_capacity("float32", "bwd", dev) >= 32768 + 3
        assert sm.row_capacity("float32", "fwd", dev) < 131072  # 512 KiB rows stream


def test_occupancy_model_matches_the_cuda_calculator():
    # Hand-checked with the CUDA occupancy rules: 64 registers per thread (the
    # launch-bound cap), 64 Ki registers, 2048 threads, 1 KiB reserved per block.
    h = sm.H100
    assert sm.blocks_per_sm(h, "row", 1024) == 1
    assert sm.blocks_per_sm(h, "row", 512) == 2
    assert sm.blocks_per_sm(h, "row", 256) == 4
    assert sm.blocks_per_sm(h, "row", 128) == 8
    assert sm.blocks_per_sm(h, "row", 512, 98304) == 2
    assert sm.blocks_per_sm(h, "row", 512, 114000) == 1
    assert sm.blocks_per_sm(h, "warp", 128) == 6  # (128, 6): at most 85 registers
    assert sm.blocks_per_sm(h, "stream", 512) == 2
    assert sm.blocks_per_sm(P.A100, "row", 512, 98304) == 1
    assert sm.blocks_per_sm(h, "row", 1024, h.smem_per_block) == 0
    for template, (maxt, minb) in sm.BOUNDS.items():
        # the launch bounds' promise: minb blocks of maxt threads fit
        assert sm.blocks_per_sm(h, template, maxt) >= minb
        assert sm.blocks_per_sm(P.A100, template, maxt) >= minb


# The issue's goal shapes: forward (softmax and log_softmax share a plan) for
# float32/16/bfloat16, backward and logsumexp at the two long-row shapes.
GOAL_FWD = [(4096, 32768), (1024, 131072), (16384, 131072), (32768, 4096), (8192, 8192), (65536, 1024),
            (262144, 128), (4096, 262144)]
GOAL_BWD = [(4096, 32768), (1024, 131072)]


@pytest.mark.parametrize("dev", (sm.H100, sm.H200), ids=lambda d: d.name)
@pytest.mark.parametrize("storage", ("float32", "float16", "bfloat16"))
def test_littles_law_bytes_in_flight_on_goal_shapes(dev, storage):
    """>= 32 KiB in flight per SM in steady state (Little's law: ~24 KiB needed)."""
    cases = [("fwd", r, c) for r, c in GOAL_FWD] + [(d, r, c) for d in ("bwd", "lse") for r, c in GOAL_BWD]
    for direction, rows, cols in cases:
        p = sm.plan(storage, direction, rows, cols, 0, dev)
        assert p.inflight_bytes_per_sm >= P.INFLIGHT_TARGET, (direction, rows, cols, p)
        assert p.k == 1, p  # rows >= SMs on every goal shape


def test_goal_shapes_are_held_on_chip_where_one_sm_can():
    for dev in (sm.H100, sm.H200):
        for storage in ("float32", "float16", "bfloat16"):
            for rows, cols in [(4096, 32768), (32768, 4096), (8192, 8192)]:
                assert sm.plan(storage, "fwd", rows, cols, 0, dev).regime == "row"
            assert sm.plan(storage, "bwd", 4096, 32768, 0, dev).regime == "row"
        for storage in ("float16", "bfloat16"):
            assert sm.plan(storage, "fwd", 1024, 131072, 0, dev).regime == "row"
        assert sm.plan("float32", "fwd", 1024, 131072, 0, dev).regime == "stream"


def test_stream_limits_rows_in_flight_when_they_overflow_l2():
    p = sm.plan("float32", "fwd", 1024, 131072, 0, sm.H100)
    assert p.regime == "stream" and p.smem > 0 and p.resident == 1, p
    assert sm.blocks_per_sm(sm.H100, "stream", p.block, p.smem) == 1
    # the padding holds whatever the kernel's real static shared memory is
    assert 2 * (p.smem + P.SMEM_RESERVED_PER_BLOCK) > sm.H100.smem_per_sm
    assert p.inflight_bytes_per_sm >= P.INFLIGHT_TARGET
    big_l2 = sm.Device("big L2", 132, l2_bytes=1 << 30)
    p = sm.plan("float32", "fwd", 1024, 131072, 0, big_l2)
    tiles = 2 * p.block * 4 * 16  # TilePipe's two tiles of 4 slots per thread: no padding past them
    assert p.smem == tiles and p.resident == 2, p


def test_forward_stream_launches_hold_the_tile_pipe():
    """The forward stream kernel pipes its tiles through two shared-memory buffers only
    when the launch's dynamic shared memory holds both (it checks): every forward plan
    but float64's gives it that much, and the backward and float64 ones none."""
    for dev in (sm.H100, sm.H200, sm.Device("big L2", 132, l2_bytes=1 << 30)):
        for storage in ("float32", "float16", "bfloat16", "float64"):
            for direction in ("fwd", "bwd"):
                for rows, cols in [(1024, 1 << 19), (16384, 1 << 19), (64, 1 << 22)]:
                    p = sm.plan(storage, direction, rows, cols, 0, dev)
                    assert p.regime == "stream", p
                    nv = int(p.kernel.split("stream")[1].split("_")[0])
                    if direction == "fwd" and storage != "float64":
                        assert p.smem >= 2 * p.block * nv * 16, p
                    elif p.resident == sm.blocks_per_sm(dev, "stream", p.block):
                        assert p.smem == 0, p


def test_few_rows_fill_the_gpu():
    for storage in ("float32", "float16", "bfloat16"):
        for rows, cols in [(8, 262144), (1, 1 << 20), (16, 131072), (2, 1 << 21)]:
            p = sm.plan(storage, "fwd", rows, cols, 0, sm.H100)
            assert p.k > 1 and p.grid >= 100, p


def test_plans_are_cached_and_the_policy_is_part_of_the_key():
    a = sm.plan("float32", "fwd", 4096, 32768, 0, sm.H100)
    assert sm.plan("float32", "fwd", 4096, 32768, 0, sm.H100) is a
    b = sm.plan("float32", "fwd", 4096, 32768, 0, sm.H100, sm.Policy(force_regime="stream"))
    assert b.regime == "stream" and a.regime == "row"
    assert sm.plan("float32", "fwd", 4096, 32768, 0, sm.H100, sm.DEFAULT_POLICY) == a
    with pytest.raises(Exception):
        sm.DEFAULT_POLICY.force_regime = "stream"  # frozen: a hook cannot leak into other calls


def test_force_hooks():
    stream = sm.Policy(force_regime="stream")
    p = sm.plan("float32", "fwd", 1, 200003, 0, sm.H100, stream)
    assert p.regime == "stream" and p.k > 1
    p = sm.plan("float32", "fwd", 5, 7, 0, sm.H100, stream)
    assert p.regime == "stream" and p.k == 1
    p = sm.plan("float16", "bwd", 5, 3000, 3, sm.H100, sm.Policy(force_regime="stage"))
    assert p.regime == "row" and p.ss >= 1 and _nv(p) == min(sm.VARIANTS[("float16", "bwd")]["row"])
    check_plan(p, "float16", "bwd", 5, 3000, 3, sm.H100)
    p = sm.plan("float32", "fwd", 4096, 32768, 0, sm.H100, sm.Policy(row_grid_waves=1))
    assert p.regime == "row" and p.grid == sm.blocks_per_sm(sm.H100, "row", p.block, p.smem) * sm.H100.n_sm
    p = sm.plan("float32", "fwd", 3, 5000, 0, sm.H100, sm.Policy(split_min_cols=1))
    assert p.regime == "split" and p.k > 1, p


@pytest.mark.parametrize("storage", sm.STORAGES)
def test_huge_shapes_use_64_bit_safe_grids(storage):
    for rows, cols in [(2**33, 1), (2**31 + 7, 3), (2**22, 1024), (2**20, 4096), (2**17, 40000), (3, 2**31 + 5)]:
        for direction in DIRECTIONS:
            p = sm.plan(storage, direction, rows, cols, 0, sm.H100)
            check_plan(p, storage, direction, rows, cols, 0, sm.H100)


def test_worst_misalignment():
    assert sm.worst_misalignment(0, 4096, 4) == 0
    assert sm.worst_misalignment(4, 4096, 4) == 1
    assert sm.worst_misalignment(0, 4095, 4) == 3
    assert sm.worst_misalignment(2, 8, 2) == 1
    assert sm.worst_misalignment(8, 6, 8) == 1


def test_entry_points_are_generated_from_the_table():
    src = loader.module_source(sm.FAMILY)
    assert set(loader.extern_c_kernels(src)) == set(sm.ENTRY_POINTS)
    body = (loader.cuda_src_dir() / "softmax.cu").read_text()
    assert not re.search(r'extern\s+"C"\s+__global__', body), "entry points belong to the generated table"
    for storage, direction, template, nv in sm._variants():
        name = sm.kernel_name(direction, template, nv, storage)
        line = re.search(rf'^extern "C" __global__ void __launch_bounds__\((\d+), (\d+)\) {name}\(', src, re.MULTILINE)
        assert line, name
        assert (int(line.group(1)), int(line.group(2))) == sm.BOUNDS[template]
        call = re.search(rf"{name}\(.*?\) {{\n.*?gs::(\w+)<gs::(\w+), (\d+)>\(", src, re.DOTALL)
        assert call.groups() == (f"{direction}_{template}", sm.SUFFIX[storage].upper(), str(nv)), name
    for storage in sm.STORAGES:
        assert any(n.endswith("_" + sm.SUFFIX[storage]) for n in sm.ENTRY_POINTS)


class _FakeKernel:
    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail
        self.max_dynamic_shared_size_bytes = 0
        self.kernel = self
        self.ptr = 1234

    def __call__(self, grid, block, args, shared_mem=0, stream=None, enable_cooperative_groups=False):
        if self.fail:
            raise self.fail
        self.calls.append((grid, block, shared_mem, enable_cooperative_groups))


def _state(monkeypatch, fake, driver_blocks_per_sm=2):
    from gpu_softmax._cuda import device

    monkeypatch.setattr(sm.device.loader, "get_function", lambda fam, name: fake)
    monkeypatch.setattr(device, "driver_occupancy", lambda fn, block, smem: driver_blocks_per_sm)
    return device.DeviceState(0, sm.H100)


def test_launch_flags_and_no_cooperative_fallback(monkeypatch):
    fake = _FakeKernel()
    ds = _state(monkeypatch, fake)
    split = sm.plan("float32", "fwd", 8, 262144, 0, sm.H100)
    row = sm.plan("float32", "fwd", 4096, 65536, 0, sm.H100)  # staged: 32768 is held in registers
    sm._launch(ds, split, ())
    sm._launch(ds, row, ())
    assert fake.calls[0][3] is True and fake.calls[0][2] == 0
    assert fake.calls[1][3] is False and fake.calls[1][2] == row.smem > 48 * 1024
    assert fake.max_dynamic_shared_size_bytes == row.smem  # opted in above 48 KiB
    # A CuPy that cannot launch cooperatively fails loudly instead of launching a
    # grid whose blocks might wait for blocks that never run.
    ds = _state(monkeypatch, _FakeKernel(TypeError("no keyword")))
    with pytest.raises(TypeError):
        sm._launch(ds, split, ())


def test_cooperative_grid_larger_than_the_driver_allows_is_not_launched(monkeypatch):
    """The planner's model says the split grid fits; a driver that holds fewer
    blocks per SM makes the launch raise before anything runs (CuPy would shrink
    the grid and the row's blocks would wait forever)."""
    from gpu_softmax._cuda import device

    split = sm.plan("float32", "fwd", 8, 262144, 0, sm.H100)
    assert split.cooperative and split.grid > sm.H100.n_sm
    fake = _FakeKernel()
    ds = _state(monkeypatch, fake, driver_blocks_per_sm=1)
    with pytest.raises(device.CooperativeGridError, match="exceeds what"):
        sm._launch(ds, split, ())
    assert fake.calls == []
    ds = _state(monkeypatch, fake, driver_blocks_per_sm=sm.blocks_per_sm(sm.H100, "split", split.block))
    sm._launch(ds, split, ())
    assert fake.calls and fake.calls[0][3] is True


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"NVRTC not available: {exc}")


@pytest.mark.parametrize("arch", [80, 90])
def test_compiles_without_spills_within_the_modelled_registers(arch):
    """0 spills, and no kernel above the register count the occupancy model assumes."""
    _nvrtc()
    from gpu_softmax._cuda import compile_check as cc

    rep = cc.check_family(sm.FAMILY, arch)
    assert set(rep.entries) == set(sm.ENTRY_POINTS)
    assert cc.problems(rep) == []
    for e in rep.entries.values():
        template = re.match(r"gs_\w+?_(warp|row|split|stream|block)\d", e.name).group(1)
        maxt, minb = sm.BOUNDS[template]
        assert e.registers <= 65536 // (maxt * minb), (e.name, e.registers)
        assert sm.blocks_per_sm(sm.H100, template, maxt) >= minb
