"""The cross-entropy family's planner: regime, kernel and launch shape of one fused
call, a pure function of (storage, shape, misalignment, soft labels, :class:`Device`,
:class:`Policy`), with the same occupancy model as the softmax family (plan.py).

Regimes (the names mean what they mean for softmax): "warp" (a row per warp or
less), "row" (a row per block, held in registers), "split" (k co-resident blocks
per row, launched cooperatively), "stream" (two reads; soft labels always)."""

from __future__ import annotations

import dataclasses
import functools

from . import launch
from .abi import cdiv, round_up
from .kernels import CE_STREAM_THREADS, CE_VARIANTS, CE_WARP_THREADS, ENTRIES, VEC
from .kernels import CE_LEAN_STORAGES, ce_block_name, ce_split_lean_name, ce_split_name, ce_stream_name, ce_warp_name
from .plan import DEFAULT_POLICY, MAX_GRID, Device, Plan, Policy, occupancy

WARP_BLOCK_THREADS = CE_WARP_THREADS
BLOCK_MIN_THREADS = 128
STREAM_THREADS = CE_STREAM_THREADS


def occupancy_of(dev: Device, name: str, threads: int, smem: int = 0) -> int:
    """Resident blocks per SM of entry point `name` (the model, from its launch bounds)."""
    return occupancy(dev, ENTRIES[name].bounds, threads, smem)


def capacity(storage: str, regime: str) -> int:
    """Longest row (plus misalignment) a held regime keeps in registers (split: per block)."""
    v = CE_VARIANTS[storage]
    if regime == "warp":
        return 32 * max(v["warp"]) * VEC[storage]
    if regime == "row":
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
    s: ((capacity(s, "warp"), "warp"), (capacity(s, "row"), "row"), (float("inf"), "split")) for s in CE_VARIANTS
}


@functools.lru_cache(maxsize=4096)
def plan(storage: str, rows: int, cols: int, mis: int, soft: bool, dev: Device,
         pol: Policy = DEFAULT_POLICY) -> Plan:
    """Regime, kernel and launch shape for `rows` rows of `cols` classes. The split
    regime needs a device that launches cooperative grids (dev.cooperative)."""
    if rows < 1 or cols < 1:
        raise ValueError("plan() needs at least one row and one class")
    vec = VEC[storage]
    need = cols + mis
    regime = "stream" if soft else next(r for limit, r in REGIMES[storage] if need <= limit)
    if pol.ce_split_max_chunk is not None and not soft and need > pol.ce_split_max_chunk:
        regime = "split"
    if regime == "warp":
        for nv in CE_VARIANTS[storage]["warp"]:
            width = launch.next_pow2(cdiv(need, nv * vec))
            if width <= 32:
                break
        name = ce_warp_name(nv, storage)
        rpb = WARP_BLOCK_THREADS // width
        cap = max(1, occupancy_of(dev, name, WARP_BLOCK_THREADS)) * dev.n_sm * 4
        return Plan("warp", name, int(min(cdiv(rows, rpb), cap, MAX_GRID)), WARP_BLOCK_THREADS, width=width)
    if regime == "row":
        for nv, max_threads in CE_VARIANTS[storage]["block"]:
            threads = max(BLOCK_MIN_THREADS, round_up(cdiv(need, nv * vec), 32))
            if threads <= max_threads:
                break
        name = ce_block_name(nv, storage)
        cap = max(1, occupancy_of(dev, name, threads)) * dev.n_sm * 4
        return Plan("row", name, int(min(rows, cap, MAX_GRID)), threads)
    if regime == "split" and dev.cooperative:
        p = _plan_split(storage, rows, cols, mis, dev, pol)
        if p is not None:
            return p
    name = ce_stream_name(storage, soft)
    cap = max(1, occupancy_of(dev, name, STREAM_THREADS)) * dev.n_sm * 2
    return Plan("stream", name, int(min(rows, cap, MAX_GRID)), STREAM_THREADS)


def _plan_split(storage: str, rows: int, cols: int, mis: int, dev: Device, pol: Policy) -> Plan | None:
    """k blocks per row each holding a chunk; None when the grid cannot be co-resident."""
    vec = VEC[storage]
    nv, max_threads = CE_VARIANTS[storage]["split"]
    # Largest chunk (a multiple of VEC) one block holds at this misalignment.
    cap = (max_threads * nv * vec - mis) // vec * vec
    if pol.ce_split_max_chunk is not None:
        cap = min(cap, max(vec, pol.ce_split_max_chunk // vec * vec))
    k = cdiv(cols, cap)
    chunk = round_up(cdiv(cols, k), vec)  # spread evenly: the blocks finish together
    k = cdiv(cols, chunk)
    threads = max(BLOCK_MIN_THREADS, round_up(cdiv(chunk + mis, nv * vec), 32))
    name = ce_split_name(storage)
    resident = occupancy_of(dev, name, threads) * dev.n_sm
    groups = min(rows, resident // k)
    if k < 2 or groups < 1:
        return None
    return Plan("split", name, groups * k, threads, k=k, chunk=chunk, groups=groups)


def lean_variant(p: Plan, storage: str) -> Plan:
    """`p` with the fast-path instantiation of its kernel where the table has one (the
    split regime's `_lean` kernels: same launch shape and bounds, so the plan's grid
    stays co-resident). Only for a call with hard labels and no weight, smoothing,
    z-loss or cap; the caller decides that from the options."""
    if p.regime == "split" and storage in CE_LEAN_STORAGES:
        return dataclasses.replace(p, kernel=ce_split_lean_name(storage))
    return p
