"""The kernel table: every compiled entry point of both op families, declared once.

From :data:`ENTRIES` come the `extern "C"` definitions the loader appends to each
family's .cu (:func:`generated_entries`), the launchers' argument packing
(``ENTRIES[name].sig``), the entry lists of the compile check and the CPU
emulator, and the emulator's ABI check. Caps on NV keep every variant free of
register spills under its launch bounds (tests/test_compile.py).
"""

from __future__ import annotations

from .abi import Entry, generated_source, signature

SUFFIX = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64"}
VEC = {"float16": 8, "bfloat16": 8, "float32": 4, "float64": 2}  # elements per 16-byte access
STORAGES = tuple(SUFFIX)
CUDA_STORAGE = {"float32": "gs::F32", "float64": "gs::F64", "float16": "gs::F16", "bfloat16": "gs::BF16"}


def _bind(storage: str, **more) -> tuple[tuple[str, str], ...]:
    s = CUDA_STORAGE[storage]
    return (("S", s), ("T", f"{s}::T"), ("A", f"{s}::A"), *((k, str(v)) for k, v in more.items()))


# ----------------------------------------------------------------------------------
# softmax family (cuda_src/softmax.cu)

# (storage, direction) -> kernel template -> NV values compiled (16-byte slots per
# thread held in registers), each under BOUNDS (at most 64 registers per thread).
VARIANTS: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
VARIANTS[("float32", "fwd")] = {"warp": (1, 2, 4, 8), "row": (2, 4, 8), "split": (2, 4), "stream": (4,)}
VARIANTS[("float64", "fwd")] = {"warp": (1, 2, 4), "row": (1, 2), "split": (2, 4), "stream": (4,)}
for _s in ("float32", "float64"):
    VARIANTS[(_s, "bwd")] = {"warp": (1, 2, 4), "row": (1, 2, 4), "split": (2, 4), "stream": (2,)}
    VARIANTS[(_s, "lse")] = {"warp": (2,), "block": (2,)}
for _s in ("float16", "bfloat16"):
    VARIANTS[(_s, "fwd")] = {"warp": (1, 2, 4), "row": (1, 2, 4), "split": (1, 2), "stream": (2,)}
    VARIANTS[(_s, "bwd")] = {"warp": (1, 2), "row": (1, 2), "split": (1, 2), "stream": (1,)}
    VARIANTS[(_s, "lse")] = {"warp": (1,), "block": (4,)}
VARIANTS[("bfloat16", "bwd")]["split"] = (1,)  # split2 spills for bfloat16 under 64 registers
VARIANTS[("float32", "bwd")]["split"] = (2,)  # split4 spills on sm_90 with the compensated float sum
del _s

# kernel template -> __launch_bounds__(max threads, min blocks per SM); the
# occupancy model reads the register cap from these.
BOUNDS: dict[str, tuple[int, int]] = {
    "warp": (128, 6),  # (128, 8) spills on sm_80
    "row": (1024, 1),
    "split": (512, 2),
    "stream": (512, 2),
    "block": (512, 2),  # logsumexp's block template
}

_SPLIT_FWD = "const T* x, T* y, long long rows, long long cols, int op, int k, long long chunk, A* part, " \
             "unsigned long long* cnt"
_SPLIT_BWD = "const T* gy, const T* y, T* gx, long long rows, long long cols, int op, int k, long long chunk, " \
             "double* part, unsigned long long* cnt"
SOFTMAX_SIGNATURES = {
    ("fwd", "warp"): signature("gs::fwd_warp<S, NV>", "const T* x, T* y, long long rows, long long cols, int op, "
                                                      "int width"),
    ("bwd", "warp"): signature("gs::bwd_warp<S, NV>", "const T* gy, const T* y, T* gx, long long rows, "
                                                      "long long cols, int op, int width"),
    # The row template indexes with int: the planner keeps its rows below 2**31 elements.
    ("fwd", "row"): signature("gs::fwd_row<S, NV>", "const T* x, T* y, long long rows, long long cols, int op, int ss",
                              "x, y, rows, (int)cols, op, ss"),
    ("bwd", "row"): signature("gs::bwd_row<S, NV>", "const T* gy, const T* y, T* gx, long long rows, long long cols, "
                                                    "int op, int ss", "gy, y, gx, rows, (int)cols, op, ss"),
    ("fwd", "split"): signature("gs::fwd_split<S, NV>", _SPLIT_FWD),
    ("bwd", "split"): signature("gs::bwd_split<S, NV>", _SPLIT_BWD),
    ("fwd", "stream"): signature("gs::fwd_stream<S, NV>", _SPLIT_FWD),
    ("bwd", "stream"): signature("gs::bwd_stream<S, NV>", _SPLIT_BWD),
    ("lse", "warp"): signature("gs::lse_warp<S, NV>", "const T* x, A* lse, long long rows, long long cols, int width"),
    ("lse", "block"): signature("gs::lse_block<S, NV>", "const T* x, A* lse, long long rows, long long cols, int k, "
                                                        "long long chunk, double* part, unsigned long long* cnt"),
}


