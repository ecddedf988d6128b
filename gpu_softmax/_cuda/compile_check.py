"""Compile every kernel entry point with NVRTC, with no GPU, and read ptxas's report.

Used by the CI tests (tests/test_compile.py) and by `gpu-softmax compile-check`.
The source compiled is exactly what the loader hands CuPy (common.cuh pasted in),
with the options CuPy adds, for a real architecture so that ptxas runs and reports
registers and spills per entry function.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from . import kernels, loader
from .plan import STATIC_SMEM_MAX

ARCHS: tuple[int, ...] = (80, 90)
# The architectures the kernels are written for (sm_80, 86, 89, 90). Below (sm_70, sm_75) and
# above (Blackwell, sm_100 and sm_120) ptxas spills registers in several kernels: not supported.
SUPPORTED_ARCHS = range(80, 91)
SUPPORTED = "sm_80 to sm_90 (A100, A10/A40/RTX 30xx, L4/L40/RTX 40xx, H100/H200)"

@dataclass
class EntryReport:
    name: str
    arch: int
    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    static_smem_bytes: int = 0  # __shared__ arrays, as ptxas reports them

    @property
    def spills(self) -> int:
        return self.spill_store_bytes + self.spill_load_bytes


@dataclass
class FamilyReport:
    family: str
    arch: int
    seconds: float
    log: str
    entries: dict[str, EntryReport] = field(default_factory=dict)
    declared: tuple[str, ...] | None = None  # the kernel table's entry points
    in_source: tuple[str, ...] = ()  # extern "C" kernels found in the source text


class NvrtcUnavailable(RuntimeError):
    pass


def _nvrtc_compile(source: str, name: str, options: list[str]) -> tuple[str, bool]:
    """(log, ok). Tries CuPy's NVRTC binding, then cuda.bindings."""
    try:
        from cupy_backends.cuda.libs import nvrtc as cnv
    except Exception as exc_cupy:  # pragma: no cover - depends on the install
        try:
            from cuda.bindings import nvrtc as bnv
        except Exception as exc_b:
            raise NvrtcUnavailable(
                "no NVRTC binding: install CuPy and NVRTC (cupy-cuda12x nvidia-cuda-nvrtc-cu12: the cuda12x extra) "
                f"(cupy_backends: {exc_cupy}; cuda.bindings: {exc_b})"
            ) from exc_b
        err, prog = bnv.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], [])
        opts = [o.encode() for o in options]
        (res,) = bnv.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = bnv.nvrtcGetProgramLogSize(prog)
        buf = b" " * size
        bnv.nvrtcGetProgramLog(prog, buf)
        bnv.nvrtcDestroyProgram(prog)
        return buf.decode(errors="replace").rstrip("\x00"), res == bnv.nvrtcResult.NVRTC_SUCCESS
    try:
        prog = cnv.createProgram(source, name, [], [])
    except Exception as exc:  # libnvrtc itself missing
        raise NvrtcUnavailable(f"NVRTC library could not be loaded: {exc}") from exc
    try:
        ok = True
        try:
            cnv.compileProgram(prog, options)
        except cnv.NVRTCError:
            ok = False
        return cnv.getProgramLog(prog), ok
    finally:
        cnv.destroyProgram(prog)


def nvrtc_version() -> tuple[int, int]:
    from cupy_backends.cuda.libs import nvrtc as cnv

    return tuple(cnv.getVersion())


_ENTRY_RE = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_FRAME_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS_RE = re.compile(r"Used (\d+) registers")
_SMEM_RE = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str, arch: int) -> dict[str, EntryReport]:
    """Per-entry registers/stack/spills from `-Xptxas=-v` output."""
    reports: dict[str, EntryReport] = {}
    current = None
    frame = (0, 0, 0)
    for line in log.splitlines():
        m = _ENTRY_RE.search(line)
        if m:
            current = m.group(1)
            frame = (0, 0, 0)
            continue
        if current is None:
            continue
        m = _FRAME_RE.search(line)
        if m:
            frame = tuple(int(v) for v in m.groups())
            continue
        m = _REGS_RE.search(line)
        if m:
            smem = _SMEM_RE.search(line)
            reports[current] = EntryReport(current, arch, int(m.group(1)), *frame,
                                           static_smem_bytes=int(smem.group(1)) if smem else 0)
            current = None
    return reports


