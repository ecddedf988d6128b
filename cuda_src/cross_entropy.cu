// Fused softmax cross-entropy: per row, the loss and (optionally) the gradient
// d(loss * grad_output)/d logits in one kernel, over rows of `cols` contiguous
// logits (the launcher moves any other class axis last first).
//
// Per row, with xc the (optionally soft-capped) logits, (m, s) their max and
// exp-sum, lse = m + log s and p = exp(xc - m) / s:
//   hard labels:  q_c = (1-eps) w_t [c == t] + (eps/C) w_c     (0 for an ignored row)
//   soft labels:  q_c = w_c (t_c (1-eps) + eps/C)
//   ce   = sum_c q_c (lse - xc_c) = sum_c q_c ((m - xc_c) + l),  l = log s
//   grad = (p * sum(q) - q) * gce + 2 z lse p * gzl            (times 1 - (xc/cap)^2 with a cap)
// which is the seed's y * sum(t) - t with the weighted, smoothed target q.
// For hard labels sum(q) = (1-eps) w_t + (eps/C) W, W = sum_c w_c; the only
// per-row sums besides (m, s) are the "gaps" sum_c w_c (m - xc_c) (smoothing) or
// sum_c q_c (m - xc_c) (soft labels) and, for soft labels, sum_c q_c. The loss is
// built from those non-negative pieces, never as lse * W - sum_c w_c xc_c: that
// overflows (1e36 * C) or cancels (rows offset by 1e5) where the loss is modest.
//
// Regimes (table in gpu_softmax/_cuda/cross_entropy.py):
//   warp   - short rows held in registers by `width` lanes; one read, one write.
//   block  - a block per row, the row held in registers; one read, one write.
//   split  - longer rows (hard labels): k co-resident blocks per row, each
//            holding a chunk in registers; one exchange of (max, sum) through
//            global memory; one read, one write.
//   stream - rows the co-resident blocks cannot hold, and soft labels: an online
//            (max, sum) read, then a second read that writes the gradient (no
//            second read when only the loss is wanted).
// Soft labels always take the stream kernel (its target is read alongside).
//
// Loss scaling and the gradient's scale come from `coef`, computed on the
// device by gs_ce_prep_* from the targets and weights (mean's divisor: sum of
// w[t] over non-ignored rows), so no host synchronisation is needed:
//   coef[0], coef[1]: multipliers of ce and z-loss in the per-row loss
//   coef[2], coef[3]: multipliers of ce and z-loss in the gradient (grad_output folded in)
//   coef[4]: W = sum of the class weights (C without weights)
// The per-row losses are summed afterwards by a fixed-order reduction: no float
// atomics, so the same inputs give the same bits.
#include "common.cuh"

