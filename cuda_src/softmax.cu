// softmax, log_softmax, logsumexp and their backward passes, over rows of `cols`
// contiguous elements (the launcher moves any other axis last first).
//
// Kernel templates, picked per call by the regime table in
// gpu_softmax/_cuda/softmax.py:
//   warp   - rows up to ~1k: `width` lanes (1..32) own one row, held in
//            registers; several rows per warp when rows are tiny.
//   block  - rows up to what fits in one or several blocks' registers: each
//            block holds a chunk of a row in registers; with k > 1 blocks per
//            row they exchange (max, sum) partials through a small workspace
//            (rows split across co-resident blocks), so the row is read from
//            memory once and written once whatever its length.
//   stream - rows too long to hold on chip: online (max, sum) over the chunk,
//            then a second read for the write; chunks split across k blocks
//            the same way, so no row is read more than twice.
//   lse    - logsumexp writes one value per row and holds nothing: a single
//            online read, `width` lanes per row or k blocks per row.
// softmax vs log_softmax (and the two backward passes) is a runtime argument:
// it only changes the epilogue, and keeping it out of the template list halves
// the number of compiled variants.
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
// log_softmax (exp in double for the same cancellation reason).
template <class A, int EPT>
__device__ __forceinline__ void held_bwd_finish(const A (&yv)[EPT], A (&gv)[EPT], int op, double s) {
    if (op == OP_SOFTMAX_BWD) {
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
        held_bwd_finish(yv, gv, op, s);
#pragma unroll
        for (int j = 0; j < NV; ++j)
            store_slot<S>(gx + off, slot_start<S>(0, j, lane, width, mis), n, vec_o, gv + j * VEC);
    }
}

// ---------------------------------------------------------------------------
// block regime: k blocks per row (k = 1: a block per row); block p of group g
// owns elements [p*chunk, min((p+1)*chunk, cols)) of rows g, g+groups, ...
// The chunk stays in registers between the read and the write, so in-place
// (y == x) is safe: every element is read and written by the same thread, and
// the chunks of a row do not overlap. `chunk` is a multiple of VEC, so every
// chunk of a row has the row's misalignment.

template <class S, int NV>
__device__ __forceinline__ void fwd_block(const typename S::T* x, typename S::T* y, long long rows, long long cols,
                                          int op, int k, long long chunk, typename S::A* part,
                                          unsigned long long* cnt) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    __shared__ MaxSum<A> scratch[33];
    const long long groups = gridDim.x / k;
    const long long g = blockIdx.x / k;
    const int p = (int)(blockIdx.x % k);
    if (g >= groups) return;  // whole groups only; the launcher never makes a partial one
    const long long c0 = (long long)p * chunk;
    const int n = (int)min(chunk, cols - c0);  // <= one block's capacity
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
        MaxSum<A> r = block_merge(t, scratch);
        if (k > 1) r = group_merge(r, part, cnt, g, k, p, round, scratch);
        held_finish(v, op, t.m, r);
        const bool vec_out = misalign<S>(y + off) == mis;
#pragma unroll
        for (int j = 0; j < NV; ++j)
            store_slot<S>(y + off, slot_start<S>(0, j, threadIdx.x, blockDim.x, mis), n, vec_out, v + j * VEC);
    }
}

template <class S, int NV>
__device__ __forceinline__ void bwd_block(const typename S::T* gy, const typename S::T* y, typename S::T* gx,
                                          long long rows, long long cols, int op, int k, long long chunk,
                                          double* part, unsigned long long* cnt) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    __shared__ double scratch[33];
    const long long groups = gridDim.x / k;
    const long long g = blockIdx.x / k;
    const int p = (int)(blockIdx.x % k);
    if (g >= groups) return;
    const long long c0 = (long long)p * chunk;
    const int n = (int)min(chunk, cols - c0);
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
        double s = block_sum(held_dot(yv, gv, op), scratch);
        if (k > 1) s = group_sum(s, part, cnt, g, k, p, round, scratch);
        held_bwd_finish(yv, gv, op, s);
#pragma unroll
        for (int j = 0; j < NV; ++j)
            store_slot<S>(gx + off, slot_start<S>(0, j, threadIdx.x, blockDim.x, mis), n, vec_o, gv + j * VEC);
    }
}

// ---------------------------------------------------------------------------
// stream regime: as the block regime, but the chunk is walked in tiles of
// blockDim.x * NV * VEC elements twice: first for the running (max, sum) (one
// exp per element, one merge per tile), then to write. The second read of an
// element is by the thread that read it first and writes it, so in-place is safe.