def kernel_name(direction: str, regime: str, nv: int, storage: str) -> str:
    return f"gs_{direction}_{regime}{nv}_{SUFFIX[storage]}"


def softmax_variants():
    """(storage, direction, template, NV) of every compiled softmax-family kernel."""
    for (storage, direction), regimes in VARIANTS.items():
        for regime, nvs in regimes.items():
            for nv in nvs:
                yield storage, direction, regime, nv


def _softmax_entries():
    for storage, direction, template, nv in sorted(softmax_variants()):
        sig = SOFTMAX_SIGNATURES[(direction, template)]
        ws = None
        if "part" in sig.names:
            ws = "acc" if (direction == "fwd") else "float64"
        yield Entry("softmax", kernel_name(direction, template, nv, storage), sig, _bind(storage, NV=nv),
                    BOUNDS[template], ws)


# ----------------------------------------------------------------------------------
# cross-entropy family (cuda_src/cross_entropy.cu)

# storage -> regime -> compiled variants. warp: NV values (128-thread blocks);
# block: (NV, launch-bound threads) of the ce_block template (the planners' "row"
# regime); split: (NV, launch-bound threads), 2 resident
# blocks per SM (a block waiting for its row's partials overlaps with another's
# loads); stream: NV (512 threads).
# float64 stream: NV 2 (at NV 4 it spilled 8 B on sm_80 with NVRTC 13.5 once the reductions took one barrier).
CE_VARIANTS: dict[str, dict] = {
    "float32": {"warp": (1, 2, 4), "block": ((4, 1024), (8, 1024)), "split": (8, 512), "stream": 4},
    "float16": {"warp": (1, 2), "block": ((2, 1024), (4, 1024)), "split": (4, 384), "stream": 2},
    "bfloat16": {"warp": (1, 2), "block": ((2, 1024), (4, 1024)), "split": (4, 384), "stream": 2},
    "float64": {"warp": (1, 2, 4), "block": ((4, 512), (8, 512)), "split": (8, 256), "stream": 2},
}
CE_WARP_THREADS = 128
CE_STREAM_THREADS = 512
CE_SPLIT_MIN_BLOCKS = 2
CE_AUX_THREADS = 256  # prep, finish, scale and the vocabulary-parallel kernels
# Per-row record of one vocabulary shard (vp_stats writes it, vp_finish reads every
# rank's): the layout the kernels and gpu_softmax.vocab_parallel share.
RECORD_FIELDS = ("max", "sum_minus_1", "target_logit", "sum_weighted_gaps", "weight_sum")
RECORD_WIDTH = len(RECORD_FIELDS)
# vp_finish_f64 at NV 4 spilled 4 B on sm_90 (NVRTC 13.5): NV 2 holds it in 56 registers.
VP_NV = {"stats": {"float32": 2, "float16": 2, "bfloat16": 1, "float64": 4},
         "finish": {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 2}}

_CE_ARGS = ("const T* x, T* grad, const long long* tgt, const A* soft_t, const A* w, const A* coef, "
            "const A* g_rows, A* row_loss, A* row_lse, long long rows, long long cols, long long ignore, "
            "double eps, double z, double cap")
