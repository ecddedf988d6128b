"""Per-device state of both op families: the device description the planners read,
kernel handles, the self-resetting split workspaces, and the one launch path
(cooperative or not) with its grid guard.

Why a guard: CuPy shrinks a 1-D cooperative grid that does not fit to what it
thinks fits, warns ("The grid size will be reduced") and launches anyway; the
driver does not refuse it. A split row's blocks wait for each other, so a grid
the GPU cannot hold at once would wait forever (until the bounded spin in
group_publish_wait traps). Every cooperative launch therefore compares its grid
with the driver's occupancy x SMs first (cached per kernel, block and shared
memory) and raises :class:`CooperativeGridError` instead.
"""

from __future__ import annotations

import numpy as np

from . import launch, loader
from .plan import Device

DYNAMIC_SMEM_DEFAULT = 48 * 1024  # above this a kernel opts in to its dynamic shared memory


class CooperativeGridError(RuntimeError):
    """A cooperative grid larger than the driver says can be resident at once."""


def driver_occupancy(fn, block: int, smem: int) -> int:
    """Resident blocks per SM of a loaded kernel, as the driver computes them."""
    from cupy_backends.cuda.api import driver

    return int(driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.ptr, block, smem))


def describe(dev_id: int) -> Device:
    """The planners' description of CUDA device `dev_id` (driver attributes)."""
    attrs = launch.cupy().cuda.Device(dev_id).attributes
    return Device(
        name=f"cuda:{dev_id}",
        n_sm=int(attrs["MultiProcessorCount"]),
        threads_per_sm=int(attrs.get("MaxThreadsPerMultiProcessor", 2048)),
        regs_per_sm=int(attrs.get("MaxRegistersPerMultiprocessor", 65536)),
        smem_per_sm=int(attrs.get("MaxSharedMemoryPerMultiprocessor", 233472)),
        smem_per_block=int(attrs.get("MaxSharedMemoryPerBlockOptin", 232448)),
        l2_bytes=int(attrs.get("L2CacheSize", 50 << 20)),
        max_blocks_per_sm=int(attrs.get("MaxBlocksPerMultiprocessor", 32)),
        cooperative=bool(attrs.get("CooperativeLaunch", 0)),
    )


class DeviceState:
    """Everything cached for one device; one instance per device id (:func:`current`)."""

    def __init__(self, dev_id: int, desc: Device):
        self.dev_id = dev_id
        self.desc = desc
        # kernel name -> [driver Function, RawKernel, dynamic smem opted in]
        self.kernels: dict[str, list] = {}
        self.coop_limit: dict[tuple[str, int, int], int] = {}  # (kernel, block, smem) -> largest grid
        self.workspaces: dict[tuple[int, object], tuple] = {}  # (stream, partials dtype) -> (part, cnt)

    def _handle(self, family: str, name: str) -> list:
        rk = loader.get_function(family, name)
        h = self.kernels[name] = [rk.kernel, rk, 0]
        return h

    def check_cooperative_grid(self, name: str, fn, grid: int, block: int, smem: int) -> None:
        key = (name, block, smem)
        limit = self.coop_limit.get(key)
        if limit is None:
            limit = self.coop_limit[key] = driver_occupancy(fn, block, smem) * self.desc.n_sm
        if grid > limit:
            raise CooperativeGridError(
                f"{name}: cooperative grid of {grid} blocks ({block} threads, {smem} B dynamic shared memory) "
                f"exceeds what {self.desc.name} holds at once ({limit} = driver occupancy x {self.desc.n_sm} SMs); "
                "the planner's occupancy model over-estimated this GPU. Not launched: CuPy would shrink the grid "
                "and the split row's blocks would wait for blocks that never run.")

    def launch(self, family: str, name: str, grid: int, block: int, args: tuple, smem: int = 0,
               cooperative: bool = False) -> None:
        """One launch on CuPy's current stream; cooperative ones after the grid guard."""
        h = self.kernels.get(name)
        if h is None:
            h = self._handle(family, name)
        if smem > DYNAMIC_SMEM_DEFAULT and h[2] < smem:
            h[1].max_dynamic_shared_size_bytes = smem
            h[2] = smem
        if cooperative:
            self.check_cooperative_grid(name, h[0], grid, block, smem)
        # (grid, block, args, shared_mem, stream=None: CuPy's current stream, cooperative)
        h[0]((grid, 1, 1), (block, 1, 1), args, smem, None, cooperative)

    def workspace(self, groups: int, k: int, part_dtype) -> tuple:
        """Partials ([group][2 rounds][k][2]) and per-group counters ([2][groups]),
        one set per (stream, dtype), grown when needed. The kernels leave the counters
        at zero when they finish (group_release), as the tagged partials of the CE
        fast path (tagged_release), so both are zeroed only when allocated; launches on
        one stream are ordered, so reuse across calls is safe."""
        cp = launch.cupy()
        key = (cp.cuda.get_current_stream().ptr, part_dtype)
        ws = self.workspaces.get(key)
        if ws is None or ws[0].size < groups * 4 * k or ws[1].size < 2 * groups:
            n_part = max(groups * 4 * k, 0 if ws is None else ws[0].size)
            n_cnt = max(2 * groups, 0 if ws is None else ws[1].size)
            ws = (cp.zeros(n_part, dtype=part_dtype), cp.zeros(n_cnt, dtype=np.uint64))
            self.workspaces[key] = ws
        return ws


_states: dict[int, DeviceState] = {}


def current() -> DeviceState:
    """The state of CuPy's current device (created on first use)."""
    dev_id = launch.device_id()
    st = _states.get(dev_id)
    if st is None:
        st = _states[dev_id] = DeviceState(dev_id, describe(dev_id))
    return st
