// softmax, log_softmax, logsumexp and their backward passes, over rows of `cols`
// contiguous elements (the launcher moves any other axis last first).
//
// Kernel templates, picked per call by the planner in gpu_softmax/_cuda/softmax.py
// (docs/softmax_kernels.md has the regime table and the bytes-in-flight rule):
//   warp   - short rows: `width` lanes (1..32) own one row, held in registers;
//            several rows per warp when rows are tiny.
//   row    - one block per row (k = 1, no workspace): the row is loaded whole
//            before the first reduction, NV slots per thread in registers and
//            `ss` more per thread staged in dynamic shared memory (cp.async),
//            then one single-barrier (max, sum) reduction and one write.
//   split  - few rows (fewer than SMs): k co-resident blocks per row, each
//            holding a chunk in registers, exchanging (max, sum) partials
//            through a small workspace; launched cooperatively.
//   stream - rows longer than one SM holds: online (max, sum) read, then a
//            second read for the write, walked backwards so that the most
//            recently read tiles (still in L2) are read first; k blocks per
//            row only when rows are few.
//   lse    - logsumexp writes one value per row and holds nothing: a single
//            online read, `width` lanes per row or k blocks per row.
// softmax vs log_softmax (and the two backward passes) is a runtime argument:
// it only changes the epilogue, and keeping it out of the template list halves
// the number of compiled variants. The extern "C" entry points are not in this
// file: they are generated from the kernel table (gpu_softmax/_cuda/kernels.py:
// names, NV, C signatures, launch bounds) and the loader appends them.
#include "common.cuh"

