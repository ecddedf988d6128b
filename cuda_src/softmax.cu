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
//   stream - rows longer than one SM holds: online (max, sum) read (the
//            forward one piped through shared memory, two tiles deep), then a
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

// body(op) with the forward op as a constant in each call: the copies then carry
// neither the other op's code nor its registers. float64 keeps one copy, the op
// at run time: its double exp per element dwarfs the op tests, and two copies
// spill it.
template <class A, class F>
__device__ __forceinline__ void by_op(int op, F&& body) {
    if (sizeof(A) == 8) body(op);
    else if (op == OP_SOFTMAX) body(OP_SOFTMAX);
    else body(OP_LOG_SOFTMAX);
}

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

// Rows wholly on chip (warp and row regimes) need no online merge: the row max
// m first, then the exponentials against it. softmax: v[] becomes e(x), e the
// row's exp form (with_exp_form: ExpShift's FFMA + EX2, or for a wide max
// DirectExp), and a = their sum: e's factor is common to the row and cancels in
// v / a. log_softmax: (a, b) = (count at the max, sum of the others). Only a
// thread holding an element at the row max (an owner: its own max is the row's)
// counts, as count_sum: its sum is 1 + tiny, where a float sum would lose the
// tiny part log_softmax needs at the max. Every other thread's terms are all
// below 1 and sum as softmax's do (FFMA + EX2 + FADD); row_sums_end undoes their
// common factor once. `exact`: the thread sums as count_sum (an owner).
// row_sums gives the thread's part, row_finish the outputs from the row's totals.
template <class A, int EPT, class E>
__device__ __forceinline__ void row_sums(A (&v)[EPT], int op, bool exact, E e, A base, A& a, A& b) {
    if (op == OP_SOFTMAX) {
#pragma unroll
        for (int i = 0; i < EPT; ++i) {
            v[i] = e(v[i]);
            a += v[i];
        }
    } else if (exact) {
        count_sum<false>(v, base, a, b);
    } else {
#pragma unroll
        for (int i = 0; i < EPT; ++i) b += e(v[i]);
    }
}
template <class A, class E>
__device__ __forceinline__ void row_sums_end(int op, bool exact, E sh, A& b) {
    if (op != OP_SOFTMAX && !exact) b *= sh.fix;
}

// The offset a row's (or thread's) held values take their exponentials
// against, for max m: exp_offset(m), except that a wide max (shift_wide) would
// give ExpShift a factor past float's range, so the values become x - m and the
// offset 0: their exponentials need no factor, and log_softmax's
// (x - m) - log(sum) is the same float. One FSETP tells the common case
// (|m| < 2^30) from the rest; no select per element.
template <class A, int EPT>
__device__ __forceinline__ A held_exp_base(A (&v)[EPT], A m) {
    if constexpr (sizeof(A) == 8) {
        return exp_offset(m);
    } else {
        if (fabsf(m) < 1073741824.0f) return m;
        if (shift_wide(m)) {
#pragma unroll
            for (int i = 0; i < EPT; ++i) v[i] -= m;
        }
        return 0.0f;
    }
}

// An infinite max gives the reference's NaN row (as inv_sum_of, log_sum_of).
template <class A>
__device__ __forceinline__ A row_inv(A m, A a) {
    return is_inf(m) ? nan_of(m) : A(1) / a;
}
template <class A>
__device__ __forceinline__ A row_log_sum(A m, A a, A b) {
    MaxSum<A> r;
    r.m = m;
    r.r = (a - A(1)) + b;
    return log_sum_of(r);
}
template <class A, int EPT>
__device__ __forceinline__ void row_finish(A (&v)[EPT], int op, A m, A inv, A ls) {
    if (op == OP_SOFTMAX) {
#pragma unroll
        for (int i = 0; i < EPT; ++i) v[i] *= inv;
    } else {
#pragma unroll
        for (int i = 0; i < EPT; ++i) v[i] = (v[i] - m) - ls;
    }
}

// Backward row sums. float64 storage sums in double. Every other storage sums
// in float as a compensated pair (hi + lo): the epilogue subtracts the sum from
// grad_y, so a plain float sum would carry its rounding error (about eps times
// the sum of |terms|) straight into every element where grad_y is close to it
// (catastrophic cancellation against the float64 reference); the pair keeps
// that error near eps^2, as the double sum did, without FP64 instructions.
struct FloatPair {
    float hi, lo;
};
template <class A>
struct BwdSum {
    typedef FloatPair type;
};
template <>
struct BwdSum<double> {
    typedef double type;
};

// TwoSum (Knuth): h = fl(a + b) and its exact rounding error, for any
// magnitudes. The _rn intrinsics keep the compiler from fusing an add with a
// neighbouring multiply, which would break the exactness.
__device__ __forceinline__ float two_sum(float a, float b, float& err) {
    const float h = __fadd_rn(a, b);
    const float bb = __fadd_rn(h, -a);
    err = __fadd_rn(__fadd_rn(a, -__fadd_rn(h, -bb)), __fadd_rn(b, -bb));
    return h;
}
__device__ __forceinline__ void sum_add(FloatPair& s, float x) {
    float err;
    s.hi = two_sum(s.hi, x, err);
    s.lo += err;
}
__device__ __forceinline__ void sum_add(double& s, double x) { s += x; }
// Products of 16-bit values are exact in float; a float32 product's rounding
// error comes exactly from one FMA.
template <bool EXACT_PRODUCT>
__device__ __forceinline__ void sum_add_product(FloatPair& s, float g, float y) {
    const float p = __fmul_rn(g, y);
    if (!EXACT_PRODUCT) s.lo += fmaf(g, y, -p);
    sum_add(s, p);
}
template <bool EXACT_PRODUCT>
__device__ __forceinline__ void sum_add_product(double& s, double g, double y) { s += g * y; }
// Bitwise symmetric (the lo parts are added before the error), so every lane of
// an xor butterfly ends with the same pair.
__device__ __forceinline__ FloatPair sum_merge(FloatPair a, FloatPair b) {
    float err;
    FloatPair r;
    r.hi = two_sum(a.hi, b.hi, err);
    r.lo = (a.lo + b.lo) + err;
    return r;
}
__device__ __forceinline__ double sum_merge(double a, double b) { return a + b; }
__device__ __forceinline__ FloatPair zero_sum(FloatPair) { return FloatPair{0.0f, 0.0f}; }
__device__ __forceinline__ double zero_sum(double) { return 0.0; }
__device__ __forceinline__ FloatPair shfl_sum(FloatPair v, int off, int width) {
    v.hi = __shfl_xor_sync(0xffffffffu, v.hi, off, width);
    v.lo = __shfl_xor_sync(0xffffffffu, v.lo, off, width);
    return v;
}
__device__ __forceinline__ double shfl_sum(double v, int off, int width) {
    return __shfl_xor_sync(0xffffffffu, v, off, width);
}
template <class D>
__device__ __forceinline__ D warp_pair_sum(D v, int width) {
    for (int off = width >> 1; off > 0; off >>= 1) v = sum_merge(v, shfl_sum(v, off, width));
    return v;
}
// One barrier, as block_sum_1b (`slots` one of two 32-entry buffers, alternated).
template <class D>
__device__ __forceinline__ D block_pair_sum_1b(D v, D* slots) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_pair_sum(v, 32);
    if (lane == 0) slots[warp] = v;
    __syncthreads();
    return warp_pair_sum(lane < nwarps ? slots[lane] : zero_sum(v), 32);
}
// The cross-block exchange (k > 1) is per row, in double: the workspace's type.
__device__ __forceinline__ double sum_to_double(FloatPair s) { return double(s.hi) + double(s.lo); }
__device__ __forceinline__ double sum_to_double(double s) { return s; }
__device__ __forceinline__ void sum_from_double(double d, FloatPair& s) {
    s.hi = float(d);
    s.lo = float(d - double(s.hi));
}
__device__ __forceinline__ void sum_from_double(double d, double& s) { s = d; }
template <class D>
__device__ __forceinline__ D group_pair_sum(D s, double* part, unsigned long long* cnt, long long g, int k, int p,
                                            unsigned long long round, double* scratch) {
    D r;
    sum_from_double(group_sum(sum_to_double(s), part, cnt, g, k, p, round, scratch), r);
    return r;
}