namespace gs {

enum { CE_OK = 0, CE_IGNORED = 1, CE_BAD = 2 };

template <class A>
__device__ __forceinline__ A acc_tanh(A v);
template <>
__device__ __forceinline__ float acc_tanh<float>(float v) { return tanhf(v); }
template <>
__device__ __forceinline__ double acc_tanh<double>(double v) { return tanh(v); }

// Soft cap of a logit; elements outside the row stay -inf (padding must not
// become -cap and join the max or the sums).
template <class A>
__device__ __forceinline__ A capped(A v, A cap, bool in_row) {
    if (!in_row) return -inf_of(A(0));
    return cap > A(0) ? cap * acc_tanh(v / cap) : v;
}

struct CeRow {
    long long t;  // target class (hard labels)
    int status;   // CE_OK / CE_IGNORED / CE_BAD
};

__device__ __forceinline__ CeRow ce_target(const long long* tgt, long long row, long long cols, long long ignore) {
    CeRow r;
    r.t = tgt ? tgt[row] : 0;
    if (!tgt) {
        r.status = CE_OK;
    } else if (r.t == ignore) {
        r.status = CE_IGNORED;
    } else if (r.t < 0 || r.t >= cols) {
        r.status = CE_BAD;  // validate=False: NaN loss, never an out-of-bounds read
    } else {
        r.status = CE_OK;
    }
    return r;
}

template <class A>
__device__ __forceinline__ A weight_at(const A* w, long long c) {
    return w ? w[c] : A(1);
}

// Per-row scalars every thread of the group needs for the gradient.
template <class A>
struct CeScale {
    A m, l, inv_s, lse, qsum, tw, gce, gzl2, eps_c, cap;  // lse = m + l, l = log(sum exp(x - m))
};

// Gaps m - x >= 0 of the smoothing / soft-label term, and their weighted sum kept
// against a running max (see the header). Equal arguments give 0, so two -inf (or
// two +inf) make no NaN; a -inf logit with a positive weight gives +inf, as it must.
template <class A>
__device__ __forceinline__ A gap(A m, A x) {
    return m == x ? A(0) : m - x;
}

// w * gap(m, x), 0 at the max whatever w: an infinite weight or probability there
// adds nothing (l * sum(w) carries it to +inf, as torch's -w * log p), not 0 * inf.
template <class A>
__device__ __forceinline__ A weighted_gap(A w, A m, A x) {
    return m == x ? A(0) : w * (m - x);
}

// A sum of weighted gaps against `from` moved to the larger max `to`.
template <class A>
__device__ __forceinline__ A gap_shift(A from, A to, A wsum) {
    return (wsum == A(0) || from == to) ? A(0) : (to - from) * wsum;
}

// The loss of one row from its statistics, written by one thread.
template <class A>
__device__ __forceinline__ void ce_write_loss(A* row_loss, A* row_lse, long long row, CeRow tr, const CeScale<A>& k,
                                              A xt, A wt, A s_gap, A s_q, bool soft, A eps, A z, A inv_cols,
                                              const A* coef) {
    A ce, zl = A(0);
    if (tr.status == CE_IGNORED) {
        ce = A(0);
    } else if (tr.status == CE_BAD) {
        ce = nan_of(A(0));
    } else {
        if (soft) {
            ce = s_gap + k.l * s_q;
        } else {
            // (m - x_t) + l, not lse - x_t: when the target holds the max the loss
            // is l alone, and forming m + l first would round away its low digits.
            ce = wt * ((k.m - xt) + k.l);
            if (eps > A(0)) ce = (A(1) - eps) * ce + eps * inv_cols * (s_gap + k.l * coef[4]);
        }
        if (z > A(0)) zl = z * k.lse * k.lse;
    }
    row_loss[row] = ce * coef[0] + zl * coef[1];
    if (row_lse) row_lse[row] = k.lse;
}

template <class A>
__device__ __forceinline__ CeScale<A> ce_scale(MaxSum<A> r, CeRow tr, A wt, A s_q, bool soft, A eps, A z, A inv_cols,
                                               A cap, const A* coef, const A* g_rows, long long row) {
    CeScale<A> k;
    const bool inf_m = is_inf(r.m);
    k.m = r.m;
    // The stored r is sum - 1 (see common.cuh): log1p keeps lse accurate when
    // one logit dominates the row.
    k.inv_s = inf_m ? nan_of(r.m) : A(1) / (A(1) + r.r);
    k.l = inf_m ? nan_of(r.m) : acc_log1p(r.r);
    k.lse = r.m + k.l;
    const A gr = g_rows ? g_rows[row] : A(1);
    k.gce = coef[2] * gr;
    k.gzl2 = A(2) * z * k.lse * coef[3] * gr;
    k.tw = (A(1) - eps) * wt;
    k.eps_c = eps * inv_cols;
    k.qsum = soft ? s_q : k.tw + (eps > A(0) ? k.eps_c * coef[4] : A(0));
    k.cap = cap;
    (void)tr;
    return k;
}

// Gradient of one element c with capped logit v and (for soft labels) q_c.
template <class A>
__device__ __forceinline__ A ce_grad(const CeScale<A>& k, A v, long long c, long long t, A wc, A qc, bool soft,
                                     bool z_on) {
    const A p = fast_exp(v - k.m) * k.inv_s;
    A q;
    if (soft) {
        q = qc;
    } else {
        q = (c == t ? k.tw : A(0)) + k.eps_c * wc;
    }
    A g = (p * k.qsum - q) * k.gce;
    if (z_on) g += k.gzl2 * p;
    if (k.cap > A(0)) {
        const A th = v / k.cap;
        g *= A(1) - th * th;
    }
    return g;
}

// What every regime stores at class c: 0 in an ignored row, NaN in a row whose
// target is out of range (validate=False: a NaN loss and gradient, never an
// out-of-bounds read), the gradient otherwise. Two forms of that one rule, which
// differ only in who reads the class weight; each is the one its callers compile
// without spills at the register caps (sm_80 and sm_90, tests/test_compile.py).
// This form reads w[c] itself, after the status test and only when `smooth_w`
// (hard labels with smoothing): the held regimes (warp, block, split) have no
// register to spare for a weight loaded ahead of the test.
template <class A>
__device__ __forceinline__ A ce_grad_at(const CeScale<A>& k, CeRow tr, A v, long long c, const A* w, bool smooth_w,
                                        A qc, bool soft, bool z_on) {
    if (tr.status == CE_IGNORED) return A(0);
    if (tr.status == CE_BAD) return nan_of(A(0));
    return ce_grad(k, v, c, tr.t, smooth_w ? weight_at(w, c) : A(0), qc, soft, z_on);
}
// This form takes the weight wc as read by the caller (the stream row helper, for
// every element of a row it walks).
template <class A>
__device__ __forceinline__ A ce_grad_at(const CeScale<A>& k, CeRow tr, A v, long long c, A wc, A qc, bool soft,
                                        bool z_on) {
    if (tr.status == CE_OK) return ce_grad(k, v, c, tr.t, wc, qc, soft, z_on);
    return tr.status == CE_IGNORED ? A(0) : nan_of(A(0));
}

// ---------------------------------------------------------------------------
// held regimes (warp and block): the row is one tile, kept in registers between
// the statistics and the gradient write. Group reductions are either over
// `width` lanes (WARP) or over the block.

template <class A, bool WARP>
struct Group {
    int width;
    BlockReduce<A> block;  // unused when WARP
    __device__ __forceinline__ MaxSum<A> merge(MaxSum<A> v) { return WARP ? warp_merge(v, width) : block.merge(v); }
    __device__ __forceinline__ A sum(A v) { return WARP ? warp_sum(v, width) : block.sum(v); }
};

template <class S, int NV, bool WARP>
__device__ __forceinline__ void ce_held_row(const typename S::T* x, typename S::T* grad, const long long* tgt,
                                            const typename S::A* w, const typename S::A* coef,
                                            const typename S::A* g_rows, typename S::A* row_loss,
                                            typename S::A* row_lse, long long row, bool row_valid, long long cols,
                                            long long ignore, typename S::A eps, typename S::A z,
                                            typename S::A cap, int lane, Group<typename S::A, WARP>& grp) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    const int width = WARP ? grp.width : (int)blockDim.x;
    const int n = row_valid ? (int)cols : 0;  // the table keeps held rows short
    const long long off = (row_valid ? row : 0) * cols;
    const typename S::T* xr = x + off;
    const int mis = misalign<S>(xr);
    const A inv_cols = A(1) / A(cols);
    const CeRow tr = row_valid ? ce_target(tgt, row, cols, ignore) : CeRow{0, CE_IGNORED};
    const A wt = tr.status == CE_OK ? weight_at(w, tr.t) : A(0);
    // The target logit is read before any thread of the group can write the
    // gradient (the reductions below order them), so in-place is safe.
    A xt = A(0);
    if (lane == 0 && tr.status == CE_OK) xt = capped(S::to_acc(xr[tr.t]), cap, true);
    if (WARP) __syncwarp();  // orders that read before other lanes' in-place writes

    A v[EPT];
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int e0 = slot_start<S>(0, j, lane, width, mis);
        load_slot<S>(xr, e0, n, true, v + j * VEC, A(0));
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[j * VEC + i] = capped(v[j * VEC + i], cap, e0 + i >= 0 && e0 + i < n);
    }
    const MaxSum<A> t = values_stats<false, A, A, EPT>(v);
    const MaxSum<A> r = grp.merge(t);
    A s_gap = A(0);
    if (eps > A(0)) {  // the row is in registers: gaps against the row max directly
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int e0 = slot_start<S>(0, j, lane, width, mis);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const int e = e0 + i;
                if (e >= 0 && e < n) s_gap += weighted_gap(weight_at(w, e), r.m, v[j * VEC + i]);
            }
        }
        s_gap = grp.sum(s_gap);
    }
    const CeScale<A> k = ce_scale(r, tr, wt, A(0), false, eps, z, inv_cols, cap, coef, g_rows, row);
    if (row_valid && lane == 0)
        ce_write_loss(row_loss, row_lse, row, tr, k, xt, wt, s_gap, A(0), false, eps, z, inv_cols, coef);
    if (!grad) return;
    typename S::T* gr = grad + off;
    const bool vec_out = misalign<S>(gr) == mis;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int e0 = slot_start<S>(0, j, lane, width, mis);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const int e = e0 + i;
            v[j * VEC + i] = ce_grad_at(k, tr, v[j * VEC + i], (long long)e, w, eps > A(0) && e >= 0 && e < n, A(0),
                                        false, z > A(0));
        }
        store_slot<S>(gr, e0, n, vec_out, v + j * VEC);
    }
}

template <class S, int NV>
__device__ __forceinline__ void ce_warp(const typename S::T* x, typename S::T* grad, const long long* tgt,
                                        const typename S::A* w, const typename S::A* coef,
                                        const typename S::A* g_rows, typename S::A* row_loss, typename S::A* row_lse,
                                        long long rows, long long cols, long long ignore, typename S::A eps,
                                        typename S::A z, typename S::A cap, int width) {
    typedef typename S::A A;
    Group<A, true> grp{width, {nullptr, nullptr, 0}};
    const int lane = threadIdx.x & (width - 1);
    const int rpb = blockDim.x / width;
    const long long nrb = (rows + rpb - 1) / rpb;
    for (long long rb = blockIdx.x; rb < nrb; rb += gridDim.x) {
        const long long row = rb * rpb + threadIdx.x / width;
        ce_held_row<S, NV, true>(x, grad, tgt, w, coef, g_rows, row_loss, row_lse, row, row < rows, cols, ignore, eps,
                                 z, cap, lane, grp);
    }
}