_CE_CALL = "x, grad, tgt, w, coef, g_rows, row_loss, row_lse, rows, cols, ignore, (A)eps, (A)z, (A)cap"
CE_SIGNATURES = {
    "warp": signature("gs::ce_warp<S, NV>", _CE_ARGS + ", int width", _CE_CALL + ", width"),
    "block": signature("gs::ce_block<S, NV>", _CE_ARGS, _CE_CALL),
    "stream": signature("gs::ce_stream<S, NV, SOFT>", _CE_ARGS,
                        "x, grad, tgt, soft_t, w, coef, g_rows, row_loss, row_lse, rows, cols, ignore, (A)eps, (A)z, "
                        "(A)cap"),
    "split": signature("gs::ce_split<S, NV>", _CE_ARGS + ", int k, long long chunk, A* part, unsigned long long* cnt",
                       _CE_CALL + ", k, chunk, part, cnt"),
    # The fast path: the option scalars stay in the list (one packing for both
    # variants) but are not passed; the partials are tagged 64-bit words.
    "split_lean": signature("gs::ce_split_lean<S, NV>", _CE_ARGS + ", int k, long long chunk, "
                                                        "unsigned long long* part, unsigned long long* cnt",
                            "x, grad, tgt, coef, g_rows, row_loss, row_lse, rows, cols, ignore, k, chunk, part, cnt"),
    "scale": signature("gs::ce_scale_grad<S>", "T* grad, long long n, long long cols, long long inner, "
                                               "const A* g_scalar, const A* g_rows"),
    "finish": signature("gs::ce_finish<S>", "const A* row_loss, T* out, long long rows, int reduce"),
    "prep": signature("gs::ce_prep<A>", "const long long* tgt, long long rows, long long cols, long long ignore, "
                                        "const A* w, A* w_scaled, int reduction, const A* g_ptr, double g_val, "
                                        "A* coef, "
                                        "unsigned long long* n_bad"),
    "vp_stats": signature("gs::vp_stats<S, NV>", "const T* x, const long long* tgt, const A* w, A* rec, long long rows, "
                                                 "long long cols, long long v0, long long ignore, double eps, double cap",
                          "x, tgt, w, rec, rows, cols, v0, ignore, (A)eps, (A)cap"),
    "vp_finish": signature("gs::vp_finish<S, NV>", "const T* x, T* grad, const long long* tgt, const A* w, "
                                                   "const A* coef, const A* g_rows, const A* recs, A* row_loss, "
                                                   "int nranks, long long rows, long long cols, long long v0, "
                                                   "long long vocab, long long ignore, double eps, double z, "
                                                   "double cap",
                           "x, grad, tgt, w, coef, g_rows, recs, row_loss, nranks, rows, cols, v0, vocab, ignore, "
                           "(A)eps, (A)z, (A)cap"),
}


def ce_warp_name(nv: int, storage: str) -> str:
    return f"gs_ce_warp{nv}_{SUFFIX[storage]}"


def ce_block_name(nv: int, storage: str) -> str:
    return f"gs_ce_block{nv}_{SUFFIX[storage]}"


def ce_split_name(storage: str) -> str:
    return f"gs_ce_split{CE_VARIANTS[storage]['split'][0]}_{SUFFIX[storage]}"


# Storages with the split fast path (hard labels, no weight / smoothing / z-loss /
# cap: a compile-time instantiation): the float accumulators.
CE_LEAN_STORAGES = ("float32", "float16", "bfloat16")


def ce_split_lean_name(storage: str) -> str:
    return f"gs_ce_split{CE_VARIANTS[storage]['split'][0]}_lean_{SUFFIX[storage]}"


def ce_stream_name(storage: str, soft: bool) -> str:
    return f"gs_ce_stream{CE_VARIANTS[storage]['stream']}_{'soft' if soft else 'hard'}_{SUFFIX[storage]}"


def ce_finish_name(storage: str) -> str:
    return f"gs_ce_finish_{SUFFIX[storage]}"


def ce_scale_name(storage: str) -> str:
    return f"gs_ce_scale_{SUFFIX[storage]}"


def ce_prep_name(storage: str) -> str:
    return "gs_ce_prep_f64" if storage == "float64" else "gs_ce_prep_f32"


def vp_stats_name(storage: str) -> str:
    return f"gs_vp_stats_{SUFFIX[storage]}"


def vp_finish_name(storage: str) -> str:
    return f"gs_vp_finish_{SUFFIX[storage]}"