namespace gs {

enum { OP_SOFTMAX = 0, OP_LOG_SOFTMAX = 1 };
enum { OP_SOFTMAX_BWD = 0, OP_LOG_SOFTMAX_BWD = 1 };

// Per-row epilogue constants. The reference gives a NaN row for softmax and
// log_softmax when the max is infinite (a +inf element, or every element -inf),
// and max +- inf for logsumexp (torch convention); a NaN max flows through.
template <class A>
__device__ __forceinline__ A inv_sum_of(MaxSum<A> r) {
    return is_inf(r.m) ? nan_of(r.m) : A(1) / (A(1) + r.r);
}
template <class A>
__device__ __forceinline__ A log_sum_of(MaxSum<A> r) {
    return is_inf(r.m) ? nan_of(r.m) : acc_log1p(r.r);
}
template <class A>
__device__ __forceinline__ A lse_of(MaxSum<A> r) {
    return is_inf(r.m) ? r.m : r.m + acc_log1p(r.r);
}

// Held values -> outputs. softmax: v holds exp(x - mt) (mt = the thread's own
// max), rescaled to the row max. log_softmax: v holds x; (x - m) - log(sum),
// both terms <= 0 after the subtraction, so no cancellation.
template <class A, int EPT>
__device__ __forceinline__ void held_finish(A (&v)[EPT], int op, A mt, MaxSum<A> r) {
    if (op == OP_SOFTMAX) {
        const A f = rel_exp(mt, r.m) * inv_sum_of(r);
#pragma unroll
        for (int i = 0; i < EPT; ++i) v[i] *= f;
    } else {
        const A ls = log_sum_of(r);
#pragma unroll
        for (int i = 0; i < EPT; ++i) v[i] = (v[i] - r.m) - ls;
    }
}

template <class A, int EPT>
__device__ __forceinline__ MaxSum<A> held_stats(A (&v)[EPT], int op) {
    return op == OP_SOFTMAX ? values_stats<true, A, A>(v) : values_stats<false, A, A>(v);
}

// Backward: the row sum is accumulated in double whatever the storage. Products
// of float16/float32 values are exact in double, and the epilogue subtracts from
// grad_y: a float sum there would carry its rounding error straight into every
// element where grad_y is close to it (catastrophic cancellation against the
// float64 reference).
template <class A, int EPT>
__device__ __forceinline__ double held_dot(const A (&yv)[EPT], const A (&gv)[EPT], int op) {
    double s = 0.0;
    if (op == OP_SOFTMAX_BWD) {
#pragma unroll
        for (int i = 0; i < EPT; ++i) s += double(gv[i]) * double(yv[i]);
    } else {
#pragma unroll
        for (int i = 0; i < EPT; ++i) s += double(gv[i]);
    }
    return s;
}

// grad_x into gv: y * (gy - dot) for softmax, gy - exp(y) * sum(gy) for
// log_softmax (exp in double for the same cancellation reason). 16-bit storage
// finishes in float: the result is rounded to 11 (8) significant bits, far above
// float's error on these terms, and double math there costs registers (spills).
template <class S, class A, int EPT>
__device__ __forceinline__ void held_bwd_finish(const A (&yv)[EPT], A (&gv)[EPT], int op, double s) {
    if (sizeof(typename S::T) == 2) {
        const float sf = float(s);
        if (op == OP_SOFTMAX_BWD) {
#pragma unroll
            for (int i = 0; i < EPT; ++i) gv[i] = yv[i] * (gv[i] - sf);
        } else {
#pragma unroll
            for (int i = 0; i < EPT; ++i) gv[i] = gv[i] - expf(yv[i]) * sf;
        }
    } else if (op == OP_SOFTMAX_BWD) {
#pragma unroll
        for (int i = 0; i < EPT; ++i) gv[i] = A(double(yv[i]) * (double(gv[i]) - s));
    } else {
#pragma unroll
        for (int i = 0; i < EPT; ++i) gv[i] = A(double(gv[i]) - exp(double(yv[i])) * s);
    }
}

// ---------------------------------------------------------------------------
// warp regime: `width` consecutive lanes per row, blockDim.x / width rows per
// block, grid-stride over row groups. Lanes past the last row run with an empty
// row (n = 0: no loads, no stores) so the full-mask shuffles stay legal.

template <class S, int NV>
__device__ __forceinline__ void fwd_warp(const typename S::T* x, typename S::T* y, long long rows, long long cols,
                                         int op, int width) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    const int lane = threadIdx.x & (width - 1);
    const int rpb = blockDim.x / width;
    const long long nrb = (rows + rpb - 1) / rpb;
    for (long long rb = blockIdx.x; rb < nrb; rb += gridDim.x) {
        const long long row = rb * rpb + threadIdx.x / width;
        const bool valid = row < rows;
        const int n = valid ? (int)cols : 0;  // cols fits the warp regime
        const long long off = (valid ? row : 0) * cols;
        const int mis = misalign<S>(x + off);
        A v[EPT];
#pragma unroll
        for (int j = 0; j < NV; ++j)
            load_slot<S>(x + off, slot_start<S>(0, j, lane, width, mis), n, true, v + j * VEC, -inf_of(A(0)));
        const MaxSum<A> t = held_stats(v, op);
        const MaxSum<A> r = warp_merge(t, width);
        held_finish(v, op, t.m, r);
        const bool vec_out = misalign<S>(y + off) == mis;
#pragma unroll
        for (int j = 0; j < NV; ++j)
            store_slot<S>(y + off, slot_start<S>(0, j, lane, width, mis), n, vec_out, v + j * VEC);
    }
}