template <class S, int NV>
__device__ __forceinline__ void fwd_stream(const typename S::T* x, typename S::T* y, long long rows, long long cols,
                                           int op, int k, long long chunk, typename S::A* part,
                                           unsigned long long* cnt) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    __shared__ MaxSum<A> scratch[33];
    const long long groups = gridDim.x / k;
    const long long g = blockIdx.x / k;
    const int p = (int)(blockIdx.x % k);
    if (g >= groups) return;
    const long long c0 = (long long)p * chunk;
    const long long n = min(chunk, cols - c0);
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
        const MaxSum<A> r0 = block_merge(t, scratch);
        const MaxSum<A> r = k > 1 ? group_merge(r0, part, cnt, g, k, p, round, scratch) : r0;
        const bool vec_out = misalign<S>(y + off) == mis;
        const A inv = inv_sum_of(r);
        const A ls = log_sum_of(r);
        for (long long base = 0; base < n + mis; base += tile) {
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
}

template <class S, int NV>
__device__ __forceinline__ void bwd_stream(const typename S::T* gy, const typename S::T* y, typename S::T* gx,
                                           long long rows, long long cols, int op, int k, long long chunk,
                                           double* part, unsigned long long* cnt) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    __shared__ double scratch[33];
    const long long groups = gridDim.x / k;
    const long long g = blockIdx.x / k;
    const int p = (int)(blockIdx.x % k);
    if (g >= groups) return;
    const long long c0 = (long long)p * chunk;
    const long long n = min(chunk, cols - c0);
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
        double s = block_sum(acc, scratch);
        if (k > 1) s = group_sum(s, part, cnt, g, k, p, round, scratch);
        for (long long base = 0; base < n + mis; base += tile) {
            A yv[EPT], gv[EPT];
#pragma unroll
            for (int j = 0; j < NV; ++j) {
                const long long e0 = slot_start<S>(base, j, threadIdx.x, blockDim.x, mis);
                load_slot<S>(y + off, e0, n, true, yv + j * VEC, A(0));
                load_slot<S>(gy + off, e0, n, vec_g, gv + j * VEC, A(0));
            }
            held_bwd_finish(yv, gv, op, s);
#pragma unroll
            for (int j = 0; j < NV; ++j)
                store_slot<S>(gx + off, slot_start<S>(base, j, threadIdx.x, blockDim.x, mis), n, vec_o,
                              gv + j * VEC);
        }
    }
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
    const long long groups = gridDim.x / k;
    const long long g = blockIdx.x / k;
    const int p = (int)(blockIdx.x % k);
    if (g >= groups) return;
    const long long c0 = (long long)p * chunk;
    const long long n = min(chunk, cols - c0);
    unsigned long long round = 0;
    for (long long row = g; row < rows; row += groups, ++round) {
        MaxSum<double> t = lse_chunk<S, NV>(x + row * cols + c0, n, threadIdx.x, blockDim.x);
        t = block_merge(t, scratch);
        if (k > 1) t = group_merge(t, part, cnt, g, k, p, round, scratch);
        if (p == 0 && threadIdx.x == 0) lse[row] = typename S::A(lse_of(t));
    }
}

}  // namespace gs

// ---------------------------------------------------------------------------
// entry points. Names: gs_<fwd|bwd>_<warp|block|stream><NV>_<f16|bf16|f32|f64>,
// NV = 16-byte slots per thread per tile. The list must match ENTRY_POINTS in
// gpu_softmax/_cuda/softmax.py (a CPU test checks it). Launch bounds: warp
// kernels run 128 threads, block kernels up to 1024, stream kernels 512.

#define GS_KERNEL extern "C" __global__

#define GS_ENTRY_FWD_WARP(name, S, NV)                                                                       \
    GS_KERNEL void __launch_bounds__(128)                                                                    \
        name(const S::T* x, S::T* y, long long rows, long long cols, int op, int width) {                    \
        gs::fwd_warp<S, NV>(x, y, rows, cols, op, width);                                                    \
    }
#define GS_ENTRY_BWD_WARP(name, S, NV)                                                                       \
    GS_KERNEL void __launch_bounds__(128)                                                                    \
        name(const S::T* gy, const S::T* y, S::T* gx, long long rows, long long cols, int op, int width) {   \
        gs::bwd_warp<S, NV>(gy, y, gx, rows, cols, op, width);                                               \
    }