template <class S, int NV>
__device__ __forceinline__ void ce_block(const typename S::T* x, typename S::T* grad, const long long* tgt,
                                         const typename S::A* w, const typename S::A* coef,
                                         const typename S::A* g_rows, typename S::A* row_loss, typename S::A* row_lse,
                                         long long rows, long long cols, long long ignore, typename S::A eps,
                                         typename S::A z, typename S::A cap) {
    typedef typename S::A A;
    __shared__ MaxSum<A> merge_slots[64];
    __shared__ A sum_slots[64];
    Group<A, false> grp{0, {merge_slots, sum_slots, 0}};
    for (long long row = blockIdx.x; row < rows; row += gridDim.x)
        ce_held_row<S, NV, false>(x, grad, tgt, w, coef, g_rows, row_loss, row_lse, row, true, cols, ignore, eps, z,
                                  cap, (int)threadIdx.x, grp);
}

// ---------------------------------------------------------------------------
// stream regime: a block per row, tiles of blockDim.x * NV * VEC elements, read
// once for the statistics and once more for the gradient. Every element is
// re-read and written by the thread that first read it, so in-place is safe.
// SOFT: q_c comes from a target row of accumulation-type probabilities.
//
// The two passes are row helpers over a range of `n` classes starting at class
// `v0` of the full row: the whole row in the fused kernel (v0 = 0), one rank's
// vocabulary shard in the vocabulary-parallel kernels below, which is how every
// option (weights, smoothing, z-loss, soft cap) means the same in both.

// One thread's share of a row's statistics before the block reduction.
template <class A>
struct CeStreamPart {
    MaxSum<A> ms;  // (max, sum - 1) of the capped logits
    A s_gap;       // sum_c q_c (ms.m - xc_c), against this thread's running max
    A s_q;         // sum_c q_c (q_c = w_c for hard labels)
};

// First pass. Gaps (and their weights' sum) are taken only when `gaps` (soft labels
// or smoothing); tr_soft is the range's own soft-target row (SOFT only).
template <class S, int NV, bool SOFT>
__device__ __forceinline__ CeStreamPart<typename S::A> ce_stream_stats(const typename S::T* xr,
                                                                       const typename S::A* tr_soft,
                                                                       const typename S::A* w, long long n,
                                                                       long long v0, int mis, typename S::A eps,
                                                                       typename S::A inv_cols, typename S::A cap,
                                                                       bool gaps) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    const long long tile = (long long)blockDim.x * EPT;
    CeStreamPart<A> t{empty_maxsum<A>(), A(0), A(0)};
    for (long long base = 0; base < n + mis; base += tile) {
        A v[EPT];
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const long long e0 = slot_start<S>(base, j, threadIdx.x, blockDim.x, mis);
            load_slot<S>(xr, e0, n, true, v + j * VEC, A(0));
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const long long e = e0 + i;
                v[j * VEC + i] = capped(v[j * VEC + i], cap, e >= 0 && e < n);
            }
        }
        const MaxSum<A> ts = values_stats<false, A, A, EPT>(v);
        if (gaps) {
            const A mn = nan_max(t.ms.m, ts.m);  // t.ms.m after the merge below
            t.s_gap += gap_shift(t.ms.m, mn, t.s_q);
#pragma unroll
            for (int j = 0; j < NV; ++j) {
                const long long e0 = slot_start<S>(base, j, threadIdx.x, blockDim.x, mis);
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const long long e = e0 + i;
                    if (e >= 0 && e < n) {
                        const A wc = weight_at(w, v0 + e);
                        const A q = SOFT ? wc * (tr_soft[e] * (A(1) - eps) + eps * inv_cols) : wc;
                        t.s_gap += weighted_gap(q, mn, v[j * VEC + i]);
                        t.s_q += q;
                    }
                }
            }
        }
        t.ms = merge(t.ms, ts);
    }
    return t;
}

// The block's statistics of the range: s_gap against the range max (when `gaps`),
// s_q summed over the block only when `want_q` (block-uniform flags: every thread
// takes part in the same reductions).
template <class A>
__device__ __forceinline__ CeStreamPart<A> ce_stream_reduce(CeStreamPart<A> t, BlockReduce<A>& red, bool gaps,
                                                            bool want_q) {
    CeStreamPart<A> r{red.merge(t.ms), A(0), t.s_q};
    if (gaps) r.s_gap = red.sum(t.s_gap + gap_shift(t.ms.m, r.ms.m, t.s_q));
    if (want_q) r.s_q = red.sum(t.s_q);
    return r;
}

// Second pass: the gradient of the range into gr (an ignored row's logits are not read).
template <class S, int NV, bool SOFT>
__device__ __forceinline__ void ce_stream_grad(const typename S::T* xr, typename S::T* gr,
                                               const typename S::A* tr_soft, const typename S::A* w, long long n,
                                               long long v0, int mis, const CeScale<typename S::A>& k, CeRow tr,
                                               typename S::A eps, typename S::A inv_cols, bool z_on) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    const long long tile = (long long)blockDim.x * EPT;
    const bool vec_out = misalign<S>(gr) == mis;
    const bool ok = tr.status == CE_OK;
    for (long long base = 0; base < n + mis; base += tile) {
        A v[EPT];
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const long long e0 = slot_start<S>(base, j, threadIdx.x, blockDim.x, mis);
            if (ok) {
                load_slot<S>(xr, e0, n, true, v + j * VEC, A(0));
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const long long e = e0 + i;
                    const bool in = e >= 0 && e < n;
                    const A xc = capped(v[j * VEC + i], k.cap, in);
                    A qc = A(0), wc = A(0);
                    if (in) {
                        wc = (SOFT || eps > A(0)) ? weight_at(w, v0 + e) : A(0);
                        if (SOFT) qc = wc * (tr_soft[e] * (A(1) - eps) + eps * inv_cols);
                    }
                    v[j * VEC + i] = in ? ce_grad_at(k, tr, xc, v0 + e, wc, qc, SOFT, z_on) : A(0);
                }
            } else {  // no logit read: the store rule needs only the row's status
#pragma unroll
                for (int i = 0; i < VEC; ++i) v[j * VEC + i] = ce_grad_at(k, tr, A(0), 0, A(0), A(0), SOFT, false);
            }
            store_slot<S>(gr, e0, n, vec_out, v + j * VEC);
        }
    }
}