template <class S, int NV>
__device__ __forceinline__ void bwd_warp(const typename S::T* gy, const typename S::T* y, typename S::T* gx,
                                         long long rows, long long cols, int op, int width) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    const int lane = threadIdx.x & (width - 1);
    const int rpb = blockDim.x / width;
    const long long nrb = (rows + rpb - 1) / rpb;
    for (long long rb = blockIdx.x; rb < nrb; rb += gridDim.x) {
        const long long row = rb * rpb + threadIdx.x / width;
        const bool valid = row < rows;
        const int n = valid ? (int)cols : 0;
        const long long off = (valid ? row : 0) * cols;
        const int mis = misalign<S>(y + off);
        const bool vec_g = misalign<S>(gy + off) == mis;
        const bool vec_o = misalign<S>(gx + off) == mis;
        A yv[EPT], gv[EPT];
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int e0 = slot_start<S>(0, j, lane, width, mis);
            load_slot<S>(y + off, e0, n, true, yv + j * VEC, A(0));
            load_slot<S>(gy + off, e0, n, vec_g, gv + j * VEC, A(0));
        }
        const double s = warp_sum(held_dot(yv, gv, op), width);
        held_bwd_finish<S>(yv, gv, op, s);
#pragma unroll
        for (int j = 0; j < NV; ++j)
            store_slot<S>(gx + off, slot_start<S>(0, j, lane, width, mis), n, vec_o, gv + j * VEC);
    }
}

// ---------------------------------------------------------------------------
// row regime: block b owns rows b, b + gridDim.x, ...; the row is slots
// [0, NV + ss) of the block's slot grid: the first NV per thread in registers,
// the other ss per thread in dynamic shared memory at stage[(j - NV) *
// blockDim.x + threadIdx.x]. All of a row's loads are issued before the first
// value is used. Every element is read and written by one thread (the staged
// ones from its own shared slots), so y == x is safe and no barrier is needed
// around the staging buffer. Rows fit in int here (the planner holds at most
// what one SM can).

template <class S, int NV>
__device__ __forceinline__ void fwd_row(const typename S::T* x, typename S::T* y, long long rows, int cols, int op,
                                        int ss) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    extern __shared__ uint4 gs_stage[];
    __shared__ MaxSum<A> slots[64];  // two buffers for the single-barrier reduction
    const int tid = threadIdx.x, nt = blockDim.x;
    int parity = 0;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x, parity ^= 1) {
        const typename S::T* xr = x + row * cols;
        typename S::T* yr = y + row * cols;
        const int mis = misalign<S>(xr);
        for (int j = 0; j < ss; ++j)
            stage_slot<S>(xr, slot_start<S>(0, NV + j, tid, nt, mis), cols, true, gs_stage + j * nt + tid);
        A v[EPT];
#pragma unroll
        for (int j = 0; j < NV; ++j)
            load_slot<S>(xr, slot_start<S>(0, j, tid, nt, mis), cols, true, v + j * VEC, -inf_of(A(0)));
        cp_async_wait_all();
        const MaxSum<A> own = held_stats(v, op);
        MaxSum<A> t = own;
        for (int j = 0; j < ss; ++j) {
            A w[VEC];
            unstage_slot<S>(gs_stage + j * nt + tid, slot_start<S>(0, NV + j, tid, nt, mis), cols, w,
                            -inf_of(A(0)));
            t = merge(t, values_stats<false, A, A>(w));
        }
        const MaxSum<A> r = block_merge_1b(t, slots + 32 * parity);
        held_finish(v, op, own.m, r);
        const bool vec_out = misalign<S>(yr) == mis;
#pragma unroll
        for (int j = 0; j < NV; ++j)
            store_slot<S>(yr, slot_start<S>(0, j, tid, nt, mis), cols, vec_out, v + j * VEC);
        const A inv = inv_sum_of(r);
        const A ls = log_sum_of(r);
        for (int j = 0; j < ss; ++j) {
            const int e0 = slot_start<S>(0, NV + j, tid, nt, mis);
            A w[VEC];
            unstage_slot<S>(gs_stage + j * nt + tid, e0, cols, w, A(0));
            if (op == OP_SOFTMAX) {
#pragma unroll
                for (int i = 0; i < VEC; ++i) w[i] = fast_exp(w[i] - r.m) * inv;
            } else {
#pragma unroll
                for (int i = 0; i < VEC; ++i) w[i] = (w[i] - r.m) - ls;
            }
            store_slot<S>(yr, e0, cols, vec_out, w);
        }
    }
}