template <class S, int EPT>
__device__ __forceinline__ void held_dot(const typename S::A (&yv)[EPT], const typename S::A (&gv)[EPT], int op,
                                         typename BwdSum<typename S::A>::type& s) {
    constexpr bool EXACT = sizeof(typename S::T) == 2;
    if (op == OP_SOFTMAX_BWD) {
#pragma unroll
        for (int i = 0; i < EPT; ++i) sum_add_product<EXACT>(s, gv[i], yv[i]);
    } else {
#pragma unroll
        for (int i = 0; i < EPT; ++i) sum_add(s, gv[i]);
    }
}

// softmax_backward's row sum, sum(g * y), for float accumulators, without a
// compensated add per element (TwoSum and the product's error: 10 instructions).
// A thread first bounds its terms, bound >= sum |g * y| (one FFMA an element),
// and takes sigma, a power of two >= 4 * bound, so every |g * y| <= sigma / 2.
// Then q = fma(g, y, sigma) - sigma is the product rounded to a multiple of
// d = sigma * 2^-24 (the subtraction is exact: Sterbenz), and the thread's q add
// up exactly in float: every partial sum is a multiple of d below sigma = 2^24 d.
// The rest, r = g * y - q (|r| <= d, one rounding in its FMA), adds up in plain
// float, with an error near n * eps * d, of the order of the TwoSum pair's
// (n * eps^2 * sum |terms|). Five instructions an element. A bound that is not
// finite, or too large for sigma + q to stay finite, takes the TwoSum pair
// instead (infinities and NaN then propagate as the reference's).
template <int N>
__device__ __forceinline__ void dot_bound(const float (&y)[N], const float (&g)[N], float& bound) {
#pragma unroll
    for (int i = 0; i < N; ++i) bound = fmaf(fabsf(g[i]), fabsf(y[i]), bound);
}
__device__ __forceinline__ bool split_fits(float bound) { return bound < 0x1p123f; }  // false for NaN
__device__ __forceinline__ float split_sigma(float bound) {
    // 4 * bound rounded up to a power of two (0 stays 0: every term is then 0).
    return __int_as_float((__float_as_int(4.0f * bound) + 0x007fffff) & 0xff800000);
}
template <int N>
__device__ __forceinline__ void dot_split(const float (&y)[N], const float (&g)[N], float sigma, float& q,
                                          float& r) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
        const float hi = __fadd_rn(fmaf(g[i], y[i], sigma), -sigma);
        q = __fadd_rn(q, hi);
        r = __fadd_rn(r, fmaf(g[i], y[i], -hi));
    }
}
__device__ __forceinline__ FloatPair pair_of(float q, float r) {
    FloatPair p;
    p.hi = two_sum(q, r, p.lo);
    return p;
}

// A thread's share of a backward row sum. `visit(f)` calls f(y, grad_y) on each
// of the thread's value arrays (held slots, then staged ones read back).
template <class S, class Visit>
__device__ __forceinline__ typename BwdSum<typename S::A>::type thread_dot(int op, Visit visit) {
    typedef typename BwdSum<typename S::A>::type D;
    if constexpr (sizeof(typename S::A) == 4) {
        if (op == OP_SOFTMAX_BWD) {
            float bound = 0.0f;
            visit([&](const auto& y, const auto& g) { dot_bound(y, g, bound); });
            if (split_fits(bound)) {
                const float sigma = split_sigma(bound);
                float q = 0.0f, r = 0.0f;
                visit([&](const auto& y, const auto& g) { dot_split(y, g, sigma, q, r); });
                return pair_of(q, r);
            }
        }
    }
    D s = zero_sum(D());
    visit([&](const auto& y, const auto& g) { held_dot<S>(y, g, op, s); });
    return s;
}

// exp(y) / 2 as scale * (hi + lo), hi + lo within 2^-26.9 of the exact value
// relative, in float alone. y = k ln2 + r + d: r = y - k L in one FMA with L =
// ln2 rounded to float is exact (k L is a multiple of 2^-24, |r| <= ln2/2), and
// d = k (ln2 - L), |d| < 2^-21, enters as e^(r + d) = e^r (1 + d). e^r = 1 + a,
// a = r + r^2 q(r) in one FMA, q a degree-4 fit of (e^r - 1 - r) / r^2 on |r| <=
// ln2/2; that FMA's rounding (a_lo) and 1 + a's are exact splits (|r| >= |r^2
// q|, 1 >= |a|). scale = 2^(k-1), one exact power of two for k - 1 in [-127,
// 127], that is y in [-87.6, 89] (callers take larger y elsewhere; the
// NaN-keeping clamp raises smaller ones): 2^-127 builds as 0, so exp(-inf) and
// exponentials below about 2^-125 give exactly 0, as flush-to-zero float does.
// Callers fold the factor 2 into the row sum, so e / 2 never overflows.
struct ExpPair {
    float hi, lo, scale;
};
__device__ __forceinline__ ExpPair exp_pair_half(float y) {
    const float c = nan_max(y, -87.6f);
    const float shift = 12582912.0f;  // 1.5 * 2^23: t's low mantissa bits hold k = rint(c log2 e)
    const float t = fmaf(c, 1.4426950408889634f, shift);
    const float kf = t - shift;
    const float r = fmaf(kf, -0.693147182464599609375f, c);
    float q = 0.0013754429528489709f;
    q = fmaf(q, r, 0.008368912152945995f);
    q = fmaf(q, r, 0.04166948050260544f);
    q = fmaf(q, r, 0.166665181517601f);
    q = fmaf(q, r, 0.49999988079071045f);
    const float r2 = __fmul_rn(r, r);
    const float a = fmaf(r2, q, r);
    const float a_lo = fmaf(r2, q, __fadd_rn(r, -a));
    ExpPair e;
    e.hi = __fadd_rn(1.0f, a);
    e.lo = fmaf(e.hi, __fmul_rn(kf, 1.904654323148236e-09f), __fadd_rn(__fadd_rn(__fadd_rn(1.0f, -e.hi), a), a_lo));
    // (k - 1 + 127) << 23 from t's bits: k = bits(t) - 0x4B400000.
    e.scale = __int_as_float((__float_as_int(t) - (0x4B400000 - 126)) << 23);
    return e;
}