template <class S, int NV, bool SOFT>
__device__ __forceinline__ void ce_stream(const typename S::T* x, typename S::T* grad, const long long* tgt,
                                          const typename S::A* soft_t, const typename S::A* w,
                                          const typename S::A* coef, const typename S::A* g_rows,
                                          typename S::A* row_loss, typename S::A* row_lse, long long rows,
                                          long long cols, long long ignore, typename S::A eps, typename S::A z,
                                          typename S::A cap) {
    typedef typename S::A A;
    __shared__ MaxSum<A> merge_slots[64];
    __shared__ A sum_slots[64];
    BlockReduce<A> red{merge_slots, sum_slots, 0};
    const A inv_cols = A(1) / A(cols);
    const bool gaps = SOFT || eps > A(0);
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long off = row * cols;
        const typename S::T* xr = x + off;
        const A* tr_soft = SOFT ? soft_t + off : nullptr;
        const int mis = misalign<S>(xr);
        const CeRow tr = ce_target(SOFT ? nullptr : tgt, row, cols, ignore);
        const A wt = (!SOFT && tr.status == CE_OK) ? weight_at(w, tr.t) : A(0);
        A xt = A(0);
        if (!SOFT && threadIdx.x == 0 && tr.status == CE_OK) xt = capped(S::to_acc(xr[tr.t]), cap, true);
        const CeStreamPart<A> r = ce_stream_reduce(
            ce_stream_stats<S, NV, SOFT>(xr, tr_soft, w, cols, 0, mis, eps, inv_cols, cap, gaps), red, gaps, SOFT);
        const A s_q = SOFT ? r.s_q : A(0);
        const CeScale<A> k = ce_scale(r.ms, tr, wt, s_q, SOFT, eps, z, inv_cols, cap, coef, g_rows, row);
        if (threadIdx.x == 0)
            ce_write_loss(row_loss, row_lse, row, tr, k, xt, wt, r.s_gap, s_q, SOFT, eps, z, inv_cols, coef);
        if (grad) ce_stream_grad<S, NV, SOFT>(xr, grad + off, tr_soft, w, cols, 0, mis, k, tr, eps, inv_cols, z > A(0));
    }
}

// ---------------------------------------------------------------------------
// split regime (hard labels): rows longer than one block holds, split over k
// co-resident blocks. Block p of group g holds elements [p*chunk, p*chunk + n)
// of rows g, g + groups, ... in registers from the read to the gradient write,
// so the logits are read once and the gradient written once (2 passes, not the
// stream regime's 3). The k (max, sum) partials of a row meet once through the
// workspace (group_merge of common.cuh, fixed order: every block gets the same
// bits); smoothing adds one group_sum of its non-negative pieces. The grid is
// launched cooperatively and sized from the occupancy calculator (the launcher
// refuses the plan otherwise), so the blocks waiting for each other are resident.
// In place: block 0 reads the target logit before it publishes its partial, and
// no block writes before every partial of the row is published; every other
// element is read and written by the same thread.

// A block's chunk, held from the read to the gradient write. 16-bit storage is
// kept as raw words, two to a 32-bit register (plain integers, so they stay in
// registers: a union of partial writes would go to local memory), converted at
// each use: half the registers of float values, so a 512-thread block holds 16K
// elements without spilling. float32/float64 keep the (capped) values.
template <class S, int NV>
struct HeldChunk {
    typedef typename S::T T;
    typedef typename S::A A;
    static constexpr int VEC = S::VEC;
    static constexpr bool RAW = sizeof(T) == 2;
    unsigned int words[RAW ? NV : 1][4];  // RAW: slot j's 8 words, packed in pairs
    A val[RAW ? 1 : NV * VEC];

    __device__ __forceinline__ void load(const T* p, int j, int e0, int n, A cap) {
        if (RAW) {
            if (e0 >= 0 && e0 + VEC <= n) {
                const uint4 u = *reinterpret_cast<const uint4*>(p + e0);
                words[j][0] = u.x;
                words[j][1] = u.y;
                words[j][2] = u.z;
                words[j][3] = u.w;
            } else {
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int a = e0 + 2 * q, b = a + 1;
                    const unsigned int lo = (a >= 0 && a < n) ? (unsigned int)p[a] : 0u;
                    const unsigned int hi = (b >= 0 && b < n) ? (unsigned int)p[b] : 0u;
                    words[j][q] = lo | (hi << 16);
                }
            }
        } else {
            load_slot<S>(p, e0, n, true, val + j * VEC, A(0));
#pragma unroll
            for (int i = 0; i < VEC; ++i) val[j * VEC + i] = capped(val[j * VEC + i], cap, e0 + i >= 0 && e0 + i < n);
        }
    }
    // The capped logit of element i of slot j; -inf outside the chunk.
    __device__ __forceinline__ A get(int j, int i, int e0, int n, A cap) const {
        if (RAW) {
            const T h = (T)((words[j][(i >> 1) & 3] >> ((i & 1) * 16)) & 0xffffu);
            return capped(S::to_acc(h), cap, e0 + i >= 0 && e0 + i < n);
        }
        return val[j * VEC + i];
    }
};