#define GS_ENTRY_FWD_BLOCK(name, S, NV)                                                                      \
    GS_KERNEL void __launch_bounds__(512) name(const S::T* x, S::T* y, long long rows, long long cols,      \
                                               int op, int k, long long chunk, S::A* part,                   \
                                               unsigned long long* cnt) {                                    \
        gs::fwd_block<S, NV>(x, y, rows, cols, op, k, chunk, part, cnt);                                     \
    }
#define GS_ENTRY_BWD_BLOCK(name, S, NV)                                                                      \
    GS_KERNEL void __launch_bounds__(512) name(const S::T* gy, const S::T* y, S::T* gx, long long rows,      \
                                               long long cols, int op, int k, long long chunk, double* part, \
                                               unsigned long long* cnt) {                                    \
        gs::bwd_block<S, NV>(gy, y, gx, rows, cols, op, k, chunk, part, cnt);                                \
    }
#define GS_ENTRY_FWD_STREAM(name, S, NV)                                                                     \
    GS_KERNEL void __launch_bounds__(512) name(const S::T* x, S::T* y, long long rows, long long cols,      \
                                               int op, int k, long long chunk, S::A* part,                   \
                                               unsigned long long* cnt) {                                    \
        gs::fwd_stream<S, NV>(x, y, rows, cols, op, k, chunk, part, cnt);                                    \
    }
#define GS_ENTRY_BWD_STREAM(name, S, NV)                                                                     \
    GS_KERNEL void __launch_bounds__(512) name(const S::T* gy, const S::T* y, S::T* gx, long long rows,      \
                                               long long cols, int op, int k, long long chunk, double* part, \
                                               unsigned long long* cnt) {                                    \
        gs::bwd_stream<S, NV>(gy, y, gx, rows, cols, op, k, chunk, part, cnt);                               \
    }
#define GS_ENTRY_LSE_WARP(name, S, NV)                                                                       \
    GS_KERNEL void __launch_bounds__(128)                                                                    \
        name(const S::T* x, S::A* lse, long long rows, long long cols, int width) {                          \
        gs::lse_warp<S, NV>(x, lse, rows, cols, width);                                                      \
    }
#define GS_ENTRY_LSE_BLOCK(name, S, NV)                                                                      \
    GS_KERNEL void __launch_bounds__(512) name(const S::T* x, S::A* lse, long long rows, long long cols,     \
                                               int k, long long chunk, double* part,                         \
                                               unsigned long long* cnt) {                                    \
        gs::lse_block<S, NV>(x, lse, rows, cols, k, chunk, part, cnt);                                       \
    }

// float32: 4 elements per slot
GS_ENTRY_FWD_WARP(gs_fwd_warp1_f32, gs::F32, 1)
GS_ENTRY_FWD_WARP(gs_fwd_warp2_f32, gs::F32, 2)
GS_ENTRY_FWD_WARP(gs_fwd_warp4_f32, gs::F32, 4)
GS_ENTRY_FWD_WARP(gs_fwd_warp8_f32, gs::F32, 8)
GS_ENTRY_BWD_WARP(gs_bwd_warp1_f32, gs::F32, 1)
GS_ENTRY_BWD_WARP(gs_bwd_warp2_f32, gs::F32, 2)
GS_ENTRY_BWD_WARP(gs_bwd_warp4_f32, gs::F32, 4)
GS_ENTRY_FWD_BLOCK(gs_fwd_block2_f32, gs::F32, 2)
GS_ENTRY_FWD_BLOCK(gs_fwd_block4_f32, gs::F32, 4)
GS_ENTRY_FWD_BLOCK(gs_fwd_block8_f32, gs::F32, 8)
GS_ENTRY_BWD_BLOCK(gs_bwd_block2_f32, gs::F32, 2)
GS_ENTRY_BWD_BLOCK(gs_bwd_block4_f32, gs::F32, 4)
GS_ENTRY_FWD_STREAM(gs_fwd_stream4_f32, gs::F32, 4)
GS_ENTRY_BWD_STREAM(gs_bwd_stream2_f32, gs::F32, 2)
GS_ENTRY_LSE_WARP(gs_lse_warp2_f32, gs::F32, 2)
GS_ENTRY_LSE_BLOCK(gs_lse_block2_f32, gs::F32, 2)