// float32 log_softmax_backward's g - exp(y) S for a thread's group of values.
// Fast form: exp(y) = hi + lo (exp_pair_half), S = hi + lo, the three products
// that matter summed by FMA into g, the big one last: within 0.5 ulp of the
// result plus 2^-24 |g| (the inner FMAs round at g's scale) plus 2^-26.9 |exp(y)
// S|. Where the result cancels below 2^-6 of exp(y) S (those terms would pass
// 2^-18 of it), where y > 89 or |S| >= 2^126 (outside the fast form's range),
// or with a NaN (no comparison holds), the group takes the reference's double
// instead: one element at a time, picked out of the registers by index, so the
// double code is there once and holds one element's registers.
template <int EPT>
__device__ __forceinline__ void log_bwd_finish(const float* yv, float* gv, FloatPair s) {
    const float s2_hi = 2.0f * s.hi, s2_lo = 2.0f * s.lo, s2_cut = 0x1p-6f * s2_hi;
    bool exact = fabsf(s.hi) < 0x1p126f;
    float out[EPT];
#pragma unroll
    for (int i = 0; i < EPT; ++i) {
        const ExpPair e = exp_pair_half(yv[i]);
        const float hi = e.hi * e.scale, lo = e.lo * e.scale;
        out[i] = fmaf(-hi, s2_hi, fmaf(-lo, s2_hi, fmaf(-hi, s2_lo, gv[i])));
        exact &= (yv[i] <= 89.0f) & (fabsf(out[i]) >= fabsf(hi * s2_cut));
    }
    if (!exact) {
        const double d = double(pinned(s.hi)) + double(pinned(s.lo));
#pragma unroll 1
        for (int i = 0; i < EPT; ++i) {
            float g = gv[0], y = yv[0];
#pragma unroll
            for (int j = 1; j < EPT; ++j) {
                g = (i == j) ? gv[j] : g;
                y = (i == j) ? yv[j] : y;
            }
            const float r = float(double(g) - exp(double(y)) * d);
#pragma unroll
            for (int j = 0; j < EPT; ++j) out[j] = (i == j) ? r : out[j];
        }
    }
#pragma unroll
    for (int i = 0; i < EPT; ++i) gv[i] = out[i];
}

// grad_x into gv: y * (gy - dot) for softmax, gy - exp(y) * sum(gy) for
// log_softmax. softmax: (gy - hi) - lo keeps the pair's accuracy through the
// cancellation (gy - hi is exact where they are close). 16-bit storage rounds
// the result to 11 (8) significant bits, far above float's error on these terms.
// log_softmax's exp(y) multiplies the sum, so any rounding of it shows times
// |S|: even a correctly rounded float exp leaves float32's error above torch's
// own (tests/emulator/run_accuracy.py --backward); float32 takes log_bwd_finish.
template <class S, class A, int EPT>
__device__ __forceinline__ void held_bwd_finish(const A (&yv)[EPT], A (&gv)[EPT], int op, FloatPair s) {
    // A sum that reached inf (or NaN) is its hi alone: TwoSum's error term is NaN there.
    if (!(fabsf(s.hi) < inf_of(s.hi))) s.lo = 0.0f;
    if (op == OP_SOFTMAX_BWD) {
#pragma unroll
        for (int i = 0; i < EPT; ++i) gv[i] = yv[i] * ((gv[i] - s.hi) - s.lo);
    } else if constexpr (sizeof(typename S::T) == 2) {
#pragma unroll
        for (int i = 0; i < EPT; ++i) {
            const float e = expf(yv[i]);
            gv[i] = fmaf(-e, s.hi, fmaf(-e, s.lo, gv[i]));
        }
    } else {
        // A slot at a time: the fallback's copy of the group stays 4 registers.
#pragma unroll
        for (int i = 0; i < EPT; i += 4) log_bwd_finish<4>(yv + i, gv + i, s);
    }
}
template <class S, class A, int EPT>
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
__device__ __forceinline__ void fwd_warp_rows(const typename S::T* x, typename S::T* y, long long rows,
                                              long long cols, int op, int width) {
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
        const A mt = values_max(v, -inf_of(A(0)));
        const A m = warp_max(mt, width);
        const bool owner = mt == m;
        const A base = held_exp_base(v, m);
        const ExpShift<A> sh = exp_shift(base);
        A a = A(0), b = A(0);
        row_sums(v, op, owner, sh, base, a, b);
        row_sums_end(op, owner, sh, b);
        a = warp_sum(a, width);
        if (op != OP_SOFTMAX) b = warp_sum(b, width);
        row_finish(v, op, base, row_inv(m, a), row_log_sum(m, a, b));
        const bool vec_out = misalign<S>(y + off) == mis;
#pragma unroll
        for (int j = 0; j < NV; ++j)
            store_slot<S>(y + off, slot_start<S>(0, j, lane, width, mis), n, vec_out, v + j * VEC);
    }
}