template <class S, int NV>
__device__ __forceinline__ void ce_split(const typename S::T* x, typename S::T* grad, const long long* tgt,
                                         const typename S::A* w, const typename S::A* coef,
                                         const typename S::A* g_rows, typename S::A* row_loss,
                                         typename S::A* row_lse, long long rows, long long cols, long long ignore,
                                         typename S::A eps, typename S::A z, typename S::A cap, int k,
                                         long long chunk, typename S::A* part, unsigned long long* cnt) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC;
    __shared__ MaxSum<A> ms_scratch[33];  // group_merge / group_sum
    __shared__ A scratch[33];
    __shared__ MaxSum<A> merge_slots[64];
    __shared__ A sum_slots[64];
    BlockReduce<A> red{merge_slots, sum_slots, 0};
    const RowShare sh = row_share(k, chunk, cols);
    if (sh.idle()) return;
    const long long groups = sh.groups, g = sh.g, c0 = sh.c0;
    const int p = sh.p;
    const int n = (int)sh.n;  // <= one block's capacity
    const int tid = (int)threadIdx.x, nthr = (int)blockDim.x;
    const A inv_cols = A(1) / A(cols);
    unsigned long long round = 0;
    for (long long row = g; row < rows; row += groups) {
        const typename S::T* xr = x + row * cols;
        const typename S::T* xc = xr + c0;
        const int mis = misalign<S>(xc);
        const CeRow tr = ce_target(tgt, row, cols, ignore);
        const A wt = tr.status == CE_OK ? weight_at(w, tr.t) : A(0);
        A xt = A(0);
        if (p == 0 && tid == 0 && tr.status == CE_OK) xt = capped(S::to_acc(xr[tr.t]), cap, true);

        HeldChunk<S, NV> h;
#pragma unroll
        for (int j = 0; j < NV; ++j) h.load(xc, j, slot_start<S>(0, j, tid, nthr, mis), n, cap);
        // (m, sum - 1) of the thread's values, as values_stats: values at the max
        // are counted, the others summed.
        A mv = -inf_of(A(0));
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int e0 = slot_start<S>(0, j, tid, nthr, mis);
#pragma unroll
            for (int i = 0; i < VEC; ++i) mv = nan_max(mv, h.get(j, i, e0, n, cap));
        }
        A c1 = A(0), ts = A(0);
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int e0 = slot_start<S>(0, j, tid, nthr, mis);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const A e = rel_exp(h.get(j, i, e0, n, cap), mv);
                const bool one = (e == A(1));
                c1 += one ? A(1) : A(0);
                ts += one ? A(0) : e;
            }
        }
        MaxSum<A> r;
        r.m = mv;
        r.r = (c1 - A(1)) + ts;
        r = red.merge(r);
        r = group_merge(r, part, cnt, g, k, p, round++, ms_scratch);
        const CeScale<A> ks = ce_scale(r, tr, wt, A(0), false, eps, z, inv_cols, cap, coef, g_rows, row);
        A s_gap = A(0);  // gaps against the row max (known after the merge): never cancels
        if (eps > A(0)) {
#pragma unroll
            for (int j = 0; j < NV; ++j) {
                const int e0 = slot_start<S>(0, j, tid, nthr, mis);
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const int e = e0 + i;
                    if (e >= 0 && e < n) s_gap += weighted_gap(weight_at(w, c0 + e), ks.m, h.get(j, i, e0, n, cap));
                }
            }
            s_gap = group_sum(red.sum(s_gap), part, cnt, g, k, p, round++, scratch);
        }
        if (p == 0 && tid == 0)
            ce_write_loss(row_loss, row_lse, row, tr, ks, xt, wt, s_gap, A(0), false, eps, z, inv_cols, coef);
        if (!grad) continue;
        typename S::T* gc = grad + row * cols + c0;
        const bool vec_out = misalign<S>(gc) == mis;
        const bool ok = tr.status == CE_OK;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int e0 = slot_start<S>(0, j, tid, nthr, mis);
            A gv[VEC];
            if (ok) {  // the held words are decoded (and capped) only in a row that uses them
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const int e = e0 + i;
                    gv[i] = ce_grad_at(ks, tr, h.get(j, i, e0, n, cap), c0 + e, w, eps > A(0) && e >= 0 && e < n,
                                       A(0), false, z > A(0));
                }
            } else {
#pragma unroll
                for (int i = 0; i < VEC; ++i) gv[i] = ce_grad_at(ks, tr, A(0), 0, w, false, A(0), false, false);
            }
            store_slot<S>(gc, e0, n, vec_out, gv);
        }
    }
    // Counters back to zero: the launcher keeps one zeroed workspace per stream.
    group_release(cnt, cnt + groups, g, k);
}

// ---------------------------------------------------------------------------
// split regime, fast path (the `_lean` entry points): hard labels and no class
// weight, smoothing, z-loss or soft cap, a float accumulator. The launcher picks
// it from the options (cross_entropy.py), so no option is tested per element.
// Per thread and row: the values' max m_t (FMNMX), their exp(x - m_t) (ExpShift:
// one FFMA + EX2 each) and plain sum; the block and the group reduce max first,
// then one sum (warp_max_then_sum: no exponential per reduction level), through
// tagged words in global memory (tagged_group_reduce: no fence, no L1
// invalidation, two barriers per row). Then every gradient element is one
// product: 16-bit storage keeps the exponentials and multiplies by the thread's
// exp(m_t - M) / sum * gce; float32 keeps the values (64 registers hold them, not
// both) and takes exp(x - M) / sum * gce at one FFMA + EX2 + FMUL. The target's
// -gce is applied once, by the thread whose slot holds it. In-chunk indices are
// int: a split row is at most the co-resident blocks' capacity, far below 2^31.
//
// A thread whose own max dominates its values (r_t = sum - 1 small) would lose
// r_t's low digits in the plain sum (1 + tiny); those threads, rare and once per
// row, recount at the max (lean_dominated, count_sum), which keeps the loss of a
// confident row accurate as values_stats does. Special rows need no per-element
// test: a non-finite row max makes the factor NaN (the reference's NaN
// gradient), an ignored row stores zeros, a bad target NaN.

// Below this r_t the plain sum's rounding (about EPT * eps * (1 + r_t) absolute)
// would cost r_t more than twice the relative error of the counted form.
constexpr float LEAN_RECOUNT_BELOW = 1.0f;

// r = sum - 1 of a thread's exponentials e (its max's own e is the largest):
// those equal to it are counted, the others summed (times the ExpShift fix).
template <int EPT>
__device__ __forceinline__ float lean_dominated(const float (&e)[EPT], float fix) {
    const float em = values_max(e, 0.0f);
    float c = 0.0f, t = 0.0f;
#pragma unroll
    for (int i = 0; i < EPT; ++i) {
        const bool one = e[i] == em;
        c += one ? 1.0f : 0.0f;
        t += one ? 0.0f : e[i];
    }
    return (c - 1.0f) + t * fix;
}

// A finite max too large for ExpShift: from |m| = 2^16 on, the rounding residue
// lo of m log2(e) (up to half an ulp of it) makes its second-order fix less
// exact than float, and past 2^30 2^lo itself overflows. Such rows take
// exp(x - m) as __expf of the difference (one FADD more per element; exactly 1
// at the max). One test per thread or row, never per element.
__device__ __forceinline__ bool lean_wide(float m) {
    return fabsf(m) < inf_of(m) && fabsf(m) >= 65536.0f;
}

// (sum - 1) of exp(v - m_t) over a thread's values (m_t their max), at one
// FFMA + EX2 + FADD each; v becomes the exponentials (times the ExpShift factor)
// when KEEP. The rare threads (dominated, or wide: lean_wide) then recount at the
// max as values_stats, from the values (held, or re-read from the thread's own
// slots of `xc` when KEEP: nothing is written before the row's exchange) or,
// for a dominated KEEP thread, from its exponentials.
template <class S, int NV, bool KEEP>
__device__ __forceinline__ float lean_thread_sum(float (&v)[NV * S::VEC], float mt, const typename S::T* xc,
                                                 int n, int mis, bool whole) {
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    const ExpShift<float> es = exp_shift(exp_offset(mt));
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < EPT; ++i) {
        const float e = shifted_exp(v[i], es);
        if (KEEP) v[i] = e;
        s += e;
    }
    float r = fmaf(s, es.fix, -1.0f);
    const bool wide = lean_wide(mt);
    if (wide || (r < LEAN_RECOUNT_BELOW && fabsf(mt) < inf_of(mt))) {
        if (KEEP && !wide) return lean_dominated(v, es.fix);
        if (KEEP) {  // the values again: e = exp(x - m_t) itself (a wide thread's fix is 1)
            const int tid = (int)threadIdx.x, nthr = (int)blockDim.x;
#pragma unroll
            for (int j = 0; j < NV; ++j)
                load_slot<S>(xc, slot_start<S>(0, j, tid, nthr, mis), n, whole, v + j * VEC, -inf_of(0.0f));
        }
        float c = 0.0f, t = 0.0f;
        count_sum<KEEP>(v, mt, c, t);
        r = (c - 1.0f) + t;
    }
    return r;
}

