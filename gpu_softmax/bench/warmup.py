"""What a run compiles before timing: our kernels in background threads, torch.compile's graphs,
and the launch plan our kernels choose for a case."""

from __future__ import annotations

import threading
import time

from gpu_softmax._cuda import loader

from . import baselines
from .cases import OVERHEAD_SHAPE
from .inputs import make_torch_inputs
from .timing import sync


class KernelWarmup:
    """NVRTC-compiles every op family in its own thread (NVRTC releases the GIL), into
    CuPy's on-disk kernel cache, so the loader's own compile later is a cache load.
    `seconds` is the wall time until all are done (a warm cache makes it short)."""

    def __init__(self):
        self.errors: dict[str, str] = {}
        self.t0 = time.perf_counter()
        self.seconds: float | None = None
        self.families = loader.families()
        self.threads = [threading.Thread(target=self._compile, args=(f,), daemon=True) for f in self.families]
        for t in self.threads:
            t.start()

    def _compile(self, family: str) -> None:
        import cupy

        try:
            # the loader's own text and options: the same cache entry its compile will find
            cupy.RawModule(code=loader.module_source(family), options=loader.COMPILE_OPTIONS).compile()
        except Exception as exc:  # the timed calls will raise it again, in their rows
            self.errors[family] = f"{type(exc).__name__}: {str(exc)[:200]}"

    def wait(self) -> float:
        for t in self.threads:
            t.join()
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.t0
        return self.seconds


def precompile_torch(cases) -> float:
    """Compile torch.compile's graph of each (op, dtype) in `cases` on a tiny input (the
    graphs have dynamic shapes, so the plan's shapes reuse them); seconds spent. A graph
    that fails to compile is left to its rows, which say why."""
    t0 = time.perf_counter()
    for op, dtype in dict.fromkeys((op, dtype) for op, dtype, _ in cases):
        fn, _ = baselines.resolve(baselines.TORCH_COMPILE, op)
        if fn is None:
            continue
        try:  # torch tensors, as DLPack gives them for CuPy rows (ours would wait for NVRTC)
            fn(*make_torch_inputs(op, *OVERHEAD_SHAPE, dtype))
            sync()
        except Exception:
            pass
    return time.perf_counter() - t0


def plan_info(op: str, dtype: str, rows: int, cols: int) -> dict | None:
    """The launch plan our kernels choose for this case (never raises: None if unknown).
    `bytes_in_flight_per_sm` is recorded where the plan states it."""
    try:
        from gpu_softmax._cuda import cross_entropy as ce_mod
        from gpu_softmax._cuda import softmax as sm_mod

        direction = {"logsumexp": "lse", "softmax_backward": "bwd", "log_softmax_backward": "bwd"}.get(op, "fwd")
        if op.startswith("cross_entropy"):
            p = ce_mod.plan_for(dtype, rows, cols)
        else:
            p = sm_mod.plan_for(direction, dtype, rows, cols)
        info = {k: getattr(p, k) for k in ("regime", "kernel", "grid", "block", "k", "smem", "resident")
                if hasattr(p, k)}
        info["bytes_in_flight_per_sm"] = getattr(p, "bytes_in_flight_per_sm", getattr(p, "inflight_bytes_per_sm", None))
        return info
    except Exception:
        return None