// float16: 8 elements per slot
GS_ENTRY_FWD_WARP(gs_fwd_warp1_f16, gs::F16, 1)
GS_ENTRY_FWD_WARP(gs_fwd_warp2_f16, gs::F16, 2)
GS_ENTRY_FWD_WARP(gs_fwd_warp4_f16, gs::F16, 4)
GS_ENTRY_BWD_WARP(gs_bwd_warp1_f16, gs::F16, 1)
GS_ENTRY_BWD_WARP(gs_bwd_warp2_f16, gs::F16, 2)
GS_ENTRY_FWD_BLOCK(gs_fwd_block1_f16, gs::F16, 1)
GS_ENTRY_FWD_BLOCK(gs_fwd_block2_f16, gs::F16, 2)
GS_ENTRY_FWD_BLOCK(gs_fwd_block4_f16, gs::F16, 4)
GS_ENTRY_BWD_BLOCK(gs_bwd_block1_f16, gs::F16, 1)
GS_ENTRY_BWD_BLOCK(gs_bwd_block2_f16, gs::F16, 2)
GS_ENTRY_FWD_STREAM(gs_fwd_stream2_f16, gs::F16, 2)
GS_ENTRY_BWD_STREAM(gs_bwd_stream1_f16, gs::F16, 1)
GS_ENTRY_LSE_WARP(gs_lse_warp1_f16, gs::F16, 1)
GS_ENTRY_LSE_BLOCK(gs_lse_block1_f16, gs::F16, 1)

// bfloat16 (uint16 words from the torch bridge): as float16
GS_ENTRY_FWD_WARP(gs_fwd_warp1_bf16, gs::BF16, 1)
GS_ENTRY_FWD_WARP(gs_fwd_warp2_bf16, gs::BF16, 2)
GS_ENTRY_FWD_WARP(gs_fwd_warp4_bf16, gs::BF16, 4)
GS_ENTRY_BWD_WARP(gs_bwd_warp1_bf16, gs::BF16, 1)
GS_ENTRY_BWD_WARP(gs_bwd_warp2_bf16, gs::BF16, 2)
GS_ENTRY_FWD_BLOCK(gs_fwd_block1_bf16, gs::BF16, 1)
GS_ENTRY_FWD_BLOCK(gs_fwd_block2_bf16, gs::BF16, 2)
GS_ENTRY_FWD_BLOCK(gs_fwd_block4_bf16, gs::BF16, 4)
GS_ENTRY_BWD_BLOCK(gs_bwd_block1_bf16, gs::BF16, 1)
GS_ENTRY_BWD_BLOCK(gs_bwd_block2_bf16, gs::BF16, 2)
GS_ENTRY_FWD_STREAM(gs_fwd_stream2_bf16, gs::BF16, 2)
GS_ENTRY_BWD_STREAM(gs_bwd_stream1_bf16, gs::BF16, 1)
GS_ENTRY_LSE_WARP(gs_lse_warp1_bf16, gs::BF16, 1)
GS_ENTRY_LSE_BLOCK(gs_lse_block1_bf16, gs::BF16, 1)

// float64: 2 elements per slot
GS_ENTRY_FWD_WARP(gs_fwd_warp1_f64, gs::F64, 1)
GS_ENTRY_FWD_WARP(gs_fwd_warp2_f64, gs::F64, 2)
GS_ENTRY_FWD_WARP(gs_fwd_warp4_f64, gs::F64, 4)
GS_ENTRY_FWD_WARP(gs_fwd_warp8_f64, gs::F64, 8)
GS_ENTRY_BWD_WARP(gs_bwd_warp1_f64, gs::F64, 1)
GS_ENTRY_BWD_WARP(gs_bwd_warp2_f64, gs::F64, 2)
GS_ENTRY_BWD_WARP(gs_bwd_warp4_f64, gs::F64, 4)
GS_ENTRY_FWD_BLOCK(gs_fwd_block2_f64, gs::F64, 2)
GS_ENTRY_FWD_BLOCK(gs_fwd_block4_f64, gs::F64, 4)
GS_ENTRY_FWD_BLOCK(gs_fwd_block8_f64, gs::F64, 8)
GS_ENTRY_BWD_BLOCK(gs_bwd_block2_f64, gs::F64, 2)
GS_ENTRY_BWD_BLOCK(gs_bwd_block4_f64, gs::F64, 4)
GS_ENTRY_FWD_STREAM(gs_fwd_stream4_f64, gs::F64, 4)
GS_ENTRY_BWD_STREAM(gs_bwd_stream2_f64, gs::F64, 2)
GS_ENTRY_LSE_WARP(gs_lse_warp2_f64, gs::F64, 2)
GS_ENTRY_LSE_BLOCK(gs_lse_block2_f64, gs::F64, 2)