// A thread's NV slots into the gradient row: 16-byte stores when every slot is
// whole and aligned (one test per row), else per-slot bounds.
template <class S, int NV>
__device__ __forceinline__ void lean_store(typename S::T* gc, const float (&v)[NV * S::VEC], bool fast,
                                           bool out_aligned, int n, int mis) {
    constexpr int VEC = S::VEC;
    const int tid = (int)threadIdx.x, nthr = (int)blockDim.x;
    if (fast) {
#pragma unroll
        for (int j = 0; j < NV; ++j) store_full<S>(gc + slot_start<S>(0, j, tid, nthr, mis), v + j * VEC);
    } else {
#pragma unroll
        for (int j = 0; j < NV; ++j) store_slot<S>(gc, slot_start<S>(0, j, tid, nthr, mis), n, out_aligned, v + j * VEC);
    }
}

// The gradient of a lean row: e (held in v) times the thread's factor, the
// target's term by its owner.
template <class S, int NV, bool KEEP>
__device__ __forceinline__ void lean_grad(float (&v)[NV * S::VEC], typename S::T* gc, const typename S::T* xc,
                                          CeRow tr, MaxSum<float> r, float mt, const float* coef,
                                          const float* g_rows, long long row, int owned, int n, bool whole) {
    typedef float A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    const int tid = (int)threadIdx.x, nthr = (int)blockDim.x;
    // Per-row scalars in short forms (no division or expf subroutine while the
    // row is held): a correctly rounded reciprocal, exponentials as ExpShift.
    const bool finite = fabsf(r.m) < inf_of(r.m);
    const ExpShift<A> em = exp_shift(exp_offset(r.m));
    const bool wide = lean_wide(r.m);  // exp(x - M) as __expf(x - M)
    const A inv_s = finite ? __frcp_rn(A(1) + r.r) * (wide ? A(1) : em.fix) : nan_of(A(0));  // 1/s, the row's fix
    const A gce = coef[2] * (g_rows ? g_rows[row] : A(1));
    // The target's owner reads its logit before its own store: no other thread
    // writes that element.
    const int mis = misalign<S>(xc);
    const bool own = owned >= 0;
    A xo = A(0);
    if (own) xo = S::to_acc(xc[owned]);
    const bool out_aligned = misalign<S>(gc) == mis;
    if (tr.status == CE_IGNORED) {
        // zeros even where e is not finite; a branch of its own (both sides store)
        // so that the held registers never merge with a second set
        A zeros[EPT];
#pragma unroll
        for (int i = 0; i < EPT; ++i) zeros[i] = A(0);
        lean_store<S, NV>(gc, zeros, whole && out_aligned, out_aligned, n, mis);
        return;
    }
    if (KEEP) {
        // v holds exp(x - m_t) 2^lo_t; exp(m_t - M) is 0 for a thread of padding or
        // -inf values. e is finite in a finite row; a special row's f is NaN already.
        // exp(m_t - M) (its ExpShift fix in inv_s unless wide) times the thread's own
        // fix (1 for a wide thread, whose e is exp(x - m_t) itself)
        const A et = (wide ? fast_exp(mt - r.m) : shifted_exp(mt, em)) *
                     (lean_wide(mt) ? A(1) : exp_shift(exp_offset(mt)).fix);
        A f = et * inv_s * gce;
        if (tr.status == CE_BAD) f = nan_of(A(0));
#pragma unroll
        for (int i = 0; i < EPT; ++i) v[i] *= f;
    } else {
        // v holds the values: exp(x - M) at one FFMA + EX2, the row's fix in inv_s.
        A f = inv_s * gce;
        if (tr.status == CE_BAD) f = nan_of(A(0));
        if (wide) {
#pragma unroll
            for (int i = 0; i < EPT; ++i) v[i] = fast_exp(v[i] - r.m) * f;
        } else {
#pragma unroll
            for (int i = 0; i < EPT; ++i) v[i] = shifted_exp(v[i], em) * f;
        }
    }
    lean_store<S, NV>(gc, v, whole && out_aligned, out_aligned, n, mis);
    // The target's term, after (and over) the slot's own store: (p_t - 1) gce.
    if (own) gc[owned] = S::from_acc(((wide ? fast_exp(xo - r.m) : shifted_exp(xo, em)) * inv_s - A(1)) * gce);
}

template <class S, int NV>
__device__ __forceinline__ void ce_split_lean(const typename S::T* x, typename S::T* grad, const long long* tgt,
                                              const float* coef, const float* g_rows, float* row_loss,
                                              float* row_lse, long long rows, long long cols, long long ignore,
                                              int k, long long chunk, unsigned long long* part,
                                              unsigned long long* cnt) {
    typedef typename S::T T;
    typedef float A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    // 16-bit storage keeps the exponentials over the exchange (no second EX2 per
    // element: the XU pipe is what 16-bit rows run short of); float32 keeps the
    // values, whose second exp costs an FFMA + EX2 but fits the 64 registers.
    constexpr bool KEEP = sizeof(T) == 2;
    __shared__ MaxSum<A> slots[33];  // tagged_group_reduce
    __shared__ A target_logit[1];  // block 0's, for the loss: in shared memory, not a register held over the row
    const RowShare sh = row_share(k, chunk, cols);
    if (sh.idle()) return;
    const int groups = (int)sh.groups, g = (int)sh.g, c0 = (int)sh.c0, n = (int)sh.n;
    // The block's place p = c0 / chunk is not held over the rows (c0 == 0: block 0)
    const int tid = (int)threadIdx.x, nthr = (int)blockDim.x;
    // One 32-bit counter, the exchange's round, drives the row loop (fewer registers
    // held than a 64-bit row index beside it).
    for (unsigned int round = 0;; ++round) {
        const long long row = g + (long long)round * groups;
        if (row >= rows) break;
        const T* xc = x + row * cols + c0;
        const int mis = misalign<S>(xc);
        // Block 0 reads the target logit for the loss before this row's exchange,
        // so before any block writes its gradient (in place is safe).
        if (c0 == 0 && tid == 0) {
            const CeRow tr = ce_target(tgt, row, cols, ignore);
            target_logit[0] = tr.status == CE_OK ? S::to_acc(x[row * cols + tr.t]) : A(0);
        }
        // The in-chunk index of the target when this thread's slot holds it, else -1
        // (a division only in the one block whose chunk holds it).
        int owned = -1;
        {
            const CeRow tr = ce_target(tgt, row, cols, ignore);
            const int tt = tr.status == CE_OK ? (int)(tr.t - c0) : -1;
            if (tt >= 0 && tt < n && ((tt + mis) / VEC) % nthr == tid) owned = tt;
        }
        // Whole slots need no element bounds: one test per thread and row.
        const bool whole = slot_start<S>(0, 0, tid, nthr, mis) >= 0 &&
                           slot_start<S>(0, NV - 1, tid, nthr, mis) + VEC <= n;
        A v[EPT];
        if (whole) {
#pragma unroll
            for (int j = 0; j < NV; ++j) load_full<S>(xc + slot_start<S>(0, j, tid, nthr, mis), v + j * VEC);
        } else {
#pragma unroll
            for (int j = 0; j < NV; ++j)
                load_slot<S>(xc, slot_start<S>(0, j, tid, nthr, mis), n, true, v + j * VEC, -inf_of(A(0)));
        }
        const A mt = values_max(v, -inf_of(A(0)));
        MaxSum<A> mine;
        mine.m = mt;
        mine.r = lean_thread_sum<S, NV, KEEP>(v, mt, xc, n, mis, whole);
        const MaxSum<A> r = tagged_group_reduce(mine, slots, part, g, k, c0 / (int)chunk, round);
        // The target's status again (one cached load): fewer registers held over the exchange.
        const CeRow tr = ce_target(tgt, row, cols, ignore);
        if (grad) lean_grad<S, NV, KEEP>(v, grad + row * cols + c0, xc, tr, r, mt, coef, g_rows, row, owned, n, whole);
        // The loss after the gradient: its log1p then needs no register the held
        // exponentials use.
        if (c0 == 0 && tid == 0) {
            const A inv_cols = A(1) / A(cols);
            const CeScale<A> ks = ce_scale(r, tr, A(1), A(0), false, A(0), A(0), inv_cols, A(0), coef, g_rows, row);
            ce_write_loss(row_loss, row_lse, row, tr, ks, target_logit[0], A(1), A(0), A(0), false, A(0), A(0), inv_cols,
                          coef);
        }
    }
    tagged_release(part, cnt + groups, g, k);
}

