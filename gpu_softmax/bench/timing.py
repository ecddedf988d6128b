"""Timing: CUDA events on the current stream, warm-up, a spin kernel for device time, medians.

Two times per implementation (see the package docstring): call time, events between
consecutive calls of a back-to-back loop; kernel time, the same loop queued behind a
spin kernel so the events time the device work alone. Without a GPU, the host clock.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Our own timer kernels: a spin on the global timer (keeps the GPU busy while the host
# queues the timed calls) and an empty kernel (the launch floor of the overhead rows).
_TIMER_SRC = r"""
extern "C" __global__ void gs_bench_spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
extern "C" __global__ void gs_bench_empty() {}
"""


@functools.lru_cache(maxsize=None)
def _timer_kernel(name: str):
    import cupy

    return cupy.RawModule(code=_TIMER_SRC).get_function(name)


def _spin(ms: float) -> None:
    """Keep the GPU busy for `ms` on the current stream (one thread spinning on the clock)."""
    _timer_kernel("gs_bench_spin")((1,), (1,), (np.uint64(int(ms * 1e6)),))


def torch_if_loaded():
    """torch if something already imported it (timing never imports it itself)."""
    return sys.modules.get("torch")


def sync() -> None:
    """Wait for CuPy's current stream and, where torch is loaded, for torch's device work."""
    import cupy

    cupy.cuda.get_current_stream().synchronize()
    torch = torch_if_loaded()
    if torch is not None:
        try:
            torch.cuda.synchronize()
        except Exception:
            pass


@dataclass
class Timing:
    call: list[float]  # ms between consecutive calls of a back-to-back loop
    kernel: list[float]  # the same behind a spin kernel: device time alone
    covered: bool  # the spin outlasted the host's queuing of the kernel-time loop
    first_ms: float  # the first call, compile / JIT included


def _event_loop(fn: Callable, arg_sets: list[tuple], reps: int, spin_ms: float = 0.0):
    """(ms per call, host seconds to queue them, whether a spin kernel outlasted the queuing).

    Torch work runs on torch's current stream; both it and CuPy's default to the
    legacy default stream, on which the events are recorded.
    """
    import cupy

    stream = cupy.cuda.get_current_stream()
    events = [cupy.cuda.Event() for _ in range(reps + 1)]
    shield = None
    if spin_ms:
        _spin(spin_ms)
        shield = cupy.cuda.Event()
        shield.record(stream)
    t0 = time.perf_counter()
    events[0].record(stream)
    for i in range(reps):
        fn(*arg_sets[i % len(arg_sets)])
        events[i + 1].record(stream)
    host_s = time.perf_counter() - t0
    covered = shield is not None and not shield.done
    events[-1].synchronize()
    return [cupy.cuda.get_elapsed_time(a, b) for a, b in zip(events, events[1:])], host_s, covered


def time_gpu(fn: Callable, arg_sets: list[tuple], warmup: int = 3, reps: int = 20) -> Timing:
    """Call time and kernel time of `fn`, rotating argument sets (see the module docstring)."""
    t0 = time.perf_counter()
    fn(*arg_sets[0])
    sync()
    first_ms = (time.perf_counter() - t0) * 1e3
    for i in range(1, warmup):
        fn(*arg_sets[i % len(arg_sets)])
    sync()
    call, host_s, _ = _event_loop(fn, arg_sets, reps)
    spin_ms = min(500.0, 2e3 * host_s + 1.0)
    for _ in range(2):  # a second try with a longer spin if the first did not cover the queuing
        kernel, _, covered = _event_loop(fn, arg_sets, reps, spin_ms)
        if covered:
            break
        spin_ms = min(2000.0, spin_ms * 4)
    return Timing(call, kernel, covered, first_ms)


def time_cpu(fn: Callable, arg_sets: list[tuple], warmup: int = 1, reps: int = 5) -> list[float]:
    for i in range(warmup):
        fn(*arg_sets[i % len(arg_sets)])
    out = []
    for i in range(reps):
        args = arg_sets[i % len(arg_sets)]
        t0 = time.perf_counter()
        fn(*args)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(samples: list[float]) -> tuple[float, float, float]:
    """(median, 10th, 90th percentile)."""
    med = statistics.median(samples)
    q = statistics.quantiles(samples, n=10, method="inclusive") if len(samples) >= 2 else [med] * 9
    return med, q[0], q[-1]


def empty_launch_ms(reps: int = 50) -> float:
    """Call time of launching an empty kernel: the floor the host-overhead rows subtract."""
    kernel = _timer_kernel("gs_bench_empty")
    return statistics.median(time_gpu(lambda: kernel((1,), (1,), ()), [()], 3, reps).call)


def peak_memory_bytes(fn: Callable, args: tuple) -> int | None:
    """Device memory one call needs above what is live before it, result included.

    The CuPy memory pool keeps freed blocks, so after emptying its cache its size
    after the call is its high-water mark; torch reports its own with
    max_memory_allocated. The two are added (an implementation may use both).
    """
    try:
        import cupy

        pool = cupy.get_default_memory_pool()
        sync()
        pool.free_all_blocks()
        base = pool.total_bytes()
        torch = torch_if_loaded()
        t_base = None
        if torch is not None and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            t_base = torch.cuda.memory_allocated()
        out = fn(*args)
        sync()
        peak = pool.total_bytes() - base
        if t_base is not None:
            peak += torch.cuda.max_memory_allocated() - t_base
        del out
        return int(peak)
    except Exception:
        return None


def copy_bandwidth_gbps(backend: str, nbytes: int | None = None) -> dict:
    """Device-to-device (or host memcpy) copy and read-only bandwidth, GB/s."""
    if backend == "cuda":
        import cupy

        nbytes = nbytes or 1 << 30
        src = cupy.random.random(nbytes // 4, dtype=cupy.float32)
        dst = cupy.empty_like(src)
        copy_ms = statistics.median(time_gpu(lambda: dst.__setitem__(Ellipsis, src), [()], 3, 20).kernel)
        read_ms = statistics.median(time_gpu(lambda: src.sum(), [()], 3, 20).kernel)
        del src, dst
        return {"copy_gbps": 2 * nbytes / copy_ms / 1e6, "read_gbps": nbytes / read_ms / 1e6}
    nbytes = nbytes or 1 << 26
    src = np.random.default_rng().random(nbytes // 8)
    dst = np.empty_like(src)
    copy_ms = statistics.median(time_cpu(lambda: np.copyto(dst, src), [()], 1, 5))
    read_ms = statistics.median(time_cpu(lambda: src.sum(), [()], 1, 5))
    return {"copy_gbps": 2 * nbytes / copy_ms / 1e6, "read_gbps": nbytes / read_ms / 1e6}
