"""Static SASS budget of the goal cases (issue 20): instructions per element on the fast path.

    python benchmarks/sass_budget.py [--json FILE]

Needs NVRTC 13 and nvdisasm 13 from PyPI (no GPU, no CUDA toolkit):

    python -m pip install "nvidia-cuda-nvrtc>=13,<14" "nvidia-cuda-nvdisasm>=13,<14"

(both are in the project's `test` extra). nvdisasm 13 rejects cubins from NVRTC 12, hence NVRTC 13.

What it does, per case: asks the project's planner for the launch (kernel, grid, block, scalar arguments),
compiles the loader's source text for that family with the loader's NVRTC options for sm_90 (only the
entry points the cases use are kept; each entry point is compiled on its own by ptxas, so the others do
not change its code), disassembles the cubin, and walks one thread of one block through the SASS with the
case's real arguments (sass_walk.py): aligned rows, an interior thread, default options, every loop
run its planned trip count. The counts of that thread, times the block's threads and the grid, over the
case's elements, are the per-element figures. They are static predictions, not GPU measurements.

Pipe model (per SM of an H200: 4 sub-partitions, 132 SMs, 1.75 GHz, a clock it holds under load):
issue 1 warp instruction per clock per sub-partition (128 thread instructions per SM clock); the ALU
pipe half of that (64); the XU pipe (MUFU, F2F, F2FP, I2F, F2I) an eighth (16). Compute time per element
= max(instr / 128, alu / 64, xu / 16) SM clocks over 132 x 1.75e9 clocks per second; memory time per
element = bytes moved / 4.25e12 (the H200's measured copy rate). `compute_over_memory` is their ratio:
above 1 the kernel cannot reach the copy rate whatever the memory system does.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import sass_walk  # noqa: E402

ARCH = 90
N_SM = 132
CLOCK_HZ = 1.75e9
COPY_BYTES_PER_S = 4.25e12
ISSUE_PER_SM_CLK, ALU_PER_SM_CLK, XU_PER_SM_CLK = 128, 64, 16
INSTALL_HINT = 'python -m pip install "nvidia-cuda-nvrtc>=13,<14" "nvidia-cuda-nvdisasm>=13,<14"'

ALU_OPS = {"FSETP", "FSEL", "FSET", "FMNMX", "ISETP", "IADD3", "VIADD", "LOP3", "LEA", "SHF", "SHL", "SHR",
           "PRMT", "MOV", "SEL", "PLOP3", "P2R", "R2P", "IABS", "IMNMX", "VIMNMX", "FLO", "POPC", "BREV",
           "BMSK", "CS2R"}
XU_OPS = {"MUFU", "F2F", "F2FP", "I2F", "F2I", "FRND"}
F64_OPS = {"DADD", "DMUL", "DFMA", "DSETP", "DMNMX", "DSET"}
STORE_OPS = {"STG", "ST"}


class ToolMissing(RuntimeError):
    pass


# ----------------------------------------------------------------------------------
# the toolchain: NVRTC 13 and nvdisasm 13 from their wheels


def _cu13_dir() -> Path:
    spec = importlib.util.find_spec("nvidia")
    for root in list(spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "cu13").is_dir():
            return Path(root) / "cu13"
    raise ToolMissing(f"NVRTC 13 / nvdisasm 13 not found (no nvidia/cu13 in site-packages): {INSTALL_HINT}")


def nvrtc_library() -> Path:
    libs = sorted((_cu13_dir() / "lib").glob("libnvrtc.so.13*"))
    if not libs:
        raise ToolMissing(f"libnvrtc.so.13 not found: {INSTALL_HINT}")
    return libs[0]


def nvdisasm_binary() -> Path:
    exe = _cu13_dir() / "bin" / "nvdisasm"
    if not exe.is_file():
        raise ToolMissing(f"nvdisasm 13 not found: {INSTALL_HINT}")
    return exe


def nvrtc_compile(source: str, name: str, options: list[str]) -> tuple[bytes, str]:
    """(cubin, log) from NVRTC 13 through ctypes."""
    lib = ctypes.CDLL(str(nvrtc_library()))
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None) != 0:
        raise RuntimeError("nvrtcCreateProgram failed")
    try:
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        res = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        if res != 0:
            raise RuntimeError(f"NVRTC 13 failed to compile {name}:\n{log}")
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        cubin = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetCUBIN(prog, cubin)
        return cubin.raw, log
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def cache_dir() -> Path:
    d = Path(os.environ.get("GS_SASS_CACHE", Path(tempfile.gettempdir()) / "gpu_softmax_sass_cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def compile_sass(source: str, name: str, options: list[str]) -> tuple[str, str]:
    """(nvdisasm -c text, ptxas log), cached per hash of source, options and tool paths."""
    key = hashlib.sha256("\0".join([source, name, *options, str(nvrtc_library())]).encode()).hexdigest()[:24]
    sass_path, log_path = cache_dir() / f"{key}.sass", cache_dir() / f"{key}.log"
    if sass_path.is_file() and log_path.is_file():
        return sass_path.read_text(), log_path.read_text()
    cubin, log = nvrtc_compile(source, name, options)
    with tempfile.NamedTemporaryFile(suffix=".cubin", dir=cache_dir(), delete=False) as f:
        f.write(cubin)
    try:
        sass = subprocess.run([str(nvdisasm_binary()), "-c", f.name], check=True, capture_output=True,
                              text=True).stdout
    finally:
        os.unlink(f.name)
    tmp = sass_path.with_suffix(".tmp")
    tmp.write_text(sass)
    log_path.write_text(log)
    tmp.replace(sass_path)
    return sass, log


def registers(log: str) -> dict[str, int]:
    out, cur = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
        m = re.search(r"Used (\d+) registers", line)
        if m and cur:
            out[cur] = int(m.group(1))
            cur = None
    return out


# ----------------------------------------------------------------------------------
# the one place that reaches into the project (the lead adapts this at merges)


@dataclass
class Launch:
    family: str
    kernel: str
    grid: int
    block: int
    args: list[tuple[str, int]]  # ("ptr" | "i32" | "i64" | "f64", value or bit pattern)
    memory: dict[int, int] = field(default_factory=dict)  # address -> 64-bit word the kernel reads
    smem: int = 0  # dynamic shared memory, bytes


def adapter(what: str, case: dict | None = None, occupancy=None):
    """Everything sass_budget needs from gpu_softmax: `what` = "source" (case = {"family",
    "kernels"}: the loader's text with only those entry points), "options" (the loader's NVRTC
    options for sm_90), or "launch" (a goal case: its plan on an H200 as a Launch, the arguments
    packed and typed from the kernel table). `occupancy` is unused: both planners model
    occupancy from the launch bounds (gpu_softmax._cuda.plan)."""
    from gpu_softmax._cuda import abi, compile_check, kernels, loader
    from gpu_softmax._cuda import cross_entropy as ce
    from gpu_softmax._cuda import softmax as sm
    from gpu_softmax._cuda.plan import H200

    if what == "source":
        family = case["family"]
        text = loader.module_source(family)
        if case.get("kernels") is None:
            return text
        wanted = abi.generated_source((kernels.ENTRIES[n] for n in sorted(case["kernels"])), family)
        return text.replace(kernels.generated_entries(family), wanted)
    if what == "options":
        return compile_check.compile_options(ARCH)
    storage, rows, cols = case["dtype"], case["rows"], case["cols"]
    ptrs = iter(0x7F0000000000 + (i << 36) for i in range(32))

    def typed(kernel: str, values: tuple) -> list:
        kinds = {"long long": "i64", "int": "i32", "unsigned long long": "i64", "double": "f64", "float": "f32"}
        out = []
        for param, v in zip(kernels.ENTRIES[kernel].sig.params, values):
            if param.pointer:
                out.append(("ptr", int(v)))
            elif param.ctype in ("double", "float"):
                bits = np.float64(v).view(np.uint64) if param.ctype == "double" else np.float32(v).view(np.uint32)
                out.append((kinds[param.ctype], int(bits)))
            else:
                out.append((kinds[param.ctype], int(v)))
        return out

    if case["op"] in ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward", "logsumexp"):
        direction = {"logsumexp": "lse"}.get(case["op"], "bwd" if case["op"].endswith("backward") else "fwd")
        p = sm.plan_for(direction, storage, rows, cols, 0, H200)
        op = {"softmax": sm.OP_SOFTMAX, "log_softmax": sm.OP_LOG_SOFTMAX, "logsumexp": None,
              "softmax_backward": sm.OP_SOFTMAX_BWD, "log_softmax_backward": sm.OP_LOG_SOFTMAX_BWD}[case["op"]]
        n_ptrs = sum(q.pointer for q in kernels.ENTRIES[p.kernel].sig.params)
        values = p.bind(rows, cols, op)(*(next(ptrs) for _ in range(n_ptrs)))
        return Launch("softmax", p.kernel, p.grid, p.block, typed(p.kernel, values), smem=p.smem)
    # cross entropy with its gradient, hard labels, default options (no weight, smoothing, z-loss, cap)
    p = ce.plan_for(storage, rows, cols, 0, False, H200)
    x, grad, tgt, coef, row_loss = (next(ptrs) for _ in range(5))
    named = dict(x=x, grad=grad, tgt=tgt, soft_t=0, w=0, coef=coef, g_rows=0, row_loss=row_loss, row_lse=0,
                 rows=rows, cols=cols, ignore=-100, eps=0.0, z=0.0, cap=0.0)
    if p.regime == "warp":
        named["width"] = p.width
    elif p.regime == "split":
        named.update(k=p.k, chunk=p.chunk, part=next(ptrs), cnt=next(ptrs))
    values = kernels.ENTRIES[p.kernel].sig.pack(**named)
    target = cols // 2 + 3  # a class inside some block's chunk, not at an edge
    memory = {tgt + 8 * r: target for r in range(rows)}
    return Launch("cross_entropy", p.kernel, p.grid, p.block, typed(p.kernel, values), memory)


# ----------------------------------------------------------------------------------
# cases and the walk

CASES = [
    {"op": "softmax", "dtype": "float32", "rows": 4096, "cols": 32768},
    {"op": "softmax", "dtype": "bfloat16", "rows": 4096, "cols": 32768},
    {"op": "softmax", "dtype": "float32", "rows": 16384, "cols": 131072},
    {"op": "cross_entropy_fwd_bwd", "dtype": "float32", "rows": 4096, "cols": 128256},
    {"op": "cross_entropy_fwd_bwd", "dtype": "bfloat16", "rows": 4096, "cols": 128256},
    {"op": "softmax", "dtype": "float32", "rows": 32768, "cols": 4096},
    {"op": "softmax_backward", "dtype": "float32", "rows": 4096, "cols": 32768},
    {"op": "log_softmax", "dtype": "float32", "rows": 4096, "cols": 32768},
    {"op": "log_softmax", "dtype": "bfloat16", "rows": 4096, "cols": 32768},
    {"op": "log_softmax_backward", "dtype": "float32", "rows": 4096, "cols": 32768},
    {"op": "logsumexp", "dtype": "float32", "rows": 4096, "cols": 32768},
    {"op": "logsumexp", "dtype": "bfloat16", "rows": 4096, "cols": 32768},
]
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}


def const_bank(launch: Launch) -> dict[int, int]:
    """Constant bank 0 as the driver lays it out on sm_90: block and grid sizes at 0x0-0x14, the
    stack top at 0x28, the dynamic shared memory size (%dynamic_smem_size) at 0x2c, the kernel
    parameters from 0x210 at their natural alignment."""
    bank = {0x0: launch.block, 0x4: 1, 0x8: 1, 0xC: launch.grid, 0x10: 1, 0x14: 1, 0x28: 0xFFFC00,
            0x2C: launch.smem}
    off = 0x210
    for kind, value in launch.args:
        size = 4 if kind in ("i32", "f32") else 8
        off = -(-off // size) * size
        value &= (1 << (8 * size)) - 1
        bank[off] = value & 0xFFFFFFFF
        if size == 8:
            bank[off + 4] = value >> 32
        off += size
    return bank


def representative(launch: Launch) -> tuple[int, int]:
    """(block, thread): the second block (an interior chunk when a row spans blocks), lane 1 of the
    middle warp (neither the row's first nor last slots, nor a warp-0-only reduction step)."""
    warps = max(1, launch.block // 32)
    return min(1, launch.grid - 1), min(launch.block - 1, 32 * (warps // 2) + 1)


def walk_case(launch: Launch, fn: sass_walk.Function) -> sass_walk.Walk:
    block, tid = representative(launch)
    special = {"SR_TID.X": tid, "SR_CTAID.X": block, "SR_LANEID": tid % 32}
    mem = launch.memory

    def memory(addr, width):
        return mem.get(addr) if width == 8 else None

    return sass_walk.Thread(fn, const_bank(launch), special, memory).run()


def store_bytes(op: str) -> int:
    """Bytes one store instruction writes, from its width suffix (none: 32 bits)."""
    mods = op.split(".")[1:]
    for m, b in (("128", 16), ("64", 8), ("U16", 2), ("S16", 2), ("16", 2), ("U8", 1), ("S8", 1)):
        if m in mods:
            return b
    return 4


def per_element(case: dict, launch: Launch, w: sass_walk.Walk) -> dict:
    elems = case["rows"] * case["cols"]
    scale = launch.block * launch.grid / elems  # the walked thread stands for every thread of the grid

    def count(pred):
        return sum(n for op, n in w.issued.items() if pred(op)) * scale

    def base(op):
        return op.split(".")[0]

    instr = count(lambda op: True)
    alu = count(lambda op: base(op) in ALU_OPS)
    xu = count(lambda op: base(op) in XU_OPS)
    f64 = count(lambda op: base(op) in F64_OPS or (base(op) in XU_OPS and "64" in op))
    stores = count(lambda op: base(op) in STORE_OPS)
    stored = sum(n * store_bytes(op) for op, n in w.issued.items() if base(op) in STORE_OPS) * scale
    # logsumexp reads its input and writes one value per row
    arrays_moved = 3 if case["op"].endswith("_backward") else 1 if case["op"] == "logsumexp" else 2
    bytes_per_elem = arrays_moved * ITEMSIZE[case["dtype"]]
    compute = max(instr / ISSUE_PER_SM_CLK, alu / ALU_PER_SM_CLK, xu / XU_PER_SM_CLK) / (N_SM * CLOCK_HZ)
    memory = bytes_per_elem / COPY_BYTES_PER_S
    return {
        "op": case["op"], "dtype": case["dtype"], "rows": case["rows"], "cols": case["cols"],
        "kernel": launch.kernel,
        "instr_per_elem": round(instr, 2), "alu_per_elem": round(alu, 2), "xu_per_elem": round(xu, 2),
        "f64_per_elem": round(f64, 3), "compute_over_memory": round(compute / memory, 3),
        "stores_per_slot": round(stores / (stored / 16), 3) if stored else 0.0,
        "grid": launch.grid, "block": launch.block, "guessed_branches": dict(w.guessed),
    }


def _family_sass(family: str, kernels: set[str]) -> tuple[dict[str, sass_walk.Function], dict[str, int]]:
    source = adapter("source", {"family": family, "kernels": kernels})
    sass, log = compile_sass(source, f"{family}.cu", list(adapter("options")))
    return sass_walk.parse_sass(sass), registers(log)


def _ce_occupancy(regs: dict[str, int]):
    def occ(name, threads):
        r = max(1, regs.get(name, 64))
        per_warp = -(-r * 32 // 256) * 256
        return max(1, min(65536 // (per_warp * -(-threads // 32)), 2048 // threads, 32))
    return occ


def run(cases=CASES) -> list[dict]:
    launches = {}
    provisional = _ce_occupancy({})
    for i, c in enumerate(cases):
        launches[i] = adapter("launch", c, provisional)
    funcs, regs = {}, {}
    for family in sorted({lc.family for lc in launches.values()}):
        f, r = _family_sass(family, {lc.kernel for lc in launches.values() if lc.family == family})
        funcs.update(f)
        regs.update(r)
    out = []
    for i, c in enumerate(cases):
        lc = launches[i]
        if lc.family == "cross_entropy":
            lc = adapter("launch", c, _ce_occupancy(regs))
        out.append(per_element(c, lc, walk_case(lc, funcs[lc.kernel])))
    return out


def format_table(rows: list[dict]) -> str:
    head = (f"{'op':<22}{'dtype':<9}{'shape':>14} {'kernel':<20}{'instr':>7}{'alu':>7}{'xu':>6}{'f64':>7}"
            f"{'C/M':>7}{'st/slot':>8}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['op']:<22}{r['dtype']:<9}{str(r['rows']) + 'x' + str(r['cols']):>14} "
                     f"{r['kernel']:<20}{r['instr_per_elem']:>7.1f}{r['alu_per_elem']:>7.1f}"
                     f"{r['xu_per_elem']:>6.2f}{r['f64_per_elem']:>7.2f}{r['compute_over_memory']:>7.2f}"
                     f"{r['stores_per_slot']:>8.2f}")
    lines.append("instr/alu/xu/f64: per element on the fast path (static SASS walk, sm_90, NVRTC 13); C/M: compute "
                 "over memory time at 4.25 TB/s, 132 SMs at 1.75 GHz; st/slot: store instructions per 16 bytes the walked thread stores (1.00: one vector store per slot).")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="FILE", help="also write {\"cases\": [...]} to FILE")
    ns = ap.parse_args(argv)
    try:
        rows = run()
    except ToolMissing as exc:
        print(f"sass_budget: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if ns.json:
        Path(ns.json).write_text(json.dumps({"cases": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