// Staging buffer: [2][ss][blockDim.x] slots, y's first, then grad_y's.
template <class S, int NV>
__device__ __forceinline__ void bwd_row(const typename S::T* gy, const typename S::T* y, typename S::T* gx,
                                        long long rows, int cols, int op, int ss) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    extern __shared__ uint4 gs_stage[];
    __shared__ double slots[64];
    const int tid = threadIdx.x, nt = blockDim.x;
    uint4* sy = gs_stage;
    uint4* sg = gs_stage + ss * nt;
    int parity = 0;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x, parity ^= 1) {
        const long long off = row * cols;
        const int mis = misalign<S>(y + off);
        const bool vec_g = misalign<S>(gy + off) == mis;
        const bool vec_o = misalign<S>(gx + off) == mis;
        for (int j = 0; j < ss; ++j) {
            const int e0 = slot_start<S>(0, NV + j, tid, nt, mis);
            stage_slot<S>(y + off, e0, cols, true, sy + j * nt + tid);
            stage_slot<S>(gy + off, e0, cols, vec_g, sg + j * nt + tid);
        }
        A yv[EPT], gv[EPT];
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int e0 = slot_start<S>(0, j, tid, nt, mis);
            load_slot<S>(y + off, e0, cols, true, yv + j * VEC, A(0));
            load_slot<S>(gy + off, e0, cols, vec_g, gv + j * VEC, A(0));
        }
        cp_async_wait_all();
        double s = held_dot(yv, gv, op);
        for (int j = 0; j < ss; ++j) {
            const int e0 = slot_start<S>(0, NV + j, tid, nt, mis);
            A a[VEC], b[VEC];
            unstage_slot<S>(sy + j * nt + tid, e0, cols, a, A(0));
            unstage_slot<S>(sg + j * nt + tid, e0, cols, b, A(0));
            s += held_dot(a, b, op);
        }
        s = block_sum_1b(s, slots + 32 * parity);
        held_bwd_finish<S>(yv, gv, op, s);
#pragma unroll
        for (int j = 0; j < NV; ++j)
            store_slot<S>(gx + off, slot_start<S>(0, j, tid, nt, mis), cols, vec_o, gv + j * VEC);
        for (int j = 0; j < ss; ++j) {
            const int e0 = slot_start<S>(0, NV + j, tid, nt, mis);
            A a[VEC], b[VEC];
            unstage_slot<S>(sy + j * nt + tid, e0, cols, a, A(0));
            unstage_slot<S>(sg + j * nt + tid, e0, cols, b, A(0));
            held_bwd_finish<S>(a, b, op, s);
            store_slot<S>(gx + off, e0, cols, vec_o, b);
        }
    }
}

// ---------------------------------------------------------------------------
// split regime (few rows): k co-resident blocks per row; block p of group g
// owns elements [p*chunk, min((p+1)*chunk, cols)) of rows g, g+groups, ...
// The chunk stays in registers between the read and the write, so in-place
// (y == x) is safe: every element is read and written by the same thread, and
// the chunks of a row do not overlap. `chunk` is a multiple of VEC, so every
// chunk of a row has the row's misalignment.