def parse_archs(text: str) -> tuple[int, ...]:
    """--arch's "80,90" (or "sm_80,sm_90") as (80, 90); ValueError naming a bad entry."""
    archs = []
    for part in text.split(","):
        digits = part.strip().lower().removeprefix("sm_")
        if not digits.isdigit() or not 10 <= int(digits) <= 199:
            raise ValueError(f"bad --arch entry {part.strip()!r}: expected an SM architecture number such as 80 "
                             f"or 90 (sm_80, sm_90); the kernels support {SUPPORTED}")
        archs.append(int(digits))
    return tuple(archs)


def unsupported_note(arch: int) -> str | None:
    """Why a compile for `arch` is expected to fail the check, or None for a supported arch."""
    if arch in SUPPORTED_ARCHS:
        return None
    return (f"sm_{arch} is not a supported architecture (the kernels support {SUPPORTED}); "
            "ptxas spills registers there, which compile-check reports as problems")


def compile_options(arch: int) -> list[str]:
    return [
        f"--gpu-architecture=sm_{arch}",
        "-Xptxas=-v",
        *loader.COMPILE_OPTIONS,
        *loader.CUPY_IMPLIED_OPTIONS,
    ]


def declared_entry_points(family: str) -> tuple[str, ...] | None:
    """The kernel table's entry points of `family` (None: a family the table does not declare)."""
    if family not in kernels.FAMILIES:
        return None
    return kernels.entry_points(family)


def header_probe_source() -> str:
    """common.cuh on its own, so the header is compiled even before any kernel uses it."""
    header = (loader.cuda_src_dir() / loader.HEADER).read_text()
    return header + '\nextern "C" __global__ void gs_header_probe(float* p) { if (p) p[0] = 0.0f; }\n'


def check_family(family: str, arch: int) -> FamilyReport:
    source = header_probe_source() if family == "<header>" else loader.module_source(family)
    t0 = time.perf_counter()
    log, ok = _nvrtc_compile(source, f"{family}.cu", compile_options(arch))
    seconds = time.perf_counter() - t0
    if not ok:
        raise RuntimeError(f"NVRTC failed to compile {family}.cu for sm_{arch}:\n{log}")
    rep = FamilyReport(family=family, arch=arch, seconds=seconds, log=log)
    rep.entries = parse_ptxas_log(log, arch)
    rep.in_source = tuple(loader.extern_c_kernels(source)) if family != "<header>" else ()
    rep.declared = declared_entry_points(family) if family != "<header>" else None
    return rep


def problems(rep: FamilyReport) -> list[str]:
    """Everything wrong with one family's compile, as sentences (empty when clean)."""
    out = []
    where = f"{rep.family}.cu sm_{rep.arch}"
    for e in rep.entries.values():
        if e.spills:
            out.append(f"{where}: {e.name} spills {e.spill_store_bytes} B stores / {e.spill_load_bytes} B loads")
        if e.static_smem_bytes > STATIC_SMEM_MAX:
            # The planners' occupancy model reserves STATIC_SMEM_MAX per block; more
            # would make it over-count resident blocks (a cooperative grid too large).
            out.append(f"{where}: {e.name} has {e.static_smem_bytes} B of static shared memory, above the "
                       f"planners' STATIC_SMEM_MAX ({STATIC_SMEM_MAX} B)")
    if rep.declared is not None:
        declared = set(rep.declared)
        found = set(rep.in_source)
        compiled = set(rep.entries)
        for n in sorted(declared - found):
            out.append(f"{where}: the kernel table names {n}, which the source does not define")
        for n in sorted(found - declared):
            out.append(f"{where}: the source defines {n}, which the kernel table does not list (dead or unlisted kernel)")
        for n in sorted(declared - compiled):
            out.append(f"{where}: {n} did not appear in ptxas's report")
    return out


def run_all(archs=ARCHS) -> list[FamilyReport]:
    reports = []
    for arch in archs:
        reports.append(check_family("<header>", arch))
        for fam in loader.families():
            reports.append(check_family(fam, arch))
    return reports


def format_table(reports: list[FamilyReport]) -> str:
    lines = [f"{'family':<16}{'arch':>6}{'entry point':>44}{'regs':>6}{'stack':>7}{'spill':>7}"]
    for rep in reports:
        lines.append(f"{rep.family:<16}{'sm_' + str(rep.arch):>6}{'(compile ' + format(rep.seconds, '.2f') + ' s)':>44}")
        for e in sorted(rep.entries.values(), key=lambda e: e.name):
            lines.append(f"{'':<16}{'':>6}{e.name:>44}{e.registers:>6}{e.stack_bytes:>7}{e.spills:>7}")
    return "\n".join(lines)