template <class S, int NV>
__device__ __forceinline__ void fwd_warp(const typename S::T* x, typename S::T* y, long long rows, long long cols,
                                         int op, int width) {
    by_op<typename S::A>(op, [&](int o) { fwd_warp_rows<S, NV>(x, y, rows, cols, o, width); });
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
        typedef typename BwdSum<A>::type D;
        D s = zero_sum(D());
        held_dot<S>(yv, gv, op, s);
        s = warp_pair_sum(s, width);
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

// Staged slots j < staged_full(...) lie wholly inside the row: a staged slot is
// never a row's first (the held slots come first), so only the end can cut it.
template <class S>
__device__ __forceinline__ int staged_full(int cols, int mis, int tid, int nt, int nv, int ss) {
    // Usually all of them (the division below costs some 25 instructions).
    if (((nv + ss - 1) * nt + tid + 1) * S::VEC <= cols + mis) return ss;
    const int last = (cols + mis) / S::VEC - 1 - tid;  // the last whole slot, less this thread's offset
    const int n = last < 0 ? 0 : last / nt - nv + 1;
    return n < 0 ? 0 : (n < ss ? n : ss);
}

// One staged slot read back as accumulators: FULL slots skip the element bounds.
template <class S, bool FULL>
__device__ __forceinline__ void unstage(const uint4* src, int e0, int n, typename S::A* dst, typename S::A pad) {
    if (FULL) {
        unstage_full<S>(src, dst);
    } else {
        unstage_slot<S>(src, e0, n, dst, pad);
    }
}

template <bool B>
struct Full {
    static constexpr bool value = B;
};

// STAGED = false: rows held wholly in registers (ss == 0), compiled without the
// staged slots' loops, tests and branches (a fifth of such a row's instructions).
template <class S, int NV, bool STAGED>
__device__ __forceinline__ void fwd_row_rows(const typename S::T* x, typename S::T* y, long long rows, int cols,
                                             int op, int ss) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    extern __shared__ uint4 gs_stage[];
    __shared__ MaxSum<A> slots[64];  // two buffers for the single-barrier reduction
    const int tid = threadIdx.x, nt = blockDim.x;
    // slots: the max reduction uses the first 32 entries, the sums the other 32;
    // consecutive reductions alternate, as block_merge_1b needs.
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const typename S::T* xr = x + row * cols;
        typename S::T* yr = y + row * cols;
        const int mis = misalign<S>(xr);
        if constexpr (STAGED) {
            for (int j = 0; j < ss; ++j)
                stage_slot<S>(xr, slot_start<S>(0, NV + j, tid, nt, mis), cols, true, gs_stage + j * nt + tid);
        }
        // This thread's held slots all inside the row: one test for all of them.
        const bool held_full = (tid > 0 || mis == 0) && ((NV - 1) * nt + tid + 1) * VEC <= cols + mis;
        A v[EPT];
        A mv;  // this thread's max, from the storage words where its slots are whole
        if (held_full) {
            uint4 raw[NV];
#pragma unroll
            for (int j = 0; j < NV; ++j)
                raw[j] = *reinterpret_cast<const uint4*>(xr + slot_start<S>(0, j, tid, nt, mis));
            mv = slots_max<S>(raw, -inf_of(A(0)));
#pragma unroll
            for (int j = 0; j < NV; ++j) unpack_slot<S>(raw[j], v + j * VEC);
        } else {
#pragma unroll
            for (int j = 0; j < NV; ++j)
                load_slot<S>(xr, slot_start<S>(0, j, tid, nt, mis), cols, true, v + j * VEC, -inf_of(A(0)));
            mv = values_max(v, -inf_of(A(0)));
        }
        const int full = STAGED ? staged_full<S>(cols, mis, tid, nt, NV, ss) : 0;
        // Runs body(j, Full<true>) over the first `whole` staged slots, body(j, Full<false>) over the rest.
        // Whole slots four at a time (one loop test per four); float64 rows spill so.
        constexpr int UNROLL = sizeof(A) == 8 ? 1 : 4;
        auto each_staged = [&](auto body, int whole) {
            if constexpr (STAGED) {
#pragma unroll(UNROLL)
                for (int j = 0; j < whole; ++j) body(j, Full<true>());
                for (int j = whole; j < ss; ++j) body(j, Full<false>());
            }
        };
        if constexpr (STAGED) cp_async_wait_all();
        // The whole row is on chip, so no online (max, sum) merge: the row max
        // first (one reduction), then the exponentials against it (a second),
        // which also makes the exp form's factor common to the row: it cancels.
        each_staged([&](int j, auto f) {
            A w[VEC];
            unstage<S, decltype(f)::value>(gs_stage + j * nt + tid, slot_start<S>(0, NV + j, tid, nt, mis), cols, w,
                                           -inf_of(A(0)));
            mv = values_max(w, mv);
        }, full);
        const A m = block_max_key_1b(mv, reinterpret_cast<A*>(slots));
        const bool owner = mv == m;
        const A base = held_exp_base(v, m);
        const ExpShift<A> sh = exp_shift(base);
        A a = A(0), b = A(0);
        row_sums(v, op, owner, sh, base, a, b);
        // float32 softmax writes the exponentials back over its staged slots (the
        // write then needs no second exp); 16-bit slots hold the raw 16-bit words.
        // A wide max's factor is 1 in both forms, as an ordinary max's is sh's.
        constexpr bool KEEP = sizeof(typename S::T) == sizeof(A);
        if constexpr (STAGED) with_exp_form(m, [&](auto e) {
            each_staged([&](int j, auto f) {
                A w[VEC];
                uint4* slot = gs_stage + j * nt + tid;
                unstage<S, decltype(f)::value>(slot, slot_start<S>(0, NV + j, tid, nt, mis), cols, w,
                                               -inf_of(A(0)));
                row_sums(w, op, owner, e, exp_offset(m), a, b);
                if constexpr (KEEP) {
                    if (op == OP_SOFTMAX) {
                        union {
                            uint4 u;
                            A t[VEC];
                        } buf;
#pragma unroll
                        for (int i = 0; i < VEC; ++i) buf.t[i] = w[i];
                        *slot = buf.u;
                    }
                }
            }, full);
        });
        row_sums_end(op, owner, sh, b);
        if (op == OP_SOFTMAX) {
            a = block_sum_1b(a, reinterpret_cast<A*>(slots + 32));
        } else {
            // r = (count at the max - 1) + the other terms, in one sum: each owner
            // adds its own (count - 1) + sum (exact for the usual count of 1, so
            // the tiny part survives), the barrier counts the owners, and
            // row_log_sum's (a - 1) + b adds the owners past the first.
            int owners;
            b = block_sum_count_1b(owner ? (a - A(1)) + b : b, owner, reinterpret_cast<A*>(slots + 32), owners);
            a = A(owners);
        }
        // Each op's epilogue constant only (the other's would cost a divide or a log per row).
        const A inv = op == OP_SOFTMAX ? row_inv(m, a) : A(0);
        const A ls = op == OP_SOFTMAX ? A(0) : row_log_sum(m, a, b);
        row_finish(v, op, base, inv, ls);
        const bool vec_out = misalign<S>(yr) == mis;
        if (held_full && vec_out) {
#pragma unroll
            for (int j = 0; j < NV; ++j) store_full<S>(yr + slot_start<S>(0, j, tid, nt, mis), v + j * VEC);
        } else {
#pragma unroll
            for (int j = 0; j < NV; ++j)
                store_slot<S>(yr, slot_start<S>(0, j, tid, nt, mis), cols, vec_out, v + j * VEC);
        }
        // Whole staged slots go straight to one vector store when y shares x's alignment.
        const int whole_out = vec_out ? full : 0;
        auto write_staged = [&](auto value) {
            each_staged([&](int j, auto f) {
                constexpr bool FULL = decltype(f)::value;
                const int e0 = slot_start<S>(0, NV + j, tid, nt, mis);
                A w[VEC];
                unstage<S, FULL>(gs_stage + j * nt + tid, e0, cols, w, A(0));
#pragma unroll
                for (int i = 0; i < VEC; ++i) w[i] = value(w[i]);
                if (FULL) {
                    store_full<S>(yr + e0, w);
                } else {
                    store_slot<S>(yr, e0, cols, vec_out, w);
                }
            }, whole_out);
        };
        if (op == OP_SOFTMAX && KEEP) {
            write_staged([&](A w) { return w * inv; });
        } else if (op == OP_SOFTMAX) {
            with_exp_form(m, [&](auto e) { write_staged([&](A w) { return e(w) * inv; }); });
        } else {
            write_staged([&](A w) { return (w - m) - ls; });
        }
    }
}

template <class S, int NV>
__device__ __forceinline__ void fwd_row(const typename S::T* x, typename S::T* y, long long rows, int cols, int op,
                                        int ss) {
    if (ss > 0) {
        by_op<typename S::A>(op, [&](int o) { fwd_row_rows<S, NV, true>(x, y, rows, cols, o, ss); });
    } else {
        by_op<typename S::A>(op, [&](int o) { fwd_row_rows<S, NV, false>(x, y, rows, cols, o, 0); });
    }
}

// Staging buffer: [2][ss][blockDim.x] slots, y's first, then grad_y's. A staged
// slot past the row's ends holds zeros (stage_slot), which add nothing to either
// sum, so the sum reads every staged slot without element bounds; only the
// write needs them, at the row's last slots. STAGED = false (ss == 0) compiles
// the rows held wholly in registers without the staged loops, as fwd_row_rows.
template <class S, int NV, bool STAGED>
__device__ __forceinline__ void bwd_row_rows(const typename S::T* gy, const typename S::T* y, typename S::T* gx,
                                             long long rows, int cols, int op, int ss) {
    typedef typename S::A A;
    typedef typename BwdSum<A>::type D;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    constexpr int UNROLL = sizeof(A) == 8 ? 1 : 4;  // whole staged slots four per loop test; float64 spills so
    extern __shared__ uint4 gs_stage[];
    __shared__ D slots[64];
    const int tid = threadIdx.x, nt = blockDim.x;
    uint4* sy = gs_stage;
    uint4* sg = gs_stage + ss * nt;
    int parity = 0;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x, parity ^= 1) {
        const long long off = row * cols;
        const int mis = misalign<S>(y + off);
        const bool vec_g = misalign<S>(gy + off) == mis;
        const bool vec_o = misalign<S>(gx + off) == mis;
        // Staged slots j < full lie wholly inside the row (staged_full).
        const int full = STAGED ? staged_full<S>(cols, mis, tid, nt, NV, ss) : 0;
        auto each_staged = [&](auto body, int whole) {
            if constexpr (STAGED) {
#pragma unroll(UNROLL)
                for (int j = 0; j < whole; ++j) body(j, Full<true>());
                for (int j = whole; j < ss; ++j) body(j, Full<false>());
            }
        };
        // Whole slots with both arrays aligned: bare cp.async copies, issued back to back.
        each_staged([&](int j, auto f) {
            const int e0 = slot_start<S>(0, NV + j, tid, nt, mis);
            if (decltype(f)::value) {
                cp_async16(sy + j * nt + tid, y + off + e0);
                cp_async16(sg + j * nt + tid, gy + off + e0);
            } else {
                stage_slot<S>(y + off, e0, cols, true, sy + j * nt + tid);
                stage_slot<S>(gy + off, e0, cols, vec_g, sg + j * nt + tid);
            }
        }, vec_g ? full : 0);
        // This thread's held slots all inside the row: one test for all of them.
        const bool held_full = (tid > 0 || mis == 0) && ((NV - 1) * nt + tid + 1) * VEC <= cols + mis;
        A yv[EPT], gv[EPT];
        if (held_full && vec_g) {
#pragma unroll
            for (int j = 0; j < NV; ++j) {
                const int e0 = slot_start<S>(0, j, tid, nt, mis);
                load_full<S>(y + off + e0, yv + j * VEC);
                load_full<S>(gy + off + e0, gv + j * VEC);
            }
        } else {
#pragma unroll
            for (int j = 0; j < NV; ++j) {
                const int e0 = slot_start<S>(0, j, tid, nt, mis);
                load_slot<S>(y + off, e0, cols, true, yv + j * VEC, A(0));
                load_slot<S>(gy + off, e0, cols, vec_g, gv + j * VEC, A(0));
            }
        }
        if constexpr (STAGED) cp_async_wait_all();
        // Padding slots hold zeros: every staged slot is summed without bounds.
        D s = thread_dot<S>(op, [&](auto f) {
            f(yv, gv);
            each_staged([&](int j, auto) {
                A a[VEC], b[VEC];
                unstage_full<S>(sy + j * nt + tid, a);
                unstage_full<S>(sg + j * nt + tid, b);
                f(a, b);
            }, ss);
        });
        s = block_pair_sum_1b(s, slots + 32 * parity);
        held_bwd_finish<S>(yv, gv, op, s);
        if (held_full && vec_o) {
#pragma unroll
            for (int j = 0; j < NV; ++j) store_full<S>(gx + off + slot_start<S>(0, j, tid, nt, mis), gv + j * VEC);
        } else {
#pragma unroll
            for (int j = 0; j < NV; ++j)
                store_slot<S, int, false>(gx + off, slot_start<S>(0, j, tid, nt, mis), cols, vec_o, gv + j * VEC);
        }
        // Whole staged slots go straight to one vector store when gx shares y's alignment.
        each_staged([&](int j, auto f) {
            const int e0 = slot_start<S>(0, NV + j, tid, nt, mis);
            A a[VEC], b[VEC];
            unstage_full<S>(sy + j * nt + tid, a);
            unstage_full<S>(sg + j * nt + tid, b);
            held_bwd_finish<S>(a, b, op, s);
            if (decltype(f)::value) {
                store_full<S>(gx + off + e0, b);
            } else {
                store_slot<S, int, false>(gx + off, e0, cols, vec_o, b);
            }
        }, vec_o ? full : 0);
    }
}