template <class S, int NV>
__device__ __forceinline__ void fwd_split(const typename S::T* x, typename S::T* y, long long rows, long long cols,
                                          int op, int k, long long chunk, typename S::A* part,
                                          unsigned long long* cnt) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    __shared__ MaxSum<A> scratch[33];
    __shared__ MaxSum<A> slots[64];  // two buffers for the single-barrier reduction
    const RowShare sh = row_share(k, chunk, cols);
    if (sh.idle()) return;
    const long long groups = sh.groups, g = sh.g, c0 = sh.c0;
    const int p = sh.p;
    const int n = (int)sh.n;  // <= one block's capacity
    unsigned long long round = 0;
    for (long long row = g; row < rows; row += groups, ++round) {
        const long long off = row * cols + c0;
        const int mis = misalign<S>(x + off);
        A v[EPT];
#pragma unroll
        for (int j = 0; j < NV; ++j)
            load_slot<S>(x + off, slot_start<S>(0, j, threadIdx.x, blockDim.x, mis), n, true, v + j * VEC,
                         -inf_of(A(0)));
        const MaxSum<A> t = held_stats(v, op);
        MaxSum<A> r = block_merge_1b(t, slots + 32 * (round & 1));
        if (k > 1) r = group_merge(r, part, cnt, g, k, p, round, scratch);
        held_finish(v, op, t.m, r);
        const bool vec_out = misalign<S>(y + off) == mis;
#pragma unroll
        for (int j = 0; j < NV; ++j)
            store_slot<S>(y + off, slot_start<S>(0, j, threadIdx.x, blockDim.x, mis), n, vec_out, v + j * VEC);
    }
    group_release(cnt, cnt + groups, g, k);
}

template <class S, int NV>
__device__ __forceinline__ void bwd_split(const typename S::T* gy, const typename S::T* y, typename S::T* gx,
                                          long long rows, long long cols, int op, int k, long long chunk,
                                          double* part, unsigned long long* cnt) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    __shared__ double scratch[33];
    __shared__ double slots[64];
    const RowShare sh = row_share(k, chunk, cols);
    if (sh.idle()) return;
    const long long groups = sh.groups, g = sh.g, c0 = sh.c0;
    const int p = sh.p;
    const int n = (int)sh.n;  // <= one block's capacity
    unsigned long long round = 0;
    for (long long row = g; row < rows; row += groups, ++round) {
        const long long off = row * cols + c0;
        const int mis = misalign<S>(y + off);
        const bool vec_g = misalign<S>(gy + off) == mis;
        const bool vec_o = misalign<S>(gx + off) == mis;
        A yv[EPT], gv[EPT];
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int e0 = slot_start<S>(0, j, threadIdx.x, blockDim.x, mis);
            load_slot<S>(y + off, e0, n, true, yv + j * VEC, A(0));
            load_slot<S>(gy + off, e0, n, vec_g, gv + j * VEC, A(0));
        }
        double s = block_sum_1b(held_dot(yv, gv, op), slots + 32 * (round & 1));
        if (k > 1) s = group_sum(s, part, cnt, g, k, p, round, scratch);
        held_bwd_finish<S>(yv, gv, op, s);
#pragma unroll
        for (int j = 0; j < NV; ++j)
            store_slot<S>(gx + off, slot_start<S>(0, j, threadIdx.x, blockDim.x, mis), n, vec_o, gv + j * VEC);
    }
    group_release(cnt, cnt + groups, g, k);
}

// ---------------------------------------------------------------------------
// stream regime: as the block regime, but the chunk is walked in tiles of
// blockDim.x * NV * VEC elements twice: first for the running (max, sum) (one
// exp per element, one merge per tile), then, last tile first, to write: the
// tiles read last are the likeliest still in L2. The second read of an
// element is by the thread that read it first and writes it, so in-place is safe.