def _ce_entries():
    aux = (CE_AUX_THREADS,)
    for st, v in CE_VARIANTS.items():
        for nv in v["warp"]:
            yield Entry("cross_entropy", ce_warp_name(nv, st), CE_SIGNATURES["warp"], _bind(st, NV=nv),
                        (CE_WARP_THREADS,))
        for nv, threads in v["block"]:
            yield Entry("cross_entropy", ce_block_name(nv, st), CE_SIGNATURES["block"], _bind(st, NV=nv), (threads,))
        for soft in (False, True):
            yield Entry("cross_entropy", ce_stream_name(st, soft), CE_SIGNATURES["stream"],
                        _bind(st, NV=v["stream"], SOFT="true" if soft else "false"), (CE_STREAM_THREADS,))
        nv, threads = v["split"]
        yield Entry("cross_entropy", ce_split_name(st), CE_SIGNATURES["split"], _bind(st, NV=nv),
                    (threads, CE_SPLIT_MIN_BLOCKS), "acc")
        if st in CE_LEAN_STORAGES:
            yield Entry("cross_entropy", ce_split_lean_name(st), CE_SIGNATURES["split_lean"], _bind(st, NV=nv),
                        (threads, CE_SPLIT_MIN_BLOCKS), "uint64")
        yield Entry("cross_entropy", ce_scale_name(st), CE_SIGNATURES["scale"], _bind(st), aux)
        yield Entry("cross_entropy", ce_finish_name(st), CE_SIGNATURES["finish"], _bind(st), aux)
    for acc, name in (("float", "gs_ce_prep_f32"), ("double", "gs_ce_prep_f64")):
        yield Entry("cross_entropy", name, CE_SIGNATURES["prep"], (("A", acc),), aux)
    for st in CE_VARIANTS:
        yield Entry("cross_entropy", vp_stats_name(st), CE_SIGNATURES["vp_stats"], _bind(st, NV=VP_NV["stats"][st]), aux)
        yield Entry("cross_entropy", vp_finish_name(st), CE_SIGNATURES["vp_finish"],
                    _bind(st, NV=VP_NV["finish"][st]), aux)


# ----------------------------------------------------------------------------------
# token log-prob family (cuda_src/token_logprobs.cu): one block per row; the block
# size is a function of the row length alone (batch invariance, _cuda/token_logprobs.py).

TLP_BOUNDS = (512, 2)
TLP_RECORD = 4  # per-row record: m, log_s, mean_sh, thr (cuda_src/token_logprobs.cu)
TLP_SIGNATURES = {
    "fwd": signature("gs::tlp_fwd<S, MASK>", "const T* x, const long long* tok, A* logp, A* ent, A* rec, "
                                             "long long rows, long long cols, long long ignore, double inv_t, "
                                             "double cap, long long top_k, double top_p"),
    "bwd": signature("gs::tlp_bwd<S>", "const T* x, T* grad, const long long* tok, const A* rec, const A* g_logp, "
                                       "const A* g_ent, long long rows, long long cols, long long ignore, "
                                       "double inv_t, double cap"),
}


def tlp_fwd_name(storage: str, masked: bool) -> str:
    return f"gs_tlp_fwd{'_masked' if masked else ''}_{SUFFIX[storage]}"


def tlp_bwd_name(storage: str) -> str:
    return f"gs_tlp_bwd_{SUFFIX[storage]}"


def _tlp_entries():
    for st in STORAGES:
        for masked in (False, True):
            yield Entry("token_logprobs", tlp_fwd_name(st, masked), TLP_SIGNATURES["fwd"],
                        _bind(st, MASK="true" if masked else "false"), TLP_BOUNDS)
        yield Entry("token_logprobs", tlp_bwd_name(st), TLP_SIGNATURES["bwd"], _bind(st), TLP_BOUNDS)


ENTRIES: dict[str, Entry] = {e.name: e for e in (*_softmax_entries(), *_ce_entries(), *_tlp_entries())}
FAMILIES = ("softmax", "cross_entropy", "token_logprobs")


def entry_points(family: str) -> tuple[str, ...]:
    return tuple(sorted(n for n, e in ENTRIES.items() if e.family == family))


def generated_entries(family: str) -> str:
    """The `extern "C"` definitions of `family`, appended to its .cu by the loader."""
    return generated_source((ENTRIES[n] for n in entry_points(family)), family)
