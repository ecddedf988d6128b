"""Run the real kernel sources on the CPU: build an emulated module, fake CuPy with
NumPy, and route the launch modules' launches into it.

Import this module only in a process of its own (the runners in this folder are
started as subprocesses by tests/test_kernels_emulated.py): it installs a fake
`cupy` into sys.modules.

The build reads exactly the text the loader gives CuPy (common.cuh pasted in),
drops the few helpers written in inline PTX (prelude.h has host versions), turns
each `__shared__` array into a slice of the emulated block's shared buffer, and
adds one generic launcher: each entry point's parameter types are deduced by a
template from its own signature, so the harness needs no list of signatures.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from gpu_softmax._cuda import abi, kernels, loader  # noqa: E402

MAX_ARGS = 20

LAUNCHER = r"""
#include <string.h>
#include <type_traits>
#include <utility>
template <class T> static T gs_emu_arg(unsigned long long bits) {
    if constexpr (std::is_pointer_v<T>) {
        return reinterpret_cast<T>(bits);
    } else if constexpr (std::is_floating_point_v<T>) {
        double d; memcpy(&d, &bits, 8); return (T)d;  // floats travel as float64 bits
    } else {
        return (T)bits;
    }
}
// The kind code of a C parameter type: what the kernel table (abi.py) declares.
template <class T> static constexpr char gs_emu_code() {
    if constexpr (std::is_pointer_v<T>) return 'p';
    else if constexpr (std::is_same_v<T, int>) return 'i';
    else if constexpr (std::is_same_v<T, long long>) return 'q';
    else if constexpr (std::is_same_v<T, unsigned long long>) return 'Q';
    else if constexpr (std::is_same_v<T, float>) return 'f';
    else if constexpr (std::is_same_v<T, double>) return 'd';
    else return '?';
}
template <class... P, size_t... I>
static void gs_emu_call(void (*f)(P...), const unsigned long long* a, std::index_sequence<I...>) {
    f(gs_emu_arg<P>(a[I])...);
}
template <class... P>
static int gs_emu_launch_fn(void (*f)(P...), unsigned grid, unsigned block, const unsigned long long* aa,
                            unsigned smem, int cooperative, const char* codes) {
    // The compiled signature must be the one the table declares, parameter by parameter.
    const char compiled[] = {gs_emu_code<P>()..., 0};
    if (strcmp(compiled, codes)) {
        fprintf(stderr, "emulator: compiled signature %s, kernel table declares %s\n", compiled, codes);
        return 6;
    }
    std::vector<unsigned long long> a(aa, aa + %(max_args)d);
    return emu_run(grid, block, smem, cooperative != 0, [=] { gs_emu_call(f, a.data(), std::index_sequence_for<P...>{}); });
}
extern "C" int emu_launch(const char* name, unsigned grid, unsigned block, const unsigned long long* a,
                          unsigned smem, int cooperative, const char* codes) {
%(cases)s
    return 1;
}
"""


def _drop_asm_helpers(src: str) -> str:
    out, i = [], 0
    while True:
        j = src.find("asm", i)
        if j < 0:
            out.append(src[i:])
            return "".join(out)
        if not re.match(r"asm\s*(volatile)?\s*\(", src[j:]):
            out.append(src[i : j + 3])
            i = j + 3
            continue
        start = src.rfind("__device__ __forceinline__", 0, j)
        k = src.find("{", start)
        depth, e = 0, k
        while True:
            if src[e] == "{":
                depth += 1
            elif src[e] == "}":
                depth -= 1
                if depth == 0:
                    break
            e += 1
        out.append(src[i:start])
        i = e + 1


def emulated_source(family: str, entry_points) -> str:
    src = _drop_asm_helpers(loader.module_source(family))
    offset = [0]

    def shared(m):
        o = offset[0]
        offset[0] += 1024
        return f"{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>((char*)gs_emu_shared() + {o});"

    src = re.sub(r"__shared__ ([\w:<>, ]+?) (\w+)\[(\d+)\];", shared, src)
    # Dynamic shared memory (extern __shared__ T name[];): the launch's buffer.
    src = re.sub(r"extern __shared__ (\w+) (\w+)\[\];", r"\1* \2 = reinterpret_cast<\1*>(gs_emu_dyn_shared());", src)
    if offset[0] > 16384:
        raise RuntimeError("emulated shared memory buffer too small")
    src = re.sub(r'extern\s+"C"\s+__global__', 'extern "C"', src)
    cases = "\n".join(
        f'    if (!strcmp(name, "{n}")) return gs_emu_launch_fn(&{n}, grid, block, a, smem, cooperative, codes);' for n in entry_points
    )
    return (
        '#include "prelude.h"\n' + src + LAUNCHER.replace("%(max_args)d", str(MAX_ARGS)).replace("%(cases)s", cases)
    )


def build(family: str, entry_points, out_dir: Path) -> Path:
    """Compile the emulated module of `family` (cached by the text's hash)."""
    text = emulated_source(family, entry_points)
    prelude = (HERE / "prelude.h").read_text()
    digest = hashlib.sha256((text + prelude).encode()).hexdigest()[:16]
    out_dir.mkdir(parents=True, exist_ok=True)
    so = out_dir / f"emu_{family}_{digest}.so"
    # Runners in parallel (pytest-xdist) share out_dir: one builds, the others wait for it.
    with open(out_dir / f"emu_{family}_{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not so.exists():
            cpp = out_dir / f"emu_{family}_{digest}.cpp"
            cpp.write_text(text)
            tmp = so.with_suffix(".so.tmp")
            r = subprocess.run(
                ["g++", "-std=c++20", "-O1", "-fPIC", "-shared", "-w", f"-I{HERE}", "-o", str(tmp), str(cpp),
                 "-pthread"],
                capture_output=True, text=True,
            )
            if r.returncode:
                raise RuntimeError(f"emulated build of {family} failed:\n{r.stderr[-6000:]}")
            tmp.replace(so)
    return so


# ----------------------------------------------------------------------------------
# fake CuPy: NumPy arrays that report module "cupy" and carry .data.ptr


class _Data:
    def __init__(self, ptr):
        self.ptr = ptr


class ndarray(np.ndarray):
    @property
    def data(self):
        return _Data(self.ctypes.data if self.size else 0)

    @property
    def device(self):
        return types.SimpleNamespace(id=0)

    def get(self):
        return np.array(np.asarray(self).view(np.ndarray), copy=True)


ndarray.__module__ = "cupy"


def _wrap(r):
    if isinstance(r, np.ndarray) and not isinstance(r, ndarray):
        return r.view(ndarray)
    return r


class _FakeCupy(types.ModuleType):
    def __getattr__(self, name):
        f = getattr(np, name)
        if callable(f) and not isinstance(f, type):
            def call(*a, **k):
                a = [np.asarray(x).view(np.ndarray) if isinstance(x, ndarray) else x for x in a]
                return _wrap(f(*a, **k))
            return call
        return f


def _poisoned_empty(shape, dtype=np.float32):
    dt = np.dtype(dtype)
    fill = np.nan if dt.kind == "f" else (0x7FC0 if dt == np.uint16 else 0x5A)
    return _wrap(np.full(shape, fill, dtype=dt))


def install_fake_cupy(sm_count: int = 3):
    cp = _FakeCupy("cupy")
    cp.ndarray = ndarray
    cp.asarray = lambda a, dtype=None: _wrap(np.array(a, dtype=dtype, copy=True))
    cp.asnumpy = lambda a: np.array(np.asarray(a).view(np.ndarray), copy=True)
    cp.empty = _poisoned_empty  # every unwritten output element shows as NaN
    cp.full = lambda shape, v, dtype=np.float32: _wrap(np.full(shape, v, dtype))
    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = lambda *a: types.SimpleNamespace(
        id=0, attributes={"MultiProcessorCount": sm_count, "CooperativeLaunch": 1})
    cuda.get_current_stream = lambda: types.SimpleNamespace(ptr=0)
    cp.cuda = cuda
    sys.modules["cupy"] = cp
    sys.modules["cupy.cuda"] = cuda
    return cp


def _arg_bits(a) -> int:
    """The 64-bit slot one argument travels in (floats as float64 bits). Only called
    after abi.check_args: every scalar already has exactly its declared type, so the
    widening here cannot hide a width mismatch."""
    if isinstance(a, np.ndarray):
        return a.ctypes.data
    if isinstance(a, (float, np.floating)):
        return int(np.float64(a).view(np.uint64))
    return int(a) & (2**64 - 1)


_LAUNCH_ERRORS = {
    1: "no such entry point",
    2: "block size is not a multiple of 32",
    4: "barrier deadlock: threads of a block wait at different barriers",
    5: "spin-wait timeout: a block waits for another block that is not co-resident (not a cooperative launch?)",
    6: "the compiled C signature differs from the kernel table's",
    7: "the kernel trapped: a block of a split row waited past the spin bound for blocks that never ran "
       "(grid not co-resident)",
}


class Emulator:
    """Loads an emulated module and launches its entry points by name."""

    def __init__(self, so: Path):
        self.lib = ctypes.CDLL(str(so))
        self.lib.emu_set_timer_scale.argtypes = [ctypes.c_double]
        self.launches: list[tuple[str, int, int]] = []

    def set_timer_scale(self, scale: float) -> None:
        """Emulated %globaltimer = steady clock x scale (default 1e-3: the kernels'
        spin bound is out of reach; 1e3 reaches it in about a millisecond)."""
        self.lib.emu_set_timer_scale(scale)

    def launch(self, name: str, grid: int, block: int, args, smem: int = 0, cooperative: bool = False) -> None:
        """Run one launch. Only a cooperative launch has all its blocks live at once:
        any other launch whose blocks wait for each other fails (spin timeout).
        Every argument is checked against the kernel table's C signature first
        (abi.check_args: TypeError on a wrong scalar type or width)."""
        entry = kernels.ENTRIES.get(name)
        if entry is None:
            raise RuntimeError(f"emulated launch of {name}: not in the kernel table")
        abi.check_args(entry, args)
        vals = [_arg_bits(a) for a in args]
        assert len(vals) <= MAX_ARGS
        arr = (ctypes.c_ulonglong * MAX_ARGS)(*(vals + [0] * (MAX_ARGS - len(vals))))
        rc = self.lib.emu_launch(name.encode(), grid, block, arr, ctypes.c_uint(smem), ctypes.c_int(int(cooperative)),
                                 entry.sig.codes.encode())
        if rc:
            why = _LAUNCH_ERRORS.get(rc, "unknown error")
            raise RuntimeError(f"emulated launch of {name} (grid {grid}, block {block}) failed ({rc}): {why}")
        self.launches.append((name, grid, block))


class EmulatedKernel:
    """Stands for a loaded CUDA function in the device state: called as the launch
    path calls a driver Function (grid, block, args, smem, stream, cooperative)."""

    def __init__(self, emu: Emulator, name: str):
        self.emu, self.name = emu, name
        self.max_dynamic_shared_size_bytes = 0
        self.ptr = 0

    def __call__(self, grid, block, args, smem=0, stream=None, cooperative=False):
        self.emu.launch(self.name, grid[0], block[0], args, smem, cooperative=cooperative)


# What the emulator's "driver" reports as resident blocks per SM for the
# cooperative-grid guard: it runs any cooperative grid with every block live.
DRIVER_BLOCKS_PER_SM = 32


def emulated_device(sm_count: int = 3, **fields):
    """A 3-SM GPU with a small L2 (so the stream regime's L2 rule is reached)."""
    from gpu_softmax._cuda import plan

    return plan.Device("emulated", sm_count, l2_bytes=1 << 16, **fields)


def use_device(desc) -> None:
    """Make `desc` the current device's description (plans are keyed by it)."""
    from gpu_softmax._cuda import device

    device.current().desc = desc


def setup(family: str, out_dir: Path, sm_count: int = 3):
    """Fake CuPy in place, the family's module built, its launches routed to the
    emulator through the real device state (kernel handles replaced by
    EmulatedKernel; the grid guard asks a fake driver).

    Returns (cupy stand-in, launch module, Emulator)."""
    cp = install_fake_cupy(sm_count)
    import importlib

    from gpu_softmax._cuda import device, launch

    mod = importlib.import_module(f"gpu_softmax._cuda.{family}")
    emu = Emulator(build(family, kernels.entry_points(family), out_dir))
    launch.sm_count = lambda: sm_count
    device.driver_occupancy = lambda fn, block, smem: DRIVER_BLOCKS_PER_SM
    ds = device.DeviceState(0, emulated_device(sm_count))

    def handle(fam, name):
        k = EmulatedKernel(emu, name)
        h = ds.kernels[name] = [k, k, 0]
        return h

    ds._handle = handle
    device._states[0] = ds
    if family == "softmax":
        # Row grids of one wave, so every block walks several rows.
        mod.POLICY = mod.POLICY.replace(row_grid_waves=1)
        launch_plan = mod._launch

        def run(ds, p, args):
            assert p.kernel in mod.ENTRY_POINTS and p.block <= 1024 and p.smem <= mod.H100.smem_per_block
            assert p.cooperative == (p.k > 1)
            launch_plan(ds, p, args)

        mod._launch = run
    return cp, mod, emu