// ---------------------------------------------------------------------------
// backward scaling: the forward saved d(loss)/d(logits) for grad_output = 1 (the
// mean's divisor already in it); the backward multiplies by grad_output in place.
// The common case, a scalar grad_output of exactly 1 (loss.backward()), is
// decided here on the device: every block reads the scalar and returns, so the
// backward touches no N x C memory, needs no host sync and captures in a CUDA
// graph. A per-row grad_output (reduction='none') scales row r by g_rows[r]; the
// gradient is contiguous in the logits' own layout, so element e belongs to row
// (e / (cols * inner)) * inner + e % inner.

template <class S>
__device__ __forceinline__ void ce_scale_grad(typename S::T* grad, long long n, long long cols, long long inner,
                                              const typename S::A* g_scalar, const typename S::A* g_rows) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC;
    const A gs = g_scalar ? g_scalar[0] : A(1);
    if (!g_rows && gs == A(1)) return;  // NaN != 1: a NaN grad_output still scales
    const int mis = misalign<S>(grad);
    const long long slots = (n + mis + VEC - 1) / VEC;
    const long long per_outer = cols * inner;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x; s < slots; s += stride) {
        const long long e0 = s * VEC - mis;
        A v[VEC];
        load_slot<S>(grad, e0, n, true, v, A(0));
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const long long e = e0 + i;
            A gv = gs;
            if (g_rows && e >= 0 && e < n) gv = g_rows[(e / per_outer) * inner + e % inner];
            v[i] *= gv;
        }
        store_slot<S>(grad, e0, n, true, v);
    }
}

// ---------------------------------------------------------------------------
// finish: the per-row losses into the returned loss, in the storage dtype the
// caller asks for (the torch bridge returns the loss in the logits' dtype: no cast
// launch after). reduce: one block sums the rows in a fixed order in float64
// (deterministic) and writes one value; otherwise each row is converted.

template <class S>
__device__ __forceinline__ void ce_finish(const typename S::A* row_loss, typename S::T* out, long long rows,
                                          int reduce) {
    typedef typename S::A A;
    __shared__ double sum_slots[32];  // one reduction: one buffer
    if (!reduce) {
        const long long stride = (long long)gridDim.x * blockDim.x;
        for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride)
            out[r] = S::from_acc(row_loss[r]);
        return;
    }
    double s = 0.0;
    for (long long r = threadIdx.x; r < rows; r += blockDim.x) s += (double)row_loss[r];
    s = block_sum_1b(s, sum_slots);
    if (threadIdx.x == 0) out[0] = S::from_acc((A)s);
}

// ---------------------------------------------------------------------------
// prep: one block computes the mean's divisor, the valid-row count, W and the
// scales from the targets and weights, in a fixed order (deterministic), and
// counts out-of-range targets for validate=True (the one scalar the host reads).
//
// With `w_scaled` (the fused kernels' weights), the weights are first divided by
// s = sum |w_c| (in float64) into w_scaled, which the per-row kernel reads instead,
// and s moves into the scales (sum, none, a soft-label mean): the loss is linear
// in the weights, and a mean's 1 / sum w[t] then never overflows float32 (tiny
// class weights; torch gives log C for weight = 1e-40). Weights are decoded from their bits, so a float32
// subnormal weight counts on the GPU too (-ftz=true would flush it in arithmetic).
// A mean over a zero total target weight is NaN, as torch's.

template <class A>
__device__ __forceinline__ double weight_f64(const A* w, long long c);
template <>
__device__ __forceinline__ double weight_f64<double>(const double* w, long long c) { return w[c]; }
template <>
__device__ __forceinline__ double weight_f64<float>(const float* w, long long c) {
    const unsigned int u = reinterpret_cast<const unsigned int*>(w)[c];
    const unsigned int mag = u & 0x7fffffffu;
    const double v = (mag >> 23) ? (double)__uint_as_float(mag) : (double)mag * 1.401298464324817e-45;  // 2^-149
    return (u >> 31) ? -v : v;
}

template <class A>
__device__ __forceinline__ void ce_prep(const long long* tgt, long long rows, long long cols, long long ignore,
                                        const A* w, A* w_scaled, int reduction, const A* g_ptr, double g_val,
                                        A* coef, unsigned long long* n_bad_out) {
    __shared__ double sum_slots[64];  // consecutive reductions alternate buffers
    double d = 0.0, n_valid = 0.0, n_bad = 0.0, wsum = 0.0, s = 1.0;
    if (w && w_scaled) {
        double a = 0.0;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) a += fabs(weight_f64(w, c));
        a = block_sum_1b(a, sum_slots + 32);  // every thread gets the sum
        if (a > 0.0 && a <= 1.7976931348623157e308) s = a;  // else (0, inf, NaN) the weights as they are
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) w_scaled[c] = (A)(weight_f64(w, c) / s);
        __syncthreads();
        w = w_scaled;  // d and W from the values the per-row kernel reads
    }
    if (tgt) {
        for (long long r = threadIdx.x; r < rows; r += blockDim.x) {
            const long long t = tgt[r];
            if (t == ignore) continue;
            n_valid += 1.0;
            if (t < 0 || t >= cols)
                n_bad += 1.0;
            else
                d += w ? weight_f64(w, t) : 1.0;
        }
    }
    if (w) {
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) wsum += weight_f64(w, c);
    }
    d = block_sum_1b(d, sum_slots);
    n_valid = block_sum_1b(n_valid, sum_slots + 32);
    n_bad = block_sum_1b(n_bad, sum_slots);
    wsum = block_sum_1b(wsum, sum_slots + 32);
    if (threadIdx.x == 0) {
        if (!tgt) {
            d = (double)rows;  // soft labels: mean over rows
            n_valid = (double)rows;
        }
        if (n_bad > 0.0) d = nan_of(0.0);
        if (!w) wsum = (double)cols;
        const double g = g_ptr ? (double)g_ptr[0] : g_val;
        double lce = s, lzl = 1.0;
        if (reduction == 1) {  // mean
            // hard labels: d is the sum of the (scaled) target weights, so s cancels
            lce = !tgt ? s / d : (d == 0.0 ? nan_of(0.0) : 1.0 / d);
            lzl = 1.0 / n_valid;
        }
        coef[0] = (A)lce;
        coef[1] = (A)lzl;
        coef[2] = (A)(g * lce);
        coef[3] = (A)(g * lzl);
        coef[4] = (A)wsum;
        *n_bad_out = (unsigned long long)n_bad;
    }
}

}  // namespace gs