template <class S, int NV>
__device__ __forceinline__ void bwd_row(const typename S::T* gy, const typename S::T* y, typename S::T* gx,
                                        long long rows, int cols, int op, int ss) {
    if (ss > 0) {
        bwd_row_rows<S, NV, true>(gy, y, gx, rows, cols, op, ss);
    } else {
        bwd_row_rows<S, NV, false>(gy, y, gx, rows, cols, op, 0);
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
    typedef typename BwdSum<A>::type D;
    __shared__ double scratch[33];
    __shared__ D slots[64];
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
        D s = zero_sum(D());
        held_dot<S>(yv, gv, op, s);
        s = block_pair_sum_1b(s, slots + 32 * (round & 1));
        if (k > 1) s = group_pair_sum(s, part, cnt, g, k, p, round, scratch);
        held_bwd_finish<S>(yv, gv, op, s);
#pragma unroll
        for (int j = 0; j < NV; ++j)
            store_slot<S>(gx + off, slot_start<S>(0, j, threadIdx.x, blockDim.x, mis), n, vec_o, gv + j * VEC);
    }
    group_release(cnt, cnt + groups, g, k);
}

// ---------------------------------------------------------------------------
// stream regime: as the block regime, but the chunk is walked in tiles of
// blockDim.x * NV * VEC elements twice: first for the running (max, sum), then,
// last tile first, to write: the tiles read last are the likeliest still in L2.
// The second read of an element is by the thread that read it first and writes
// it, so in-place is safe. Offsets within a chunk are int (the planner keeps
// chunks below 2**30 elements); only the first and last tile of a chunk can hold
// slots outside it, so every other tile takes whole 16-byte slots unchecked.

// One tile's slots of a chunk at p (n elements, misalignment mis): slot j of the
// thread starts at base + o0 + j * ss. `full`: the tile lies inside the chunk.
template <class S, int NV>
__device__ __forceinline__ void stream_tile_load(const typename S::T* p, int base, int o0, int ss, int n, bool full,
                                                 typename S::A* v, typename S::A pad) {
    constexpr int VEC = S::VEC;
    if (full) {
#pragma unroll
        for (int j = 0; j < NV; ++j) load_full<S>(p + (base + o0 + j * ss), v + j * VEC);
    } else {
#pragma unroll
        for (int j = 0; j < NV; ++j) load_slot<S, int>(p, base + o0 + j * ss, n, true, v + j * VEC, pad);
    }
}
template <class S, int NV>
__device__ __forceinline__ void stream_tile_store(typename S::T* p, int base, int o0, int ss, int n, bool full,
                                                  bool vec_ok, const typename S::A* v) {
    constexpr int VEC = S::VEC;
    if (full && vec_ok) {
#pragma unroll
        for (int j = 0; j < NV; ++j) store_full<S>(p + (base + o0 + j * ss), v + j * VEC);
    } else {
#pragma unroll
        for (int j = 0; j < NV; ++j) store_slot<S, int>(p, base + o0 + j * ss, n, vec_ok, v + j * VEC);
    }
}

// A forward stream's tiles pass through two shared-memory buffers (the kernel's
// dynamic shared memory, [2][NV][blockDim.x] slots): while a tile is reduced
// from registers, the next one's cp.async copies are in flight, so a block alone
// on its SM (the L2 rule below) does not idle for each tile's load latency.
// Only tiles wholly inside the chunk travel this way; an edge tile is loaded
// directly (stream_tile_load), as is every tile of a launch whose dynamic shared
// memory cannot hold the two buffers (`on`). Each thread copies and reads back
// only its own slots, so no barrier is needed: wait_one / wait_all order its own
// copies.
template <class S, int NV>
struct TilePipe {
    const typename S::T* p;
    unsigned mine;  // shared address of this thread's slot 0 of buffer 0 (slot j of buffer b: + b size + j stride)
    int stride, o0, ss, n, lo, hi;  // stride: one slot row, bytes; whole tiles: lo <= base <= hi
    unsigned size;  // one buffer, bytes: the two buffers' offsets are 0 and size, flipped by xor
    bool on;
    __device__ __forceinline__ bool whole(int base) const { return base >= lo && base <= hi; }
    // Whether tile `base` travels through the buffers.
    __device__ __forceinline__ bool piped(int base) const { return on && whole(base); }
    __device__ __forceinline__ void issue(int base, unsigned off) const {
        const typename S::T* q = p + (base + o0);
        const unsigned d = mine + off;
#pragma unroll
        for (int j = 0; j < NV; ++j) cp_async16_at(d + j * stride, q + j * ss);
        cp_async_commit();
    }
    // Tile `base` into v. `ahead`: a newer tile's copies were issued since its own.
    __device__ __forceinline__ void take(int base, bool whole_now, unsigned off, bool ahead, typename S::A* v,
                                         typename S::A pad) const {
        if (!(on && whole_now)) {
            stream_tile_load<S, NV>(p, base, o0, ss, n, whole_now, v, pad);
            return;
        }
        if (ahead)
            cp_async_wait_one();
        else
            cp_async_wait_all();
        const unsigned d = mine + off;
#pragma unroll
        for (int j = 0; j < NV; ++j) unpack_slot<S>(ld_shared_v4(d + j * stride), v + j * S::VEC);
    }
};