template <class S, int NV>
__device__ __forceinline__ void fwd_stream(const typename S::T* x, typename S::T* y, long long rows, long long cols,
                                           int op, int k, long long chunk, typename S::A* part,
                                           unsigned long long* cnt) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    __shared__ MaxSum<A> scratch[33];
    __shared__ MaxSum<A> slots[64];  // two buffers for the single-barrier reduction
    const RowShare sh = row_share(k, chunk, cols);
    if (sh.idle()) return;
    const long long groups = sh.groups, g = sh.g, c0 = sh.c0, n = sh.n;
    const int p = sh.p;
    const long long tile = (long long)blockDim.x * EPT;
    unsigned long long round = 0;
    for (long long row = g; row < rows; row += groups, ++round) {
        const long long off = row * cols + c0;
        const int mis = misalign<S>(x + off);
        MaxSum<A> t = empty_maxsum<A>();
        for (long long base = 0; base < n + mis; base += tile) {
            A v[EPT];
#pragma unroll
            for (int j = 0; j < NV; ++j)
                load_slot<S>(x + off, slot_start<S>(base, j, threadIdx.x, blockDim.x, mis), n, true, v + j * VEC,
                             -inf_of(A(0)));
            t = merge(t, values_stats<false, A, A>(v));
        }
        const MaxSum<A> r0 = block_merge_1b(t, slots + 32 * (round & 1));
        const MaxSum<A> r = k > 1 ? group_merge(r0, part, cnt, g, k, p, round, scratch) : r0;
        const bool vec_out = misalign<S>(y + off) == mis;
        const A inv = inv_sum_of(r);
        const A ls = log_sum_of(r);
        for (long long base = (n + mis - 1) / tile * tile; base >= 0; base -= tile) {
            A v[EPT];
#pragma unroll
            for (int j = 0; j < NV; ++j)
                load_slot<S>(x + off, slot_start<S>(base, j, threadIdx.x, blockDim.x, mis), n, true, v + j * VEC,
                             A(0));
            if (op == OP_SOFTMAX) {
#pragma unroll
                for (int i = 0; i < EPT; ++i) v[i] = fast_exp(v[i] - r.m) * inv;
            } else {
#pragma unroll
                for (int i = 0; i < EPT; ++i) v[i] = (v[i] - r.m) - ls;
            }
#pragma unroll
            for (int j = 0; j < NV; ++j)
                store_slot<S>(y + off, slot_start<S>(base, j, threadIdx.x, blockDim.x, mis), n, vec_out,
                              v + j * VEC);
        }
    }
    group_release(cnt, cnt + groups, g, k);
}

template <class S, int NV>
__device__ __forceinline__ void bwd_stream(const typename S::T* gy, const typename S::T* y, typename S::T* gx,
                                           long long rows, long long cols, int op, int k, long long chunk,
                                           double* part, unsigned long long* cnt) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    __shared__ double scratch[33];
    __shared__ double slots[64];
    const RowShare sh = row_share(k, chunk, cols);
    if (sh.idle()) return;
    const long long groups = sh.groups, g = sh.g, c0 = sh.c0, n = sh.n;
    const int p = sh.p;
    const long long tile = (long long)blockDim.x * EPT;
    unsigned long long round = 0;
    for (long long row = g; row < rows; row += groups, ++round) {
        const long long off = row * cols + c0;
        const int mis = misalign<S>(y + off);
        const bool vec_g = misalign<S>(gy + off) == mis;
        const bool vec_o = misalign<S>(gx + off) == mis;
        double acc = 0.0;
        for (long long base = 0; base < n + mis; base += tile) {
            A yv[EPT], gv[EPT];
#pragma unroll
            for (int j = 0; j < NV; ++j) {
                const long long e0 = slot_start<S>(base, j, threadIdx.x, blockDim.x, mis);
                load_slot<S>(y + off, e0, n, true, yv + j * VEC, A(0));
                load_slot<S>(gy + off, e0, n, vec_g, gv + j * VEC, A(0));
            }
            acc += held_dot(yv, gv, op);
        }
        double s = block_sum_1b(acc, slots + 32 * (round & 1));
        if (k > 1) s = group_sum(s, part, cnt, g, k, p, round, scratch);
        for (long long base = (n + mis - 1) / tile * tile; base >= 0; base -= tile) {
            A yv[EPT], gv[EPT];
#pragma unroll
            for (int j = 0; j < NV; ++j) {
                const long long e0 = slot_start<S>(base, j, threadIdx.x, blockDim.x, mis);
                load_slot<S>(y + off, e0, n, true, yv + j * VEC, A(0));
                load_slot<S>(gy + off, e0, n, vec_g, gv + j * VEC, A(0));
            }
            held_bwd_finish<S>(yv, gv, op, s);
#pragma unroll
            for (int j = 0; j < NV; ++j)
                store_slot<S>(gx + off, slot_start<S>(base, j, threadIdx.x, blockDim.x, mis), n, vec_o,
                              gv + j * VEC);
        }
    }
    group_release(cnt, cnt + groups, g, k);
}

