"""The token log-prob launcher's plan and table, without a GPU.

Batch invariance rests on the plan being a function of the row length and storage
alone: checked here on the planner's inputs; tests/emulator/run_token_logprobs.py
checks the results bitwise.
"""

from __future__ import annotations

import inspect
import re

import pytest

from gpu_softmax._cuda import kernels, loader
from gpu_softmax._cuda import token_logprobs as tl


def test_plan_takes_no_row_count():
    params = list(inspect.signature(tl.plan_for.__wrapped__).parameters)
    assert params == ["cols", "storage", "direction", "masked"]


@pytest.mark.parametrize("storage", kernels.STORAGES)
def test_block_size_is_a_power_of_two_within_the_launch_bounds(storage):
    seen = set()
    for cols in (1, 2, 31, 33, 1000, 1025, 4096, 50257, 128 * 1024, 256 * 1024 + 7):
        b = tl.block_threads(cols, storage)
        assert 32 <= b <= kernels.TLP_BOUNDS[0] and b & (b - 1) == 0
        seen.add(b)
        slots = -(-cols // kernels.VEC[storage])
        # enough threads that no thread holds many more slots than aimed at, up to the cap
        assert b == kernels.TLP_BOUNDS[0] or slots <= b * tl.SLOTS_PER_THREAD
    assert min(seen) == 32 and max(seen) == kernels.TLP_BOUNDS[0]


def test_plans_name_declared_entry_points():
    for storage in kernels.STORAGES:
        for masked in (False, True):
            assert tl.plan_for(100, storage, "fwd", masked).kernel in tl.ENTRY_POINTS
        assert tl.plan_for(100, storage, "bwd").kernel in tl.ENTRY_POINTS
    assert tl.plan_for(100, "float32", "fwd", True).kernel == "gs_tlp_fwd_masked_f32"


def test_record_width_agrees_with_the_kernel_source():
    torch_rl = pytest.importorskip("gpu_softmax.torch.rl")
    src = (loader.cuda_src_dir() / "token_logprobs.cu").read_text()
    m = re.search(r"constexpr int TLP_RECORD = (\d+);", src)
    assert m and int(m.group(1)) == kernels.TLP_RECORD == torch_rl.RECORD_WIDTH
