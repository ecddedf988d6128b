"""benchmarks/sass_budget.py: the SASS walk checked against a count done by hand, and the
issue-20 budgets on the goal cases (static predictions from sm_90 SASS, not GPU measurements).

Needs NVRTC 13 and nvdisasm 13 (the `test` extra installs both); skipped, with the reason, only
when they cannot be found."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import sass_budget as sb  # noqa: E402
import sass_walk as sw  # noqa: E402

try:
    sb.nvrtc_library()
    sb.nvdisasm_binary()
except sb.ToolMissing as exc:  # pragma: no cover - CI installs the test extra
    pytest.skip(str(exc), allow_module_level=True)

# A grid-stride sum kept rolled (`#pragma unroll 1`) so that its SASS can be counted by hand.
PROBE = r'''
extern "C" __global__ void gs_probe_sum(const float* x, float* y, int n) {
    float acc = 0.0f;
#pragma unroll 1
    for (int j = threadIdx.x; j < n; j += blockDim.x) acc += x[j];
    if (acc > 1.0f) acc = 1.0f;
    y[threadIdx.x] = acc;
}
'''

# The probe's SASS (sm_90, NVRTC 13.5, the loader's options), counted by hand:
#   0x000-0x090  10 instructions before the loop: LDC, S2R, LDC.64, ULDC, ULDC.64, BSSY, HFMA2.MMA (acc = 0),
#                ISETP.GE (j < n?), IMAD.WIDE (&y[tid]), @P0 BRA (skip the loop when tid >= n)
#   0x0a0-0x0c0   3 loop set-up: LDC (blockDim.x), MOV (acc = 0), LDC.64 (x)
#   0x0d0-0x120   6 per trip: IMAD.WIDE, LDG.E, IADD3 (j += blockDim.x), ISETP.GE, FADD, @!P0 BRA (back)
#   0x130-0x160   4 after it: BSYNC, FMNMX.NAN (the clamp), STG.E, EXIT
# So a thread with t >= 1 trips issues 17 + 6 t instructions and one with none 14. ALU-pipe ones
# (the model's list): ISETP + MOV + FMNMX = 3, plus IADD3 + ISETP = 2 per trip.
PRE, SETUP, BODY, POST = 10, 3, 6, 4


def _probe_walk(tid: int, n: int, block: int = 32) -> sw.Walk:
    sass, _ = sb.compile_sass(PROBE, "probe.cu", list(sb.adapter("options")))
    fn = sw.parse_sass(sass)["gs_probe_sum"]
    launch = sb.Launch("probe", "gs_probe_sum", 1, block, [("ptr", 1 << 40), ("ptr", 2 << 40), ("i32", n)])
    return sw.Thread(fn, sb.const_bank(launch), {"SR_TID.X": tid, "SR_CTAID.X": 0}).run()


@pytest.mark.parametrize("tid, n, trips", [(5, 100, 3), (0, 32, 1), (31, 1000, 31)])
def test_walk_matches_hand_count(tid, n, trips):
    w = _probe_walk(tid, n)
    assert w.total == PRE + SETUP + BODY * trips + POST
    alu = sum(c for op, c in w.issued.items() if op.split(".")[0] in sb.ALU_OPS)
    assert alu == 3 + 2 * trips
    assert w.issued["LDG.E"] == trips and w.issued["STG.E"] == 1
    assert not w.guessed  # every branch of the probe is decided by its arguments


def test_walk_skips_the_loop_when_the_thread_has_no_element():
    w = _probe_walk(tid=7, n=5)
    assert w.total == PRE + POST
    assert w.issued["LDG.E"] == 0


@pytest.mark.parametrize("issued, per_slot", [({"STG.E.128": 2}, 1.0), ({"STG.E": 8}, 4.0),
                                               ({"STG.E.64": 2, "STG.E.128": 1}, 1.5), ({"STG.E.U16": 8}, 8.0)])
def test_stores_per_slot_counts_the_bytes_each_store_writes(issued, per_slot):
    """Store instructions per 16 bytes the walked thread writes, from each store's width: padding in the
    plan (threads with less to store than the walked one) cannot move it, scalar stores raise it."""
    case = {"op": "softmax", "dtype": "float32", "rows": 1, "cols": 8}
    w = sw.Walk()
    w.issued.update(issued)
    assert sb.per_element(case, sb.Launch("softmax", "k", 1, 1, []), w)["stores_per_slot"] == per_slot


def test_model_arithmetic():
    """Made-up walk of a thread that stands for 4 float32 elements (one 16-byte slot): 256 instructions,
    128 of them ALU, 16 XU, one STG.E.128, i.e. 64 / 32 / 4 per element; issue-bound at 64 / 128 SM
    clocks per element against 8 B / 4.25 TB/s."""
    case = {"op": "softmax", "dtype": "float32", "rows": 1, "cols": 128}
    w = sw.Walk()
    w.issued.update({"FSETP.GT.AND": 128, "MUFU.EX2": 16, "STG.E.128": 1, "FFMA": 256 - 128 - 16 - 1})
    row = sb.per_element(case, sb.Launch("softmax", "k", 1, 32, []), w)
    assert row["instr_per_elem"] == 64 and row["alu_per_elem"] == 32 and row["xu_per_elem"] == 4
    expect = (64 / 128 / (132 * 1.75e9)) / (8 / 4.25e12)
    assert row["compute_over_memory"] == pytest.approx(expect, abs=1e-3)
    assert row["stores_per_slot"] == 1.0


# ----------------------------------------------------------------------------------
# the budgets (issue 20, "What to build" 2) on the goal cases

BUDGET = {("softmax", 4): 16, ("log_softmax", 4): 16, ("softmax", 2): 12, ("log_softmax", 2): 12,
          ("softmax_backward", 4): 24, ("cross_entropy_fwd_bwd", 4): 20, ("cross_entropy_fwd_bwd", 2): 16,
          # not an issue-20 goal case: exp(y) as a float pair (about 20 instructions, for
          # accuracy: docs/softmax_kernels.md), its FMAs, the compensated sum and the
          # fallback's checks; held here so that it stays float (no FP64) and under 0.6.
          ("log_softmax_backward", 4): 50,
          # one read, so the per-element work is the float pass's FMNMX + FFMA + EX2 + FADD, the
          # loads and unpacking, and the row's reductions over few elements a thread (64)
          ("logsumexp", 4): 12, ("logsumexp", 2): 12}

# Cases whose budget is not met on today's kernels: strict, so that each flips to a failure
# (and this list must shrink) when the kernel is made lean.
NOT_LEAN_YET: set[tuple[str, str, int, int]] = set()


def _key(c):
    return (c["op"], c["dtype"], c["rows"], c["cols"])


@pytest.fixture(scope="module")
def budget_rows():
    return {_key(r): r for r in sb.run()}


def test_every_case_reported_with_the_issue_fields(budget_rows, tmp_path):
    assert set(budget_rows) == {_key(c) for c in sb.CASES}
    assert sb.main(["--json", str(tmp_path / "b.json")]) == 0
    cases = json.loads((tmp_path / "b.json").read_text())["cases"]
    fields = {"op", "dtype", "rows", "cols", "kernel", "instr_per_elem", "alu_per_elem", "xu_per_elem",
              "f64_per_elem", "compute_over_memory"}
    assert all(fields <= set(c) for c in cases) and len(cases) == len(sb.CASES)
    for c in cases:
        assert c["instr_per_elem"] > 1, c  # every case walked its rows, not just an early exit


@pytest.mark.parametrize("case", [
    pytest.param(c, id=f"{c['op']}-{c['dtype']}-{c['rows']}x{c['cols']}",
                 marks=[pytest.mark.xfail(strict=True, reason="issue 20: kernels not lean yet")]
                 if _key(c) in NOT_LEAN_YET else [])
    for c in sb.CASES])
def test_budget(case, budget_rows):
    r = budget_rows[_key(case)]
    limit = BUDGET.get((case["op"], sb.ITEMSIZE[case["dtype"]]))
    problems = []
    if limit is not None and r["instr_per_elem"] > limit:
        problems.append(f"{r['instr_per_elem']} instr/elem > {limit}")
    if r["f64_per_elem"] > 0.01:  # a per-row double (a row's loss) amortises below 0.01 per element
        problems.append(f"{r['f64_per_elem']} FP64 instr/elem in a {case['dtype']} kernel")
    if r["compute_over_memory"] > 0.6:
        problems.append(f"compute/memory {r['compute_over_memory']} > 0.6")
    if r["stores_per_slot"] > 1.05:  # per-row scalars (a row's loss) add a little
        problems.append(f"{r['stores_per_slot']} store instructions per 16-byte slot")
    assert not problems, f"{r['kernel']}: " + "; ".join(problems)