// Running (max, sum) of one thread for softmax, one FMNMX + FFMA + EX2 + FADD per
// element: the tile's max first, then the sum is rescaled once per tile to the new
// max and the tile's exp2(x L - hi) added, hi = max * L rounded (ExpShift: the
// sum carries the common factor 2^(max L - hi), undone once at the end by fix).
// The rescale factor 2^(hi_old - hi_new) is 1 for an unchanged max (so two equal
// infinities make no inf - inf) and 0 from a -inf max (whose sum is 0). An element
// offset of 0 for an infinite max keeps -inf elements at exp2(-inf) = 0; a +inf or
// NaN max decides the row by itself (the epilogues). softmax only: log_softmax
// needs the count at the max (values_stats) to keep a dominated sum's low digits.
// A wide max (shift_wide, `wide`) carries no factor: its sum is of exp(x - max)
// itself (DirectExp), and a tile that starts or ends wide rescales through the
// true sum (stream_sum_rebase), off the common path, as does an infinite max
// (whose sum is 0 or moot) so that one FSETP tests the new max.
template <class A>
struct StreamSum {
    A m, hi, s;
    bool wide;
};
// The factor a running sum carries: 1 when wide (or for an infinite max, whose
// sum is 0 or moot), else ExpShift's.
template <class A>
__device__ __forceinline__ A stream_fix(A m) {
    return shift_wide(m) || !(fabs(m) < inf_of(m)) ? A(1) : exp_shift(m).fix;
}
// The factor between two ExpShift offsets: hi is max * log2(e) in float (EX2),
// the max itself in float64 (exp).
__device__ __forceinline__ float shift_ratio(float hi_old, float hi_new) { return fast_exp2(hi_old - hi_new); }
__device__ __forceinline__ double shift_ratio(double hi_old, double hi_new) { return exp(hi_old - hi_new); }
// One tile where the old or the new max is wide: the old sum made true (its
// factor undone), moved to the new max, then given the new form's factor.
template <class A, int EPT>
__device__ __forceinline__ void stream_sum_rebase(StreamSum<A>& t, A mn, const A (&v)[EPT]) {
    const A base = t.s * stream_fix(t.m) * (t.m == mn ? A(1) : fast_exp(t.m - mn));
    with_exp_form(mn, [&](auto e) {
        A s = base / e.fix;
#pragma unroll
        for (int i = 0; i < EPT; ++i) s += e(v[i]);
        t.s = s;
    });
    t.hi = exp_shift(mn).hi;
    t.m = mn;
    t.wide = shift_wide(mn);
}
template <class A, int EPT>
__device__ __forceinline__ void stream_sum_add(StreamSum<A>& t, const A (&v)[EPT]) {
    const A mn = values_max(v, t.m);
    if (sizeof(A) < 8 && (fabs(mn) >= A(1073741824.0) || t.wide)) {
        stream_sum_rebase(t, mn, v);
        return;
    }
    ExpShift<A> sh = exp_shift(mn);
    const A scale = (t.m == mn) ? A(1) : shift_ratio(t.hi, sh.hi);
    t.hi = sh.hi;
    t.m = mn;
    sh.hi = exp_offset(sh.hi);
    A s = t.s * scale;
#pragma unroll
    for (int i = 0; i < EPT; ++i) s += shifted_exp(v[i], sh);
    t.s = s;
}
template <class A>
__device__ __forceinline__ MaxSum<A> stream_sum_stats(StreamSum<A> t) {
    MaxSum<A> o;
    o.m = t.m;
    o.r = fabs(t.m) < inf_of(t.m) ? t.s * stream_fix(t.m) - A(1) : A(-1);
    return o;
}

template <class S, int NV>
__device__ __forceinline__ void fwd_stream_rows(const typename S::T* x, typename S::T* y, long long rows,
                                                long long cols, int op, int k, long long chunk, typename S::A* part,
                                                unsigned long long* cnt) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    __shared__ MaxSum<A> scratch[33];
    __shared__ MaxSum<A> slots[64];  // two buffers for the single-barrier reduction
    extern __shared__ uint4 gs_stage[];  // TilePipe's two tiles
    const unsigned mine = shared_addr(gs_stage + threadIdx.x);
    const unsigned pipe_size = blockDim.x * 16 * NV;
    // float64 keeps direct loads: its exp already outlasts a tile's latency, and
    // the buffers' registers would spill it.
    const bool pipe_on = sizeof(A) < 8 && dynamic_smem_bytes() >= 2 * pipe_size;
    const RowShare sh = row_share(k, chunk, cols);
    if (sh.idle()) return;
    const long long groups = sh.groups, g = sh.g, c0 = sh.c0;
    const int p = sh.p;
    const int n = (int)sh.n;
    const int tile = blockDim.x * EPT, ss = blockDim.x * VEC;
    unsigned long long round = 0;
    for (long long row = g; row < rows; row += groups, ++round) {
        const typename S::T* xr = x + (row * cols + c0);
        typename S::T* yr = y + (row * cols + c0);
        const int mis = misalign<S>(xr);
        const int o0 = (int)threadIdx.x * VEC - mis, end = n + mis;
        const TilePipe<S, NV> pipe{xr, mine, (int)blockDim.x * 16, o0, ss, n, mis, end - tile, pipe_size, pipe_on};
        MaxSum<A> t;
        StreamSum<A> u;
        u.m = -inf_of(A(0));
        u.hi = u.m;
        u.s = A(0);
        u.wide = false;
        t = empty_maxsum<A>();
        bool whole = pipe.whole(0);
        unsigned off = 0;
        if (pipe.piped(0)) pipe.issue(0, off);
        for (int base = 0; base < end; base += tile, off ^= pipe.size) {
            const bool ahead = pipe.whole(base + tile);
            if (ahead && pipe.on) pipe.issue(base + tile, off ^ pipe.size);
            A v[EPT];
            pipe.take(base, whole, off, ahead, v, -inf_of(A(0)));
            whole = ahead;
            if (op == OP_SOFTMAX)
                stream_sum_add(u, v);
            else
                t = merge(t, values_stats<false, A, A>(v));
        }
        if (op == OP_SOFTMAX) t = stream_sum_stats(u);
        const MaxSum<A> r0 = block_merge_1b(t, slots + 32 * (round & 1));
        const MaxSum<A> r = k > 1 ? group_merge(r0, part, cnt, g, k, p, round, scratch) : r0;
        const bool vec_out = misalign<S>(yr) == mis;
        const int last = (end - 1) / tile * tile;
        const A ls = log_sum_of(r);
        with_exp_form(r.m, [&](auto e) {
            const A inv = inv_sum_of(r) * e.fix;
            for (int base = last; base >= 0; base -= tile) {
                const bool full = pipe.whole(base);
                A v[EPT];
                stream_tile_load<S, NV>(xr, base, o0, ss, n, full, v, A(0));
                if (op == OP_SOFTMAX) {
#pragma unroll
                    for (int i = 0; i < EPT; ++i) v[i] = e(v[i]) * inv;
                } else {
#pragma unroll
                    for (int i = 0; i < EPT; ++i) v[i] = (v[i] - r.m) - ls;
                }
                stream_tile_store<S, NV>(yr, base, o0, ss, n, full, vec_out, v);
            }
        });
    }
    group_release(cnt, cnt + groups, g, k);
}

template <class S, int NV>
__device__ __forceinline__ void fwd_stream(const typename S::T* x, typename S::T* y, long long rows, long long cols,
                                           int op, int k, long long chunk, typename S::A* part,
                                           unsigned long long* cnt) {
    by_op<typename S::A>(op, [&](int o) { fwd_stream_rows<S, NV>(x, y, rows, cols, o, k, chunk, part, cnt); });
}

