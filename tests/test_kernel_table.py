"""The kernel table (gpu_softmax/_cuda/kernels.py) and the ABI it fixes, on the CPU.

Every entry point's C definition and every launcher's argument tuple come from one
signature; the emulator checks each scalar passed against it (type and width) and
checks the compiled parameter list against the table.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpu_softmax._cuda import abi, kernels, loader

HARNESS_DIR = Path(__file__).resolve().parent / "emulator"


def test_no_hand_written_entry_point_is_left_in_the_sources():
    for family in kernels.FAMILIES:
        body = (loader.cuda_src_dir() / f"{family}.cu").read_text()
        assert not re.search(r"extern\s+\"C\"\s+__global__", body), family
        assert not re.search(r"^\s*GS_ENTRY\w*\(", body, re.MULTILINE), family


@pytest.mark.parametrize("family", kernels.FAMILIES)
def test_generated_definitions_carry_the_table_signature_and_bounds(family):
    src = loader.module_source(family)
    assert loader.extern_c_kernels(src) == list(kernels.entry_points(family))
    for name in kernels.entry_points(family):
        e = kernels.ENTRIES[name]
        m = re.search(rf'extern "C" __global__ void __launch_bounds__\(([\d, ]+)\) {name}\((.*?)\) {{', src)
        assert m, name
        assert tuple(int(v) for v in m.group(1).split(",")) == e.bounds
        got = [p.strip().rsplit(" ", 1) for p in m.group(2).split(",")]
        assert [n for _, n in got] == list(e.sig.names), name
        for (ctype, _), p in zip(got, e.sig.params):
            assert ctype.endswith("*") == p.pointer, (name, ctype, p)
            if not p.pointer:
                assert ctype == p.ctype, (name, ctype, p)


def test_rows_and_cols_are_64_bit_in_every_entry_point():
    for e in kernels.ENTRIES.values():
        for p in e.sig.params:
            if p.name in ("rows", "cols", "chunk", "n", "ignore", "vocab", "v0", "inner"):
                assert p.ctype == "long long", (e.name, p)


def test_packer_gives_each_scalar_its_declared_type():
    sig = kernels.ENTRIES["gs_fwd_row2_f32"].sig
    x, y = np.zeros(4, np.float32), np.zeros(4, np.float32)
    args = sig.pack(x=x, y=y, rows=3, cols=7, op=1, ss=0)
    assert [type(a) for a in args[2:]] == [np.int64, np.int64, np.int32, np.int32]
    abi.check_args(kernels.ENTRIES["gs_fwd_row2_f32"], args)
    with pytest.raises(TypeError):
        sig.pack(x=x, y=y, rows=3, cols=7, op=1)  # a missing parameter
    bound = sig.binder(rows=3, cols=7, op=1, ss=2)
    assert bound(x, y)[:2] == (x, y) and [type(a) for a in bound(x, y)[2:]] == [np.int64, np.int64, np.int32,
                                                                                 np.int32]


def test_abi_check_rejects_a_wrong_width():
    e = kernels.ENTRIES["gs_fwd_split2_f32"]
    x = np.zeros(8, np.float32)
    good = e.sig.pack(x=x, y=x, rows=1, cols=8, op=0, k=2, chunk=4, part=x, cnt=np.zeros(2, np.uint64))
    abi.check_args(e, good)
    bad = list(good)
    bad[3] = np.int32(8)  # cols is long long
    with pytest.raises(TypeError, match="long long cols needs numpy.int64"):
        abi.check_args(e, tuple(bad))
    bad = list(good)
    bad[5] = 2  # a Python int is not an int32
    with pytest.raises(TypeError, match="int k"):
        abi.check_args(e, tuple(bad))
    with pytest.raises(TypeError, match="pointer"):
        abi.check_args(e, (np.int64(5),) + good[1:])
    with pytest.raises(TypeError, match="arguments for"):
        abi.check_args(e, good[:-1])


def test_cdiv_and_round_up():
    assert [abi.cdiv(a, 4) for a in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
    assert [abi.round_up(a, 4) for a in (0, 1, 4, 5)] == [0, 4, 4, 8]


@pytest.mark.slow
def test_emulator_rejects_a_wrong_width_and_a_wrong_compiled_signature(emulator_build_dir):
    """Through the emulator: a launch with np.int32 for a `long long` fails before it
    runs; the right types run; a table that disagreed with the compiled parameter
    list would fail in C (the kind codes)."""
    script = textwrap.dedent(f"""
        import sys, ctypes
        from pathlib import Path
        import numpy as np
        sys.path.insert(0, {str(HARNESS_DIR)!r})
        import harness
        cp, SM, emu = harness.setup("softmax", Path({str(emulator_build_dir)!r}))
        e = harness.kernels.ENTRIES["gs_fwd_warp1_f32"]
        x = np.arange(8, dtype=np.float32).view(harness.ndarray).reshape(2, 4)
        y = np.zeros((2, 4), np.float32).view(harness.ndarray)
        emu.launch(e.name, 1, 128, e.sig.pack(x=x, y=y, rows=2, cols=4, op=0, width=1))
        assert np.isfinite(y).all() and abs(y.sum() - 2) < 1e-5, y
        try:
            emu.launch(e.name, 1, 128, (x, y, np.int64(2), np.int32(4), np.int32(0), np.int32(1)))
        except TypeError as exc:
            assert "long long cols" in str(exc), exc
        else:
            raise SystemExit("a np.int32 for long long cols was launched")
        arr = (ctypes.c_ulonglong * harness.MAX_ARGS)()
        rc = emu.lib.emu_launch(e.name.encode(), 1, 128, arr, ctypes.c_uint(0), ctypes.c_int(0), b"ppqiii")
        assert rc == 6, rc
        print("ABI OK")
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0 and "ABI OK" in p.stdout, (p.stdout + p.stderr)[-6000:]


