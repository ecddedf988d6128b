"""What every family's planner shares: the device description, the occupancy model,
the one :class:`Plan` type and the :class:`Policy` (test hooks as one frozen value).

Planners are pure functions of (shape, storage, :class:`Device`, :class:`Policy`):
the CPU tests feed them descriptions of real GPUs. Occupancy comes from a model of
the launch bounds (:func:`occupancy`), not from a driver query: the bounds cap
registers and the compile check proves there are no spills, so the model is a
lower bound of what the GPU runs (the cooperative-launch guard in device.py still
compares every cooperative grid with the driver's own count before launching).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .abi import cdiv, round_up
from .kernels import ENTRIES


def _hash_fields_once(self) -> int:
    """A frozen dataclass's hash, computed from its fields on first use and kept."""
    h = self.__dict__.get("_hash")
    if h is None:
        h = hash(tuple(getattr(self, f) for f in self.__dataclass_fields__))
        object.__setattr__(self, "_hash", h)
    return h


@dataclass(frozen=True)
class Device:
    """What the planners need to know about a GPU (per SM unless said)."""

    name: str
    n_sm: int
    threads_per_sm: int = 2048
    regs_per_sm: int = 65536
    smem_per_sm: int = 233472  # bytes blocks can use (sm_90: 228 KiB)
    smem_per_block: int = 232448  # opt-in maximum of one block (sm_90: 227 KiB)
    l2_bytes: int = 50 << 20
    max_blocks_per_sm: int = 32
    cooperative: bool = True  # whether the device launches cooperative grids

    __hash__ = _hash_fields_once  # part of every plan-cache key


H100 = Device("H100 SXM", 132, l2_bytes=50 << 20)
H200 = Device("H200", 132, l2_bytes=60 << 20)
A100 = Device("A100", 108, smem_per_sm=167936, smem_per_block=166912, l2_bytes=40 << 20)

SMEM_RESERVED_PER_BLOCK = 1024  # the driver's share of each block's shared memory (sm_80+)
# Our kernels' __shared__ arrays, rounded up (the largest is 1.6 KiB); the compile
# check reads ptxas's static shared memory of every entry point and holds it under this.
STATIC_SMEM_MAX = 2048
SLOT_BYTES = 16
MAX_GRID = 2**31 - 1

# Little's law: ~4.3 TB/s against ~0.6-0.8 us of DRAM latency is ~24 KB per SM;
# plans aim for 32 KB and prefer 64 KB when they can have it cheaply.
INFLIGHT_TARGET = 32 << 10
INFLIGHT_GOOD = 64 << 10


def occupancy(dev: Device, bounds: tuple[int, ...], threads: int, smem: int = 0) -> int:
    """Resident blocks per SM of a kernel with `bounds` (its __launch_bounds__) at
    `threads` threads and `smem` dynamic shared bytes: the CUDA occupancy
    calculation with the register count at its launch-bound cap (ptxas uses at most
    that; fewer only raises it)."""
    maxt = bounds[0]
    minb = bounds[1] if len(bounds) > 1 else 1
    # Registers are allocated per warp in units of 256 (8 per thread): round the
    # cap up, which can only under-count; the bounds themselves promise `minb`
    # blocks of `maxt` threads, hence of fewer threads too.
    regs = round_up(min(255, dev.regs_per_sm // (maxt * minb)), 8)
    warps = cdiv(threads, 32)
    by_regs = dev.regs_per_sm // (regs * 32 * warps)
    if threads <= maxt:
        by_regs = max(by_regs, minb)
    by_threads = dev.threads_per_sm // (warps * 32)
    by_smem = dev.smem_per_sm // (smem + STATIC_SMEM_MAX + SMEM_RESERVED_PER_BLOCK)
    return max(0, min(by_regs, by_threads, by_smem, dev.max_blocks_per_sm))


@dataclass(frozen=True)
class Plan:
    """One launch of one family's kernel. Regime names (distinct across families):
    softmax "warp" | "row" | "split" | "stream"; cross entropy "ce_warp" |
    "ce_block" | "ce_split" | "ce_stream"."""

    regime: str
    kernel: str
    grid: int
    block: int
    width: int = 0  # warp regimes: lanes per row
    k: int = 1  # blocks per row
    chunk: int = 0  # elements per block and row (multiple of VEC when k > 1)
    groups: int = 0  # row groups (grid // k)
    ss: int = 0  # softmax row regime: 16-byte slots per thread staged in shared memory
    smem: int = 0  # dynamic shared memory per block, bytes
    resident: int = 0  # blocks per SM in steady state (occupancy model, capped by the grid)
    inflight_bytes_per_sm: int = 0  # resident blocks x bytes each loads before its first dependent reduction

    @property
    def cooperative(self) -> bool:
        """Blocks of a split row wait for each other: the grid must be co-resident."""
        return self.k > 1

    def bind(self, rows: int, cols: int, op: int | None):
        """A function of the kernel's pointer arguments returning its whole argument
        tuple, the scalars packed from the kernel table's signature; built once per
        (plan, rows, cols, op): a plan is cached per shape, so a repeated call costs
        one dictionary look-up here."""
        cache = self.__dict__.setdefault("_bound", {})
        key = (rows, cols, op)
        f = cache.get(key)
        if f is None:
            sig = ENTRIES[self.kernel].sig
            have = {"rows": rows, "cols": cols, "op": op, "width": self.width, "ss": self.ss, "k": self.k,
                    "chunk": self.chunk}
            f = cache[key] = sig.binder(**{q.name: have[q.name] for q in sig.params if not q.pointer})
        return f


@dataclass(frozen=True)
class Policy:
    """Planner knobs; the default is normal use. Tests pass others to reach every
    path on small shapes. force_regime: "stream" sends every softmax/log_softmax/
    backward call to the stream kernels, "split" sends rows past the warp regime
    through the split planner (which splits only when rows are few), "stage" makes
    the row regime hold the fewest slots it can in registers and stage the rest in
    shared memory. ce_split_max_chunk caps the CE split regime's chunk so that
    short rows reach it."""

    force_regime: str | None = None
    # softmax row regime: grid = min(rows, resident blocks x SMs x this). 16: a block of a 4096-row batch
    # takes two rows, paying its set-up (pointers, reduction addresses) once for both; 16 waves keep the tail short.
    row_grid_waves: int = 16
    split_min_cols: int = 1 << 14  # softmax rows shorter than this are never split just to fill SMs
    stream_min_chunk: int = 1 << 15
    ce_split_max_chunk: int | None = None

    def replace(self, **changes) -> Policy:
        return replace(self, **changes)

    __hash__ = _hash_fields_once  # part of every plan-cache key


DEFAULT_POLICY = Policy()