// ---------------------------------------------------------------------------
// The extern "C" entry points of this file (gs_ce_*, gs_vp_*: C signatures, launch
// bounds, variants) are generated from gpu_softmax/_cuda/kernels.py and appended
// by the loader.

// ---------------------------------------------------------------------------
// vocabulary-parallel cross entropy (gpu_softmax.vocab_parallel): the classes are
// split over P ranks; rank p holds columns [v0, v0 + cols) of the V classes. Both
// kernels are the stream regime's two passes (ce_stream_stats / ce_stream_grad)
// over the local shard, with the shard's offset v0, so the options mean what they
// mean in the fused kernels above, logit_softcap included.
//
// gs_vp_stats_*: per row, over the local shard, the record
//     rec[row] = [m, r, x_t, d, W]
//   m, r   the shard's (max, sum - 1) pair of the (capped) logits (MaxSum; an empty
//          shard is (-inf, -1))
//   x_t    the (capped) target logit when the (global) target lies in this shard, else 0
//   d, W   sum_c w[v0 + c] (m - x_c) and sum_c w[v0 + c] over the shard when
//          smoothing is on, else 0 (the finish moves d to the global max: + (M - m) W)
// The P records of a row are then gathered (one collective, outside the kernels).
// gs_vp_finish_*: per row, merges the P gathered records (rank order, the same on
// every rank: bit-identical global statistics everywhere), writes the row's loss
// (thread 0, ce_write_loss) and the local slice of the gradient (ce_stream_grad)
// over the full vocabulary: inv_cols = 1/V, coef from gs_ce_prep_* run with cols = V.
// recs layout: [P][rows][VP_REC] in the accumulation type. Every element of the local
// shard is read and written by one thread, so grad may alias x.

namespace gs {

constexpr int VP_REC = 5;  // record width; RECORD_FIELDS in gpu_softmax/_cuda/vocab_parallel.py

template <class S, int NV>
__device__ __forceinline__ void vp_stats(const typename S::T* x, const long long* tgt, const typename S::A* w,
                                         typename S::A* rec, long long rows, long long cols, long long v0,
                                         long long ignore, typename S::A eps, typename S::A cap) {
    typedef typename S::A A;
    __shared__ MaxSum<A> merge_slots[64];
    __shared__ A sum_slots[64];
    BlockReduce<A> red{merge_slots, sum_slots, 0};
    const bool gaps = eps > A(0);
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const typename S::T* xr = x + row * cols;
        const int mis = misalign<S>(xr);
        const long long t = tgt[row];
        const long long lt = t - v0;  // in [0, cols) only for a target in [0, V)
        A xt = A(0);
        if (threadIdx.x == 0 && t != ignore && lt >= 0 && lt < cols) xt = capped(S::to_acc(xr[lt]), cap, true);
        const CeStreamPart<A> r = ce_stream_reduce(
            ce_stream_stats<S, NV, false>(xr, nullptr, w, cols, v0, mis, eps, A(0), cap, gaps), red, gaps, gaps);
        if (threadIdx.x == 0) {
            A* o = rec + row * VP_REC;
            o[0] = r.ms.m;
            // An all -inf (or empty) shard: sum 0. Its r would otherwise count the
            // -inf slots, harmless in a merge with a finite max but not tidy.
            o[1] = is_inf(r.ms.m) && r.ms.m < A(0) ? A(-1) : r.ms.r;
            o[2] = xt;
            o[3] = r.s_gap;
            o[4] = gaps ? r.s_q : A(0);
        }
    }
}

// The global statistics of a row from its P records, merged in rank order by every
// thread itself (no shared memory, and the same bits on every rank); s_gap is sum_c
// w_c (M - x_c) over the vocabulary when smoothing is on.
template <class A>
__device__ __forceinline__ CeStreamPart<A> vp_merge_records(const A* recs, int nranks, long long rows,
                                                            long long row, bool gaps, A* xt) {
    CeStreamPart<A> g{empty_maxsum<A>(), A(0), A(0)};
    *xt = A(0);
    for (int p = 0; p < nranks; ++p) {
        const A* rp = recs + ((long long)p * rows + row) * VP_REC;
        g.ms = merge(g.ms, MaxSum<A>{rp[0], rp[1]});
        *xt += rp[2];
    }
    if (gaps) {  // second sweep: every shard's gaps moved to the global max
        for (int p = 0; p < nranks; ++p) {
            const A* rp = recs + ((long long)p * rows + row) * VP_REC;
            g.s_gap += rp[3] + gap_shift(rp[0], g.ms.m, rp[4]);
        }
    }
    return g;
}

template <class S, int NV>
__device__ __forceinline__ void vp_finish(const typename S::T* x, typename S::T* grad, const long long* tgt,
                                          const typename S::A* w, const typename S::A* coef,
                                          const typename S::A* g_rows, const typename S::A* recs,
                                          typename S::A* row_loss, int nranks, long long rows, long long cols,
                                          long long v0, long long vocab, long long ignore, typename S::A eps,
                                          typename S::A z, typename S::A cap) {
    typedef typename S::A A;
    const A inv_v = A(1) / A(vocab);
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        A xt;
        const CeStreamPart<A> g = vp_merge_records(recs, nranks, rows, row, eps > A(0), &xt);
        const CeRow tr = ce_target(tgt, row, vocab, ignore);
        const A wt = tr.status == CE_OK ? weight_at(w, tr.t) : A(0);
        const CeScale<A> k = ce_scale(g.ms, tr, wt, A(0), false, eps, z, inv_v, cap, coef, g_rows, row);
        if (threadIdx.x == 0)
            ce_write_loss(row_loss, (A*)nullptr, row, tr, k, xt, wt, g.s_gap, A(0), false, eps, z, inv_v, coef);
        if (!grad) continue;
        const typename S::T* xr = x + row * cols;
        ce_stream_grad<S, NV, false>(xr, grad + row * cols, nullptr, w, cols, v0, misalign<S>(xr), k, tr, eps, inv_v,
                                     z > A(0));
    }
}

}  // namespace gs