@pytest.mark.slow
def test_emulated_split_wait_is_bounded_and_traps(emulator_build_dir):
    """A split row whose blocks are not all resident (what a cooperative grid larger
    than the GPU holds amounts to): the emulator runs a plain launch's blocks a few at
    a time, as a GPU may, so the first blocks of a 256-block group wait for blocks
    that never start. The real group_publish_wait gives up after its spin bound and
    traps, reported as a clear launch error instead of a hang. The emulated
    %globaltimer is sped up so the bound (about a second) passes in about a millisecond."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import numpy as np
        sys.path.insert(0, {str(HARNESS_DIR)!r})
        import harness
        cp, SM, emu = harness.setup("softmax", Path({str(emulator_build_dir)!r}))
        e = harness.kernels.ENTRIES["gs_fwd_split2_f32"]

        def run(k, chunk, cooperative):
            x = np.ones((1, chunk * k), np.float32).view(harness.ndarray)
            y = np.zeros_like(x)
            part = np.zeros(4 * k, np.float32).view(harness.ndarray)
            cnt = np.zeros(2, np.uint64).view(harness.ndarray)
            args = e.sig.pack(x=x, y=y, rows=1, cols=chunk * k, op=0, k=k, chunk=chunk, part=part, cnt=cnt)
            emu.launch(e.name, k, 64, args, cooperative=cooperative)
            return np.asarray(y), np.asarray(cnt)

        y, cnt = run(2, 512, True)  # a co-resident group: runs, counters left at zero
        assert abs(float(y.sum()) - 1.0) < 1e-4 and not cnt.any()
        emu.set_timer_scale(1e3)
        t0 = time.time()
        try:
            run(256, 8, False)
        except RuntimeError as exc:
            assert "trapped" in str(exc), exc
        else:
            raise SystemExit("a split row missing blocks did not trap")
        assert time.time() - t0 < 8, time.time() - t0  # before the emulator's own 10 s spin timeout
        print("SPIN BOUND OK")
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0 and "SPIN BOUND OK" in p.stdout, (p.stdout + p.stderr)[-6000:]


def test_lower_layers_do_not_import_higher_ones():
    """loader takes its entries from the table (not the launch modules), the CE
    launcher takes the record layout from the table (not gpu_softmax.vocab_parallel),
    info reports on torch without importing the bridge."""
    script = textwrap.dedent("""
        import sys
        from gpu_softmax._cuda import info, loader
        for fam in loader.families():
            loader.module_source(fam)
        assert "gpu_softmax._cuda.softmax" not in sys.modules and "gpu_softmax._cuda.cross_entropy" not in sys.modules
        info.torch_bridge_status()
        assert "gpu_softmax.torch" not in sys.modules
        before = set(sys.modules)
        import gpu_softmax._cuda.cross_entropy as ce
        assert "gpu_softmax.vocab_parallel" not in set(sys.modules) - before
        import gpu_softmax.vocab_parallel as vp
        from gpu_softmax._cuda import kernels
        assert ce.FAMILY == "cross_entropy"
        assert vp.RECORD_WIDTH == kernels.RECORD_WIDTH == len(vp.RECORD_FIELDS)
        print("LAYERS OK")
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       cwd=str(Path(__file__).resolve().parent.parent))
    assert p.returncode == 0 and "LAYERS OK" in p.stdout, (p.stdout + p.stderr)[-4000:]


def test_every_cuda_module_is_at_most_500_lines():
    for path in sorted((Path(__file__).resolve().parent.parent / "gpu_softmax" / "_cuda").glob("*.py")):
        assert len(path.read_text().splitlines()) <= 500, path.name