// ---------------------------------------------------------------------------
// logsumexp: read-only, so one online pass is all it needs, and it holds
// nothing. The (max, sum) pair runs in double and each exp is a double exp:
// logsumexp subtracts nothing from the sum, but m + log(sum) cancels when the
// result is near 0, and a float exp's 1e-7 error would then exceed the float32
// tolerance against the float64 reference. `width` lanes per row (width <= 32,
// shuffles only) or, with width == 0, whole blocks, k per row, as the stream
// regime. Output: float32 (float64 for float64 input), one value per row.

template <class S, int NV>
__device__ __forceinline__ MaxSum<double> lse_chunk(const typename S::T* p, long long n, int lane, int width) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    const int mis = misalign<S>(p);
    const long long tile = (long long)width * EPT;
    MaxSum<double> t = empty_maxsum<double>();
    for (long long base = 0; base < n + mis; base += tile) {
        A v[EPT];
#pragma unroll
        for (int j = 0; j < NV; ++j)
            load_slot<S>(p, slot_start<S>(base, j, lane, width, mis), n, true, v + j * VEC, -inf_of(A(0)));
        t = merge(t, values_stats<false, A, double>(v));
    }
    return t;
}

template <class S, int NV>
__device__ __forceinline__ void lse_warp(const typename S::T* x, typename S::A* lse, long long rows, long long cols,
                                         int width) {
    const int lane = threadIdx.x & (width - 1);
    const int rpb = blockDim.x / width;
    const long long nrb = (rows + rpb - 1) / rpb;
    for (long long rb = blockIdx.x; rb < nrb; rb += gridDim.x) {
        const long long row = rb * rpb + threadIdx.x / width;
        const bool valid = row < rows;
        // Loop trip counts differ between a warp's rows; the shuffles come after
        // the loop, where the warp has reconverged.
        MaxSum<double> t = lse_chunk<S, NV>(x + (valid ? row : 0) * cols, valid ? cols : 0, lane, width);
        t = warp_merge(t, width);
        if (valid && lane == 0) lse[row] = typename S::A(lse_of(t));
    }
}

template <class S, int NV>
__device__ __forceinline__ void lse_block(const typename S::T* x, typename S::A* lse, long long rows, long long cols,
                                          int k, long long chunk, double* part, unsigned long long* cnt) {
    __shared__ MaxSum<double> scratch[33];
    __shared__ MaxSum<double> slots[64];
    const RowShare sh = row_share(k, chunk, cols);
    if (sh.idle()) return;
    const long long groups = sh.groups, g = sh.g, c0 = sh.c0, n = sh.n;
    const int p = sh.p;
    unsigned long long round = 0;
    for (long long row = g; row < rows; row += groups, ++round) {
        MaxSum<double> t = lse_chunk<S, NV>(x + row * cols + c0, n, threadIdx.x, blockDim.x);
        t = block_merge_1b(t, slots + 32 * (round & 1));
        if (k > 1) t = group_merge(t, part, cnt, g, k, p, round, scratch);
        if (p == 0 && threadIdx.x == 0) lse[row] = typename S::A(lse_of(t));
    }
    group_release(cnt, cnt + groups, g, k);
}

}  // namespace gs

// ---------------------------------------------------------------------------
// The extern "C" entry points (one per compiled variant, with its C signature and
// launch bounds) are generated from the kernel table, gpu_softmax/_cuda/kernels.py,
// and appended to this text by the loader. The launch bounds are what the
// planner's occupancy model relies on: they cap registers so that `min blocks`
// blocks of `max threads` fit on an SM (ptxas must then not spill: the compile check).