template <class S, int NV>
__device__ __forceinline__ void bwd_stream(const typename S::T* gy, const typename S::T* y, typename S::T* gx,
                                           long long rows, long long cols, int op, int k, long long chunk,
                                           double* part, unsigned long long* cnt) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    typedef typename BwdSum<A>::type D;
    __shared__ double scratch[33];
    __shared__ D slots[64];
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
        D acc = zero_sum(D());
        for (long long base = 0; base < n + mis; base += tile) {
            A yv[EPT], gv[EPT];
#pragma unroll
            for (int j = 0; j < NV; ++j) {
                const long long e0 = slot_start<S>(base, j, threadIdx.x, blockDim.x, mis);
                load_slot<S>(y + off, e0, n, true, yv + j * VEC, A(0));
                load_slot<S>(gy + off, e0, n, vec_g, gv + j * VEC, A(0));
            }
            held_dot<S>(yv, gv, op, acc);
        }
        D s = block_pair_sum_1b(acc, slots + 32 * (round & 1));
        if (k > 1) s = group_pair_sum(s, part, cnt, g, k, p, round, scratch);
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
// nothing. `width` lanes per row (width <= 32, shuffles only) or, with
// width == 0, whole blocks, k per row, as the stream regime. Output: float32
// (float64 for float64 input), one value per row.
//
// float, float16 and bfloat16 input take a float pass first: per element the
// tile max (FMNMX) and exp as one FFMA + EX2 (ExpShift, as the stream softmax),
// a tile's exponentials summed pairwise, the running sum rescaled once per tile;
// the row's partials merged in float. m + log(sum) then cancels when the result
// is near 0, so each row bounds that float pass's error (lse_limit) and a row
// whose |result| is too small for the bound is read again in double (the
// float64 pass below, with a double exp per element). Away from 0 a dominated
// sum (1 + tiny) needs no count at the max: rounding 1 + tiny costs 2^-24 of
// log(sum), far below the row's limit; near 0 the double pass counts it.
// float64 input takes the double pass only.

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

// One tile into a thread's running float sum (StreamSum, as stream_sum_add), the
// tile's exponentials added pairwise: the same adds, fewer roundings in a row.
// The exponent is x (L + L_lo) - hi: log2(e) rounded to float (L) alone biases
// every term by (x - max) (log2(e) - L), about 1.3e-8 (x - max) relative, which
// the sum keeps; L_lo costs one FFMA an element. Its max-side part, max L_lo,
// is common to all of a thread's terms and cancels in the tile rescales (the
// ratio of two tiles' factors is 2^(hi_old - hi_new) still): lse_fix undoes it
// once, with hi's rounding.
constexpr float LOG2E_LO = 1.92596298909109e-08f;  // log2(e) - L
template <int EPT>
__device__ __forceinline__ void lse_tile_add(StreamSum<float>& t, const float (&v)[EPT]) {
    const float mn = values_max(v, t.m);
    ExpShift<float> sh = exp_shift(mn);
    const float scale = (t.m == mn) ? 1.0f : shift_ratio(t.hi, sh.hi);
    t.hi = sh.hi;
    t.m = mn;
    sh.hi = exp_offset(sh.hi);
    float e[EPT];
#pragma unroll
    for (int i = 0; i < EPT; ++i) e[i] = fast_exp2(fmaf(v[i], LOG2E_LO, fmaf(v[i], 1.4426950408889634f, -sh.hi)));
#pragma unroll
    for (int w = 1; w < EPT; w *= 2) {
#pragma unroll
        for (int i = 0; i + w < EPT; i += 2 * w) e[i] += e[i + w];
    }
    t.s = fmaf(t.s, scale, e[0]);
}

// The factor a thread's float sum carries: 2^(max L + max L_lo - hi), hi = max L
// rounded (lse_tile_add), undone once a row with an accurate exp2f.
__device__ __forceinline__ float lse_fix(const StreamSum<float>& u) {
    return exp2f(-(fmaf(u.m, 1.4426950408889634f, -u.hi) + u.m * LOG2E_LO));
}

// The float pass's (max, sum of exp(x - max)): a plain sum, not MaxSum's
// sum - 1, which only the double pass needs.
struct LseSum {
    float m, s;
};

// The float pass over n (< 2**30) elements. Only a chunk's first and last tile
// check bounds; the others step one pointer (64-bit addresses rebuilt from int
// offsets cost about 12 instructions a tile).
template <class S, int NV>
__device__ __forceinline__ LseSum lse_chunk_fast(const typename S::T* p, int n, int lane, int width) {
    constexpr int VEC = S::VEC, EPT = NV * VEC;
    const int mis = misalign<S>(p);
    const int o0 = lane * VEC - mis, ss = width * VEC, tile = width * EPT, end = n + mis;
    StreamSum<float> u;
    u.m = -inf_of(0.0f);
    u.hi = u.m;
    u.s = 0.0f;
    u.wide = false;
    const typename S::T* q = p + o0;
    for (int base = 0; base < end; base += tile, q += tile) {
        float v[EPT];
        if (base >= mis && base + tile <= end) {
#pragma unroll
            for (int j = 0; j < NV; ++j) load_full<S>(q + j * ss, v + j * VEC);
        } else {
#pragma unroll
            for (int j = 0; j < NV; ++j) load_slot<S, int>(p, base + o0 + j * ss, n, true, v + j * VEC, -inf_of(0.0f));
        }
        lse_tile_add(u, v);
    }
    LseSum o;
    o.m = u.m;
    o.s = fabsf(u.m) < inf_of(0.0f) ? u.s * lse_fix(u) : u.s;
    return o;
}

// The float pass's partials across a warp segment: the max first, then each
// lane's sum rescaled to it once (expf: __expf's log2(e) rounding would bias each
// partial by its distance to the max, as in lse_tile_add) and summed. Two
// butterflies of commutative steps give every lane the same bits (no
// broadcast), at a third of the instructions of a (max, sum) merge per level.
__device__ __forceinline__ LseSum lse_warp_reduce(LseSum t, int width) {
    const float m = warp_max(t.m, width);
    t.s = warp_sum(t.s * (t.m == m ? 1.0f : expf(t.m - m)), width);
    t.m = m;
    return t;
}

// The same across a block, with one barrier (`slots`: one of two alternating
// 32-entry buffers, as block_merge_1b's).
__device__ __forceinline__ LseSum lse_block_reduce(LseSum t, LseSum* slots) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    t = lse_warp_reduce(t, 32);
    if (lane == 0) slots[warp] = t;
    __syncthreads();
    LseSum w;
    w.m = lane < nwarps ? slots[lane].m : -inf_of(0.0f);
    w.s = lane < nwarps ? slots[lane].s : 0.0f;
    return lse_warp_reduce(w, 32);
}

// The float pass's error in log(sum), as a multiple of 2^-24 of the sum (all
// terms are positive, so relative errors add): each exp (EX2, 2 ulp; its FFMA
// argument's rounding, under log(n) + 1 ulp of the whole sum), a tile's
// pairwise sum (4 levels at most), one rounding per tile (`tiles` a thread
// reads, at most), ExpShift's fix, and the reductions (10 levels, and two
// rescales by an __expf of 2 ulp + a rounding): (tiles + 64) ulp covers them.
// A row takes the float result only where that is at most 2^-19 of |result|
// (float32 tolerance: 1e-5, about 2^-16.6): |m + log(sum)| >= (tiles + 64) / 32.
// The same for every thread of a row (and every block of a group, from the
// planned chunk), so the double pass's reductions see every thread.
__device__ __forceinline__ float lse_limit(int elems, int tile) {
    return (__fdividef((float)elems, (float)tile) + 65.0f) * 0.03125f;
}

// Whether the row must be read again in double. An infinite or NaN max decides
// the result by itself. Past |m| = 2^20, the terms' common factor 2^lo grows
// (ExpShift) and past 2^30 leaves float's range, so such rows go to double too; below, the test's own
// error (logf of the sum, m + that) is under 1e-5, far inside the limit's
// margin. So does a non-finite float result with a finite max (an inf * 0 from
// a thread whose own max was huge).
__device__ __forceinline__ bool lse_needs_double(LseSum t, float limit) {
    if (!(fabsf(t.m) < 1048576.0f)) return fabsf(t.m) < inf_of(0.0f);
    const float l = fabsf(t.m + __logf(t.s));
    return !(l >= limit && l < inf_of(0.0f));
}

