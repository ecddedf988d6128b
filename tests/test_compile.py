"""CI's proof that every kernel builds: NVRTC, sm_80 and sm_90, zero spill bytes.

Runs on a machine with no GPU: NVRTC compiles and ptxas reports without a device.
The source compiled is exactly the text the loader gives CuPy.
"""

from __future__ import annotations

import os

import pytest

from gpu_softmax._cuda import compile_check as cc
from gpu_softmax._cuda import loader


def _require_nvrtc():
    try:
        cc.nvrtc_version()
    except Exception as exc:
        msg = f"NVRTC not available ({exc}); pip install \".[cuda12x]\" or \".[cuda13x]\" from the checkout"
        if os.environ.get("CI"):
            pytest.fail(msg + " -- CI must run the compile checks")
        pytest.skip(msg)


FAMILIES = ["<header>", *loader.families()]


@pytest.mark.parametrize("arch", cc.ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_compiles_without_spills(family, arch):
    _require_nvrtc()
    rep = cc.check_family(family, arch)
    assert rep.entries, f"ptxas reported no entry functions for {family} sm_{arch}:\n{rep.log}"
    assert cc.problems(rep) == []


@pytest.mark.parametrize("family", loader.families())
def test_every_launchable_entry_point_is_declared(family):
    """The kernel table's entry points, the launch module's ENTRY_POINTS and the
    source's extern "C" kernels agree."""
    import importlib

    declared = cc.declared_entry_points(family)
    assert declared is not None, f"cuda_src/{family}.cu has no entry in gpu_softmax/_cuda/kernels.py"
    assert declared, f"the kernel table declares no entry point of {family}"
    assert sorted(declared) == loader.extern_c_kernels(loader.module_source(family))
    assert tuple(importlib.import_module(f"gpu_softmax._cuda.{family}").ENTRY_POINTS) == tuple(declared)


def test_spill_detection_can_fail():
    """A kernel squeezed into 16 registers must be reported as spilling."""
    _require_nvrtc()
    src = r'''
    extern "C" __global__ void squeezed(const float* __restrict__ x, float* y) {
        float r[48];
        #pragma unroll
        for (int j = 0; j < 48; ++j) r[j] = x[threadIdx.x * 48 + j];
        float s = 0.f;
        #pragma unroll
        for (int j = 0; j < 48; ++j) s += r[j] * r[47 - j] + __expf(r[(j * 7) % 48]);
        #pragma unroll
        for (int j = 0; j < 48; ++j) y[threadIdx.x * 48 + j] = r[j] * s;
    }'''
    log, ok = cc._nvrtc_compile(src, "squeezed.cu", cc.compile_options(90) + ["-maxrregcount=16"])
    assert ok, log
    entries = cc.parse_ptxas_log(log, 90)
    assert entries["squeezed"].spills > 0, log


def test_parse_ptxas_log_reads_each_entry():
    log = (
        "ptxas info    : Compiling entry function 'a_f32' for 'sm_90'\n"
        "ptxas info    : Function properties for a_f32\n"
        "ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 40 registers, used 1 barriers\n"
        "ptxas info    : Compiling entry function 'b_f16' for 'sm_90'\n"
        "ptxas info    : Function properties for b_f16\n"
        "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
        "ptxas info    : Used 255 registers\n"
    )
    got = cc.parse_ptxas_log(log, 90)
    assert (got["a_f32"].registers, got["a_f32"].stack_bytes, got["a_f32"].spills) == (40, 8, 16)
    assert (got["b_f16"].registers, got["b_f16"].spills) == (255, 0)


def test_loader_pastes_header_into_source():
    """Header edits must change the compiled text (CuPy's cache key)."""
    header = (loader.cuda_src_dir() / loader.HEADER).read_text()
    for fam in loader.families():
        src = loader.module_source(fam)
        assert header in src
        assert '#include "common.cuh"' not in src


def test_extern_c_kernels_finds_plain_and_macro_entries():
    src = (
        'extern "C" __global__ void plain_one(float* p) {}\n'
        'extern "C" __global__ __launch_bounds__(256) void bounded_two(float* p) {}\n'
        "GS_ENTRY_SOFTMAX(macro_three, float, 4)\n"
        "#define GS_ENTRY_SOFTMAX(name, S, NV) \\\n"
        '    extern "C" __global__ void __launch_bounds__(128) name(S* p) { f<S, NV>(p); }\n'
        'extern "C" __global__ void __launch_bounds__(64, 2) after_void(float* p) {}\n'
    )
    assert loader.extern_c_kernels(src) == ["after_void", "bounded_two", "macro_three", "plain_one"]


def test_static_shared_memory_is_read_and_held_under_the_planners_reserve():
    """ptxas's static shared memory per entry point is parsed, and more than the
    planners' STATIC_SMEM_MAX is a problem (the occupancy model would over-count)."""
    from gpu_softmax._cuda.plan import STATIC_SMEM_MAX

    log = (
        "ptxas info    : Compiling entry function 'small' for 'sm_90'\n"
        "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
        "ptxas info    : Used 10 registers, used 1 barriers, 1200 bytes smem\n"
        "ptxas info    : Compiling entry function 'big' for 'sm_90'\n"
        "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
        f"ptxas info    : Used 10 registers, used 1 barriers, {STATIC_SMEM_MAX + 16} bytes smem, 380 bytes cmem[0]\n"
        "ptxas info    : Compiling entry function 'none' for 'sm_90'\n"
        "ptxas info    : Used 8 registers, used 0 barriers\n"
    )
    got = cc.parse_ptxas_log(log, 90)
    assert [got[n].static_smem_bytes for n in ("small", "big", "none")] == [1200, STATIC_SMEM_MAX + 16, 0]
    rep = cc.FamilyReport("x", 90, 0.0, log, entries=got)
    assert [p for p in cc.problems(rep) if "static shared memory" in p] == [
        f"x.cu sm_90: big has {STATIC_SMEM_MAX + 16} B of static shared memory, above the planners' "
        f"STATIC_SMEM_MAX ({STATIC_SMEM_MAX} B)"]