// The float pass's statistics for lse_of (in double: the row's one thread).
__device__ __forceinline__ MaxSum<double> lse_stats(LseSum t) {
    MaxSum<double> o;
    o.m = t.m;
    o.r = double(t.s) - 1.0;
    return o;
}

// The double pass of a float-pass row, whose max m it already has (exact, and
// finite: lse_needs_double): the count of elements at m and the sum of exp(x - m)
// over the others, in double, as the reference: r = (count - 1) + rest keeps a
// dominated row's tiny r whole where log(1 + rest) would not. One element a
// step (coalesced across the lanes), not a tile: the unrolled double exps of a
// tile need more registers than the kernel has left around the float pass.
template <class S>
__device__ __forceinline__ void lse_sum_exact(const typename S::T* p, int n, int lane, int width, float m, double& c,
                                              double& t) {
    c = 0.0;
    t = 0.0;
#pragma unroll 1
    for (int e = lane; e < n; e += width) {
        float v[1] = {S::to_acc(p[e])};
        count_sum<false>(v, (double)m, c, t);
    }
}

// The double pass's (count, rest) over a group's k blocks (k > 1), in a fixed
// order, as group_sum.
__device__ __forceinline__ void lse_group_sum2(double& c, double& t, double* part, unsigned long long* cnt, long long g,
                                               int k, int p, unsigned long long round, MaxSum<double>* scratch) {
    group_publish_wait(c, t, part, cnt, g, k, p, round);
    if (threadIdx.x < 32) {
        __threadfence();
        const double* base = part + ((g * 2 + (long long)(round & 1)) * k) * 2;
        double a = 0.0, b = 0.0;
        for (int i = threadIdx.x; i < k; i += 32) {
            a += ld_relaxed(base + 2 * i);
            b += ld_relaxed(base + 2 * i + 1);
        }
        a = warp_sum(a, 32);
        b = warp_sum(b, 32);
        if (threadIdx.x == 0) {
            scratch[32].m = a;
            scratch[32].r = b;
        }
    }
    __syncthreads();
    c = scratch[32].m;
    t = scratch[32].r;
    __syncthreads();
}

__device__ __forceinline__ MaxSum<double> lse_exact_stats(float m, double c, double t) {
    MaxSum<double> o;
    o.m = m;
    o.r = (c - 1.0) + t;
    return o;
}

// k > 1: the blocks' float partials meet in the float64 workspace, where the
// double pass's partials also go (one layout; the conversions are exact),
// merged in double by group_merge (a fixed order). Every thread gets
// the row's statistics back in float (for lse_needs_double: the same bits in
// every block of the group), the row's result comes from the double ones.
__device__ __forceinline__ MaxSum<double> lse_group_merge(LseSum& t, double* part, unsigned long long* cnt,
                                                          long long g, int k, int p, unsigned long long round,
                                                          MaxSum<double>* scratch) {
    MaxSum<double> mine;
    mine.m = t.m;
    mine.r = (double)t.s - 1.0;
    const MaxSum<double> r = group_merge(mine, part, cnt, g, k, p, round, scratch);
    t.m = (float)r.m;
    t.s = (float)(1.0 + r.r);
    return r;
}

template <class S, int NV>
__device__ __forceinline__ void lse_warp(const typename S::T* x, typename S::A* lse, long long rows, long long cols,
                                         int width) {
    constexpr bool FAST = sizeof(typename S::A) == 4;
    const int lane = threadIdx.x & (width - 1);
    const int rpb = blockDim.x / width;
    const long long nrb = (rows + rpb - 1) / rpb;
    const float limit = lse_limit((int)cols, width * NV * S::VEC);
    for (long long rb = blockIdx.x; rb < nrb; rb += gridDim.x) {
        const long long row = rb * rpb + threadIdx.x / width;
        const bool valid = row < rows;
        const typename S::T* xr = x + (valid ? row : 0) * cols;
        const long long n = valid ? cols : 0;
        // Loop trip counts differ between a warp's rows; the shuffles come after
        // the loop, where the warp has reconverged.
        bool need = true;
        LseSum f;
        f.m = -inf_of(0.0f);
        f.s = 0.0f;
        if constexpr (FAST) {
            f = lse_warp_reduce(lse_chunk_fast<S, NV>(xr, (int)n, lane, width), width);
            need = lse_needs_double(f, limit);
        }
        // The double pass shuffles across the whole warp: taken by all of its rows
        // when one needs it, each row keeping the result it decided on.
        MaxSum<double> d = empty_maxsum<double>();
        if (__ballot_sync(0xffffffffu, need) != 0u) {
            if constexpr (FAST) {
                double c, t;
                lse_sum_exact<S>(xr, need ? (int)n : 0, lane, width, f.m, c, t);
                d = lse_exact_stats(f.m, warp_sum(c, width), warp_sum(t, width));
            } else {
                d = warp_merge(lse_chunk<S, NV>(xr, n, lane, width), width);
            }
        }
        if (valid && lane == 0) lse[row] = typename S::A(lse_of(need ? d : lse_stats(f)));
    }
}

template <class S, int NV>
__device__ __forceinline__ void lse_block(const typename S::T* x, typename S::A* lse, long long rows, long long cols,
                                          int k, long long chunk, double* part, unsigned long long* cnt) {
    constexpr bool FAST = sizeof(typename S::A) == 4;
    __shared__ MaxSum<double> scratch[33];
    __shared__ MaxSum<double> slots[64];
    __shared__ LseSum fslots[64];
    const RowShare sh = row_share(k, chunk, cols);
    if (sh.idle()) return;
    const long long groups = sh.groups, g = sh.g, c0 = sh.c0, n = sh.n;
    const int p = sh.p;
    const float limit = lse_limit((int)chunk, blockDim.x * NV * S::VEC);
    // One count per exchange (a row takes one, or two with the double pass): the
    // group counters' rounds and the parity of the single-barrier slots. 32 bits:
    // k > 1 only for fewer rows than SMs, or rows of 2**30 elements and more.
    unsigned int round = 0;
    for (long long row = g; row < rows; row += groups) {
        const typename S::T* xr = x + row * cols + c0;
        if constexpr (FAST) {
            LseSum f = lse_block_reduce(lse_chunk_fast<S, NV>(xr, (int)n, threadIdx.x, blockDim.x),
                                        fslots + 32 * (round & 1));
            MaxSum<double> d = empty_maxsum<double>();
            if (k > 1) d = lse_group_merge(f, part, cnt, g, k, p, round, scratch);
            ++round;
            const bool need = lse_needs_double(f, limit);
            if (need) {
                double c, t;
                lse_sum_exact<S>(xr, (int)n, threadIdx.x, blockDim.x, f.m, c, t);
                block_sum2_1b(c, t, slots + 32 * (round & 1));
                if (k > 1) lse_group_sum2(c, t, part, cnt, g, k, p, round, scratch);
                ++round;
                d = lse_exact_stats(f.m, c, t);
            }
            if (p == 0 && threadIdx.x == 0) lse[row] = float(lse_of(need || k > 1 ? d : lse_stats(f)));
        } else {
            MaxSum<double> t = block_merge_1b(lse_chunk<S, NV>(xr, n, threadIdx.x, blockDim.x),
                                              slots + 32 * (round & 1));
            if (k > 1) t = group_merge(t, part, cnt, g, k, p, round, scratch);
            ++round;
            if (p == 0 && threadIdx.x == 0) lse[row] = typename S::A(lse_of(t));
        }
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
