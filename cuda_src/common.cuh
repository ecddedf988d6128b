// Shared device helpers for every op family.
//
// No CUDA header is included: NVRTC's built-in headers differ between releases,
// so half/bfloat16 conversions are inline PTX on raw 16-bit words, and the
// vector types (uint4) and intrinsics used here are the ones NVRTC always has.


namespace gs {

// ---------------------------------------------------------------------------
// constants (no math.h: INFINITY/NAN macros are not guaranteed under NVRTC)

__device__ __forceinline__ float inf_of(float) { return __int_as_float(0x7f800000); }
__device__ __forceinline__ double inf_of(double) { return __longlong_as_double(0x7ff0000000000000LL); }
__device__ __forceinline__ float nan_of(float) { return __int_as_float(0x7fffffff); }
__device__ __forceinline__ double nan_of(double) { return __longlong_as_double(0x7fffffffffffffffLL); }

// ---------------------------------------------------------------------------
// storage traits: T is what sits in memory, A is what we accumulate in.
// Half and bfloat16 travel as 16-bit words; CuPy has no bfloat16 dtype, so the
// launcher passes a uint16 view and names the storage explicitly.

__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ unsigned short f32_to_f16(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float bf16_to_f32(unsigned short h) {
    // bfloat16 is the top half of a float32: widening is exact, NaN stays NaN.
    return __uint_as_float(((unsigned int)h) << 16);
}
__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    // No bf16 cvt before sm_80: round to nearest even by hand, NaN kept quiet NaN,
    // so the module still builds (and float16/32/64 still run) on older GPUs.
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
#endif
}

struct F32 {
    typedef float T;
    typedef float A;
    static constexpr int VEC = 4;  // elements per 16-byte access
    static constexpr int PAIR_MAX = 0;  // slots_max: 1 bf16x2, 2 f16x2, 0 none
    static __device__ __forceinline__ A to_acc(T v) { return v; }
    static __device__ __forceinline__ T from_acc(A v) { return v; }
};
struct F64 {
    typedef double T;
    typedef double A;  // float64 keeps float64 accuracy end to end
    static constexpr int VEC = 2;
    static constexpr int PAIR_MAX = 0;  // slots_max: 1 bf16x2, 2 f16x2, 0 none
    static __device__ __forceinline__ A to_acc(T v) { return v; }
    static __device__ __forceinline__ T from_acc(A v) { return v; }
};
struct F16 {
    typedef unsigned short T;
    typedef float A;
    static constexpr int VEC = 8;
    static constexpr int PAIR_MAX = 2;  // slots_max: 1 bf16x2, 2 f16x2, 0 none
    static __device__ __forceinline__ A to_acc(T v) { return f16_to_f32(v); }
    static __device__ __forceinline__ T from_acc(A v) { return f32_to_f16(v); }
};
struct BF16 {
    typedef unsigned short T;
    typedef float A;
    static constexpr int VEC = 8;
    static constexpr int PAIR_MAX = 1;  // slots_max: 1 bf16x2, 2 f16x2, 0 none
    static __device__ __forceinline__ A to_acc(T v) { return bf16_to_f32(v); }
    static __device__ __forceinline__ T from_acc(A v) { return f32_to_bf16(v); }
};

// One 16-byte slot's storage words as accumulators. The union form makes the
// compiler extract each 16-bit half before widening it (PRMT + shift, plus
// moves); a bfloat16 pair in a 32-bit word widens as one shift (low half) and
// one mask (high half).
template <class S>
__device__ __forceinline__ void unpack_slot(uint4 u, typename S::A* dst) {
    union {
        uint4 u;
        typename S::T t[S::VEC];
    } buf;
    buf.u = u;
#pragma unroll
    for (int i = 0; i < S::VEC; ++i) dst[i] = S::to_acc(buf.t[i]);
}
template <>
__device__ __forceinline__ void unpack_slot<BF16>(uint4 u, float* dst) {
    const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        dst[2 * k] = __uint_as_float(w[k] << 16);
        dst[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
}

// ---------------------------------------------------------------------------
// math on the accumulation type

// fmaxf drops NaN; the reference (np.max, torch.max) propagates it, and a NaN
// max is what makes a NaN row come out all NaN. sm_80+ has that max as one
// instruction (FMNMX.NAN); the compare-and-select form costs four dependent ones.
__device__ __forceinline__ float nan_max(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
#else
    return (a > b || a != a) ? a : b;
#endif
}
__device__ __forceinline__ double nan_max(double a, double b) { return (a > b || a != a) ? a : b; }

// The NaN-propagating max of a thread's held slots, from their storage words.
// 16-bit pairs (sm_80+) take one max.NaN.{bf16,f16}x2 per two elements (exact:
// the max of 16-bit values is one of them; a NaN gives the canonical NaN), then
// one float max per half of the result.
__device__ __forceinline__ unsigned int max_nan_bf16x2(unsigned int a, unsigned int b) {
    unsigned int r;
    asm("max.NaN.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
__device__ __forceinline__ unsigned int max_nan_f16x2(unsigned int a, unsigned int b) {
    unsigned int r;
    asm("max.NaN.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
template <class S, int NV>
__device__ __forceinline__ typename S::A slots_max(const uint4 (&raw)[NV], typename S::A mv) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    if constexpr (S::PAIR_MAX != 0) {
        unsigned int acc = raw[0].x;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const unsigned int w[4] = {raw[j].x, raw[j].y, raw[j].z, raw[j].w};
#pragma unroll
            for (int k = (j == 0 ? 1 : 0); k < 4; ++k)
                acc = S::PAIR_MAX == 1 ? max_nan_bf16x2(acc, w[k]) : max_nan_f16x2(acc, w[k]);
        }
        typename S::A h[S::VEC];
        unpack_slot<S>(make_uint4(acc, 0u, 0u, 0u), h);
        return nan_max(nan_max(mv, h[0]), h[1]);
    }
#endif
    typename S::A w[S::VEC];
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        unpack_slot<S>(raw[j], w);
#pragma unroll
        for (int i = 0; i < S::VEC; ++i) mv = nan_max(mv, w[i]);
    }
    return mv;
}

// Memory-bound kernels can afford one MUFU ex2 per element but not the full
// expf sequence on 16-bit data; __expf's error (2 ulp + |x|*2^-24 relative)
// stays inside the float32 tolerance for the arguments softmax produces (<= 0).
__device__ __forceinline__ float fast_exp(float x) { return __expf(x); }
__device__ __forceinline__ double fast_exp(double x) { return exp(x); }
__device__ __forceinline__ float acc_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double acc_log1p(double x) { return log1p(x); }
__device__ __forceinline__ bool is_inf(float x) { return fabsf(x) == inf_of(x); }
__device__ __forceinline__ bool is_inf(double x) { return fabs(x) == inf_of(x); }

// x, opaque to the optimiser: work on it stays in the block that asks for it
// (a rare path's conversions are not hoisted onto the fast path).
__device__ __forceinline__ float pinned(float x) {
    asm volatile("" : "+f"(x));
    return x;
}

// 2^x on the MUFU (one EX2): callers fold log2(e) into an FMA they already need.
__device__ __forceinline__ float fast_exp2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// The exponent offset of a set of values: their max when finite, else 0. A -inf
// max (all padding, or an all -inf row) then gives exp(-inf) = 0, a sum of 0;
// with a +inf or NaN max the row's results come from the max alone (the
// epilogues), so its exponentials only have to stay free of inf - inf. One
// select per thread and row instead of an equal-argument test per element.
template <class A>
__device__ __forceinline__ A exp_offset(A m) {
    return fabs(m) < inf_of(m) ? m : A(0);
}

// exp(x - m) for many x at one FFMA + EX2 each: exp2(x * L - hi) with hi = m * L
// rounded. The rounding error lo = m * L - hi (exact, one FMA) makes every term
// 2^lo too large: a common factor, undone once by `fix` = 2^-lo (|lo| <= ulp(hi)
// / 2), which callers fold into a per-thread or per-row scale. Past |m| = 2^30,
// 2^lo itself leaves float's range: such a max is `shift_wide` and takes
// DirectExp instead (with_exp_form). float64 keeps exp(x - m) itself (fix = 1).
template <class A>
struct ExpShift {
    A hi;
    A fix;
    __device__ __forceinline__ A operator()(A x) const;
};
__device__ __forceinline__ ExpShift<float> exp_shift(float m) {
    const float L = 1.4426950408889634f;
    ExpShift<float> s;
    s.hi = m * L;
    // exp2f, not a short series: lo reaches 2^-4 by |m| = 3e6 (ulp(hi) / 2),
    // where a second-order fix is off by 1e-5. Up to |m| = 2^30, |lo| < 64, so
    // the terms (at most 2^lo) and the fix stay in float's range.
    s.fix = exp2f(fmaf(-m, L, s.hi));  // 2^-lo, lo exact: the negation costs nothing
    return s;
}
__device__ __forceinline__ ExpShift<double> exp_shift(double m) {
    ExpShift<double> s;
    s.hi = m;
    s.fix = 1.0;
    return s;
}
__device__ __forceinline__ float shifted_exp(float x, ExpShift<float> s) {
    return fast_exp2(fmaf(x, 1.4426950408889634f, -s.hi));
}
__device__ __forceinline__ double shifted_exp(double x, ExpShift<double> s) { return exp(x - s.hi); }
template <class A>
__device__ __forceinline__ A ExpShift<A>::operator()(A x) const {
    return shifted_exp(x, *this);
}

// A finite max whose ExpShift factor would leave float's range (|m| >= 2^30,
// where |lo| can pass 64); float64 has none.
__device__ __forceinline__ bool shift_wide(float m) { return fabsf(m) < inf_of(m) && fabsf(m) >= 1073741824.0f; }
__device__ __forceinline__ bool shift_wide(double) { return false; }

// exp(x - m) itself, one FADD more per element than ExpShift: exactly 1 at the
// max, no common factor (fix = 1), for a shift_wide max.
template <class A>
struct DirectExp {
    A m;
    A fix;
    __device__ __forceinline__ A operator()(A x) const { return fast_exp(x - m); }
};

// body(e), e the exp form for max m (ExpShift, or DirectExp for a wide m): one
// test per row or thread, and each form its own loops, so the common case pays
// no per-element select.
template <class A, class F>
__device__ __forceinline__ void with_exp_form(A m, F&& body) {
    if (shift_wide(m)) {
        const DirectExp<A> d{m, A(1)};
        body(d);
    } else {
        body(exp_shift(exp_offset(m)));
    }
}

// exp(a - b) for b = max(a, ...): equal arguments give exactly 1, so two
// infinities of the same sign (an empty or all -inf partial meeting another)
// never produce inf - inf = NaN. NaN still propagates (NaN != NaN).
template <class A>
__device__ __forceinline__ A rel_exp(A a, A b) {
    return (a == b) ? A(1) : fast_exp(a - b);
}

// ---------------------------------------------------------------------------
// online (max, sum) pair, Milakov & Gimelshein 2018, stored as (m, r) with
// r = sum exp(x - m) - 1.
// Why "sum - 1": the max element contributes exactly 1, so when one element
// dominates a row the sum is 1 + tiny, and a float sum would keep only the
// first ~7 digits of "tiny"; log_softmax's -log(sum) at the max element and
// logsumexp then lose all relative accuracy. Keeping r and using log1p(r) keeps
// it. When the final row max is infinite r is meaningless; the epilogues give
// the reference's answer there (NaN for softmax / log_softmax, the max itself
// for logsumexp). An empty partial is (-inf, -1) (sum 0).

template <class A>
struct MaxSum {
    A m;
    A r;  // sum - 1
};

template <class A>
__device__ __forceinline__ MaxSum<A> empty_maxsum() {
    MaxSum<A> e;
    e.m = -inf_of(A(0));
    e.r = A(-1);
    return e;
}

// sum = (1 + r_a) exp(m_a - m) + (1 + r_b) exp(m_b - m); the side that holds the
// max contributes its 1 exactly, so r = r_max_side + (1 + r_other) * factor.
// With equal maxima (including two -inf or two +inf partials) rel_exp gives 1 and
// no inf - inf appears; a NaN max matches neither side and yields NaN.
template <class A>
__device__ __forceinline__ MaxSum<A> merge(MaxSum<A> a, MaxSum<A> b) {
    MaxSum<A> o;
    o.m = nan_max(a.m, b.m);
    if (a.m == o.m) {
        o.r = a.r + (A(1) + b.r) * rel_exp(b.m, o.m);
    } else {
        o.r = b.r + (A(1) + a.r) * rel_exp(a.m, o.m);
    }
    return o;
}

template <class V, int EPT>
__device__ __forceinline__ V values_max(const V (&v)[EPT], V mv) {
#pragma unroll
    for (int i = 0; i < EPT; ++i) mv = nan_max(mv, v[i]);
    return mv;
}

// Adds exp(v - ms) of a thread's values to (c, t): values exactly at ms give
// exactly 1 (ms is finite, v - ms = 0) and are counted in c, the others summed
// in t, so r = (c - 1) + t keeps the relative accuracy of a tiny r (one
// dominant element: log_softmax and the loss there are -r). e[] gets the
// exponentials when KEEP.
template <bool KEEP, class V, class A, int EPT>
__device__ __forceinline__ void count_sum(V (&v)[EPT], A ms, A& c, A& t) {
#pragma unroll
    for (int i = 0; i < EPT; ++i) {
        const A e = fast_exp(A(v[i]) - ms);
        if (KEEP) v[i] = V(e);
        const bool one = (e == A(1));
        c += one ? A(1) : A(0);
        t += one ? A(0) : e;
    }
}

// (m, r) of a thread's values, plus exp(v - m) in v[] when KEEP.
template <bool KEEP, class V, class A, int EPT>
__device__ __forceinline__ MaxSum<A> values_stats(V (&v)[EPT]) {
    const A m = A(values_max(v, -inf_of(V(0))));
    A c = A(0), t = A(0);
    count_sum<KEEP>(v, exp_offset(m), c, t);
    MaxSum<A> o;
    o.m = m;
    o.r = (c - A(1)) + t;
    return o;
}

// ---------------------------------------------------------------------------
// warp and block reductions. `width` is a power of two <= 32; every lane of the
// warp must take part (full mask), so callers keep idle lanes in the loop with
// empty data instead of branching them out.

template <class A>
__device__ __forceinline__ A warp_sum(A v, int width) {
    for (int off = width >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off, width);
    return v;
}

template <class A>
__device__ __forceinline__ MaxSum<A> warp_merge(MaxSum<A> v, int width) {
    for (int off = width >> 1; off > 0; off >>= 1) {
        MaxSum<A> o;
        o.m = __shfl_xor_sync(0xffffffffu, v.m, off, width);
        o.r = __shfl_xor_sync(0xffffffffu, v.r, off, width);
        v = merge(v, o);
    }
    return v;
}

// Single-barrier block reductions (one __syncthreads per reduction instead of
// three): every warp reduces its lanes, lane 0 posts the warp's partial, and
// after the one barrier every warp reduces all posted partials itself. `slots`
// is one of two 32-entry buffers the caller alternates between consecutive
// reductions: a warp can only post into a buffer again after passing the next
// reduction's barrier, which every thread reaches only after reading this one.
template <class A>
__device__ __forceinline__ MaxSum<A> block_merge_1b(MaxSum<A> v, MaxSum<A>* slots /* [32] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_merge(v, 32);
    if (lane == 0) slots[warp] = v;
    __syncthreads();
    MaxSum<A> w = lane < nwarps ? slots[lane] : empty_maxsum<A>();
    w = warp_merge(w, 32);
    // merge() is not bitwise symmetric, so lanes can differ in the last bit:
    // lane 0's result (the same in every warp) is the one the whole block uses.
    w.m = __shfl_sync(0xffffffffu, w.m, 0);
    w.r = __shfl_sync(0xffffffffu, w.r, 0);
    return w;
}

// NaN-propagating max over a warp and over a block (one barrier; `slots` as for
// block_merge_1b). max is symmetric, so every lane holds the same result.
template <class A>
__device__ __forceinline__ A warp_max(A v, int width = 32) {
    for (int off = width >> 1; off > 0; off >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, off, width));
    return v;
}

template <class A>
__device__ __forceinline__ A block_max_1b(A v, A* slots /* [32] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) slots[warp] = v;
    __syncthreads();
    return warp_max(lane < nwarps ? slots[lane] : -inf_of(A(0)));
}

// block_max_1b for float on sm_80+: each warp stage is one integer REDUX on an
// order-preserving key (sign-magnitude to two's complement) instead of five
// shuffle + max pairs. The key orders every value the reference's max does;
// a NaN is first made the positive quiet NaN 0x7fffffff, the largest key, so a
// NaN anywhere still wins.
__device__ __forceinline__ int max_key(float x) {
    const int i = __float_as_int(x);
    return i ^ ((i >> 31) & 0x7fffffff);
}
__device__ __forceinline__ float key_value(int k) { return __int_as_float(k ^ ((k >> 31) & 0x7fffffff)); }
template <class A>
__device__ __forceinline__ A block_max_key_1b(A v, A* slots /* [32] */) {
    return block_max_1b(v, slots);
}
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <>
__device__ __forceinline__ float block_max_key_1b(float v, float* slots /* [32] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    int* keys = reinterpret_cast<int*>(slots);
    const int k = __reduce_max_sync(0xffffffffu, max_key(v != v ? nan_of(v) : v));
    if (lane == 0) keys[warp] = k;
    __syncthreads();
    return key_value(__reduce_max_sync(0xffffffffu, lane < nwarps ? keys[lane] : max_key(-inf_of(0.0f))));
}
#endif

// A block sum whose barrier also counts the threads with `pred` set
// (__syncthreads_count: the count costs no extra reduction).
template <class A>
__device__ __forceinline__ A block_sum_count_1b(A v, int pred, A* slots /* [32] */, int& count) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v, 32);
    if (lane == 0) slots[warp] = v;
    count = __syncthreads_count(pred);
    return warp_sum(lane < nwarps ? slots[lane] : A(0), 32);
}

// Two sums in one single-barrier block reduction (`slots` as for block_merge_1b).
template <class A>
__device__ __forceinline__ void block_sum2_1b(A& a, A& b, MaxSum<A>* slots /* [32] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    a = warp_sum(a, 32);
    b = warp_sum(b, 32);
    if (lane == 0) {
        slots[warp].m = a;
        slots[warp].r = b;
    }
    __syncthreads();
    a = warp_sum(lane < nwarps ? slots[lane].m : A(0), 32);
    b = warp_sum(lane < nwarps ? slots[lane].r : A(0), 32);
}

// Sums are bitwise symmetric under the xor butterfly, so every lane already
// holds the same total.
template <class A>
__device__ __forceinline__ A block_sum_1b(A v, A* slots /* [32] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v, 32);
    if (lane == 0) slots[warp] = v;
    __syncthreads();
    return warp_sum(lane < nwarps ? slots[lane] : A(0), 32);
}

// Consecutive single-barrier reductions of one block, of either kind, each in the
// other buffer of its kind: alternating on every reduction (not per kind) is what
// keeps two reductions in a row off the same buffer whatever their order. The
// slots are the caller's __shared__ arrays of 64 entries (two buffers of 32).
template <class A>
struct BlockReduce {
    MaxSum<A>* merge_slots;  // [64]
    A* sum_slots;            // [64]
    int parity;
    __device__ __forceinline__ MaxSum<A> merge(MaxSum<A> v) {
        const MaxSum<A> r = block_merge_1b(v, merge_slots + 32 * parity);
        parity ^= 1;
        return r;
    }
    __device__ __forceinline__ A sum(A v) {
        const A r = block_sum_1b(v, sum_slots + 32 * parity);
        parity ^= 1;
        return r;
    }
};

// ---------------------------------------------------------------------------
// 16-byte vector access. A row (or chunk) at pointer p is addressed from the
// 16-byte boundary at or below p: slot i covers elements [i*VEC - mis, i*VEC -
// mis + VEC), so every slot that lies wholly inside the row is one aligned
// 16-byte access whatever the row's alignment, and only the first and last
// slot of a row fall back to element accesses. A second array (out, grad_y)
// whose misalignment differs from the first's uses element accesses throughout
// but the same slot layout, so each element is still read and written by the
// same thread (what makes out == x safe).

template <class S>
__device__ __forceinline__ int misalign(const typename S::T* p) {
    return (int)(((unsigned long long)p & 15ull) / sizeof(typename S::T));
}

// I is int where a chunk is known to be short (held rows: fewer registers and
// cheaper compares) and long long where it may not be (streamed rows).
template <class S, class I>
__device__ __forceinline__ void load_slot(const typename S::T* p, I e0, I n, bool vec_ok, typename S::A* dst,
                                          typename S::A pad) {
    typedef typename S::T T;
    constexpr int VEC = S::VEC;
    if (vec_ok && e0 >= 0 && e0 + VEC <= n) {
        unpack_slot<S>(*reinterpret_cast<const uint4*>(p + e0), dst);
    } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const I e = e0 + i;
            dst[i] = (e >= 0 && e < n) ? S::to_acc(p[e]) : pad;
        }
    }
}

// One 16-byte store. Written out because the union store below is split by
// SROA into four (or two plus one 64-bit) scalar stores the vectoriser cannot
// merge back: it cannot prove the 16-byte alignment the slot layout guarantees.
__device__ __forceinline__ void st_global_v4(void* p, uint4 v) {
    asm("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}

// V4 = false keeps the union store (split into scalar stores, but free of the
// aligned register quad STG.128 needs): for paths where registers are scarcer
// than store instructions.
template <class S, class I, bool V4 = true>
__device__ __forceinline__ void store_slot(typename S::T* p, I e0, I n, bool vec_ok, const typename S::A* src) {
    typedef typename S::T T;
    constexpr int VEC = S::VEC;
    if (vec_ok && e0 >= 0 && e0 + VEC <= n) {
        union {
            uint4 u;
            T t[VEC];
        } buf;
#pragma unroll
        for (int i = 0; i < VEC; ++i) buf.t[i] = S::from_acc(src[i]);
        if (V4) {
            st_global_v4(p + e0, buf.u);
        } else {
            *reinterpret_cast<uint4*>(p + e0) = buf.u;
        }
    } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const I e = e0 + i;
            if (e >= 0 && e < n) p[e] = S::from_acc(src[i]);
        }
    }
}

// A slot known to lie inside the row (16-byte aligned by the slot layout).
template <class S>
__device__ __forceinline__ void load_full(const typename S::T* p, typename S::A* dst) {
    unpack_slot<S>(*reinterpret_cast<const uint4*>(p), dst);
}

// A slot known to lie inside the row and to be 16-byte aligned.
template <class S>
__device__ __forceinline__ void store_full(typename S::T* p, const typename S::A* src) {
    union {
        uint4 u;
        typename S::T t[S::VEC];
    } buf;
#pragma unroll
    for (int i = 0; i < S::VEC; ++i) buf.t[i] = S::from_acc(src[i]);
    st_global_v4(p, buf.u);
}

// First element of slot j for thread `lane` of a `width`-thread group, tile at `base`.
template <class S, class I>
__device__ __forceinline__ I slot_start(I base, int j, int lane, int width, int mis) {
    return base + ((I)j * width + lane) * S::VEC - mis;
}

// ---------------------------------------------------------------------------
// Shared-memory staging of 16-byte slots (rows longer than the registers hold).
// A staged slot keeps the raw storage words; the element bounds are applied
// when it is read back, so a partial slot at a row end needs no padding value.
// On sm_80+ a full slot is copied with cp.async: the copy needs no register and
// no dependent instruction, so all of a row's loads are in flight together.

__device__ __forceinline__ void cp_async16(uint4* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
#else
    *smem = *reinterpret_cast<const uint4*>(gmem);
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}
// The same copy and its read-back by 32-bit shared-window address: a loop that
// keeps the address in a register pays no generic-to-shared conversion per use.
// (Opaque to the optimiser, so it stays in its register rather than being rebuilt
// from the thread index at every use.)
__device__ __forceinline__ unsigned shared_addr(const void* p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("" : "+r"(s));
    return s;
}
__device__ __forceinline__ void cp_async16_at(unsigned s, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ uint4 ld_shared_v4(unsigned s) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(s)
                 : "memory");
    return v;
}
// The launch's dynamic shared memory, bytes: a kernel that can use a buffer
// there checks it is as large as it needs before relying on it.
__device__ __forceinline__ unsigned dynamic_smem_bytes() {
    unsigned v;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(v));
    return v;
}
// Groups of cp.async copies: commit closes the thread's current group; wait_one
// returns once at most the newest group is still in flight.
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
__device__ __forceinline__ void cp_async_wait_one() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group 1;" ::: "memory");
#endif
}

template <class S>
__device__ __forceinline__ void stage_slot(const typename S::T* p, int e0, int n, bool vec_ok, uint4* dst) {
    typedef typename S::T T;
    constexpr int VEC = S::VEC;
    if (vec_ok && e0 >= 0 && e0 + VEC <= n) {
        cp_async16(dst, p + e0);
    } else {
        union {
            uint4 u;
            T t[VEC];
        } buf;
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const int e = e0 + i;
            buf.t[i] = (e >= 0 && e < n) ? p[e] : T(0);
        }
        *dst = buf.u;
    }
}

template <class S>
__device__ __forceinline__ void unstage_full(const uint4* src, typename S::A* dst) {
    unpack_slot<S>(*src, dst);
}

template <class S>
__device__ __forceinline__ void unstage_slot(const uint4* src, int e0, int n, typename S::A* dst,
                                             typename S::A pad) {
    unpack_slot<S>(*src, dst);
#pragma unroll
    for (int i = 0; i < S::VEC; ++i) {
        const int e = e0 + i;
        if (!(e >= 0 && e < n)) dst[i] = pad;
    }
}

// ---------------------------------------------------------------------------
// k blocks per row (split and stream regimes): block p of group g owns elements
// [c0, c0 + n) of rows g, g + groups, ... The launcher makes whole groups only, so
// a block past the last group (idle()) has nothing to do.

struct RowShare {
    long long groups, g, c0, n;
    int p;
    __device__ __forceinline__ bool idle() const { return g >= groups; }
};

__device__ __forceinline__ RowShare row_share(int k, long long chunk, long long cols) {
    RowShare s;
    s.groups = gridDim.x / k;
    s.g = blockIdx.x / k;
    s.p = (int)(blockIdx.x % k);
    s.c0 = 0;
    s.n = 0;
    // The range only for a working block: computed ahead of the idle test, it is
    // scheduled differently and costs fwd_stream (float64) a spill.
    if (!s.idle()) {
        s.c0 = (long long)s.p * chunk;
        s.n = min(chunk, cols - s.c0);
    }
    return s;
}

// ---------------------------------------------------------------------------
// cross-block exchange for rows split over k co-resident blocks.
// Each block publishes its partial, then waits until all k blocks of its group
// have published for this round. This is only deadlock-free when every block of
// the grid is resident at once: the launcher sizes the grid from the occupancy
// calculator and launches cooperatively where CuPy allows it.

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
__device__ __forceinline__ unsigned long long ld_acquire(const unsigned long long* p) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
// Partials written by other SMs: L1 is not coherent, so read them at gpu scope.
__device__ __forceinline__ float ld_relaxed(const float* p) {
    float v;
    asm volatile("ld.relaxed.gpu.global.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ double ld_relaxed(const double* p) {
    double v;
    asm volatile("ld.relaxed.gpu.global.f64 %0, [%1];" : "=d"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void nanosleep_ns(unsigned int ns) { asm volatile("nanosleep.u32 %0;" ::"r"(ns)); }
#else
// Before sm_70 there are no scoped loads: volatile loads bypass L1 and a fence
// after the spin gives the acquire.
__device__ __forceinline__ unsigned long long ld_acquire(const unsigned long long* p) {
    const unsigned long long v = *(const volatile unsigned long long*)p;
    __threadfence();
    return v;
}
__device__ __forceinline__ float ld_relaxed(const float* p) { return *(const volatile float*)p; }
__device__ __forceinline__ double ld_relaxed(const double* p) { return *(const volatile double*)p; }
__device__ __forceinline__ void nanosleep_ns(unsigned int) {}
#endif

// The GPU's global nanosecond timer (the same clock on every SM).
__device__ __forceinline__ unsigned long long globaltimer_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#ifndef GS_SPIN_LIMIT_NS
#define GS_SPIN_LIMIT_NS 1000000000ull  // about a second
#endif

// Thread 0 publishes `mine` into slot `p` of this round's (parity) buffer and
// waits for the round to fill. Two buffers: a block can only reach round r+2's
// write after every block of the group arrived at round r+1, i.e. after all of
// them finished reading round r.
// part layout: [group][2][k][2] accumulators; cnt: [group] counters, zeroed
// before launch.
template <class A>
__device__ __forceinline__ void group_publish_wait(A m, A r, A* part, unsigned long long* cnt, long long g, int k,
                                                   int p, unsigned long long round) {
    if (threadIdx.x == 0) {
        A* slot = part + (((g * 2 + (long long)(round & 1)) * k + p) * 2);
        slot[0] = m;
        slot[1] = r;
        __threadfence();  // release: the partial is visible before the count says so
        atomicAdd(cnt + g, 1ull);
        const unsigned long long target = (round + 1) * (unsigned long long)k;
        // Bounded: co-resident blocks arrive within microseconds, so a wait past
        // GS_SPIN_LIMIT_NS means blocks of this group never ran (a cooperative grid
        // shrunk below k blocks per group). Trap rather than hang: the launch then
        // fails with an error at the next synchronisation.
        const unsigned long long t0 = globaltimer_ns();
        while (ld_acquire(cnt + g) < target) {
            nanosleep_ns(64);
            if (globaltimer_ns() - t0 > GS_SPIN_LIMIT_NS) __trap();
        }
    }
    __syncthreads();
}

// Merge of the k published (max, sum) partials of this round, in a fixed order
// so every block of the group gets bit-identical statistics.
template <class A>
__device__ __forceinline__ MaxSum<A> group_merge(MaxSum<A> mine, A* part, unsigned long long* cnt, long long g, int k,
                                                 int p, unsigned long long round, MaxSum<A>* scratch) {
    group_publish_wait(mine.m, mine.r, part, cnt, g, k, p, round);
    if (threadIdx.x < 32) {
        // Thread 0's acquire plus the barrier already order these reads after
        // the other blocks' releases; the fence makes that explicit per lane.
        __threadfence();
        const A* base = part + ((g * 2 + (long long)(round & 1)) * k) * 2;
        MaxSum<A> w = empty_maxsum<A>();
        for (int i = threadIdx.x; i < k; i += 32) {
            MaxSum<A> o;
            o.m = ld_relaxed(base + 2 * i);
            o.r = ld_relaxed(base + 2 * i + 1);
            w = merge(w, o);
        }
        w = warp_merge(w, 32);
        if (threadIdx.x == 0) scratch[32] = w;
    }
    __syncthreads();
    MaxSum<A> r = scratch[32];
    __syncthreads();  // scratch[32] is reused by the next reduction
    return r;
}

// After a group's last round: the last of its k blocks to arrive puts the
// group's arrival counter (cnt[g]) and this done counter back to zero, so the
// launcher can keep one zeroed workspace per stream instead of allocating and
// zeroing one per call. Every block of the group is past its last read of
// cnt and of the partials when it counts itself done.
__device__ __forceinline__ void group_release(unsigned long long* cnt, unsigned long long* done, long long g, int k) {
    if (threadIdx.x == 0 && k > 1) {
        if (atomicAdd(done + g, 1ull) == (unsigned long long)(k - 1)) {
            cnt[g] = 0ull;
            done[g] = 0ull;
        }
    }
}

template <class A>
__device__ __forceinline__ A group_sum(A mine, A* part, unsigned long long* cnt, long long g, int k, int p,
                                       unsigned long long round, A* scratch) {
    group_publish_wait(A(0), mine, part, cnt, g, k, p, round);
    if (threadIdx.x < 32) {
        __threadfence();
        const A* base = part + ((g * 2 + (long long)(round & 1)) * k) * 2;
        A w = A(0);
        for (int i = threadIdx.x; i < k; i += 32) w += ld_relaxed(base + 2 * i + 1);
        w = warp_sum(w, 32);
        if (threadIdx.x == 0) scratch[32] = w;
    }
    __syncthreads();
    A r = scratch[32];
    __syncthreads();
    return r;
}


// ---------------------------------------------------------------------------
// Tagged exchange (the cross-entropy split fast path): each partial travels as
// 64-bit words, the value in the low half and its round + 1 in the high half, so
// a reader knows a word is this round's from the word alone. No counter, no
// fence and no L1 invalidation per row: every access is a single-copy-atomic
// gpu-scope relaxed access (served by L2), and a word's tag is written with its
// value. Two parity buffers as for group_merge. The kernel leaves the words at
// zero when it finishes (tagged_release), and the launcher zeroes them when it
// allocates them, so a stale tag never matches.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
__device__ __forceinline__ void st_relaxed_u64(unsigned long long* p, unsigned long long v) {
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ unsigned long long ld_relaxed_u64(const unsigned long long* p) {
    unsigned long long v;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
#else
__device__ __forceinline__ void st_relaxed_u64(unsigned long long* p, unsigned long long v) {
    *(volatile unsigned long long*)p = v;
}
__device__ __forceinline__ unsigned long long ld_relaxed_u64(const unsigned long long* p) {
    return *(const volatile unsigned long long*)p;
}
#endif

__device__ __forceinline__ unsigned long long tag_word(float v, unsigned int tag) {
    return ((unsigned long long)tag << 32) | __float_as_uint(v);
}

// (max, sum - 1) of one partial per lane of a full warp, every lane getting the
// same bits: the max first (one FMNMX per level), then one sum of what each
// partial adds at that max, r itself where the partial holds it (so a dominated
// total keeps its low digits, as merge() does) and (1 + r) exp(m - M) elsewhere,
// plus the count of partials at the max, minus one. No exponential per level.
// Empty partials (-inf, -1) add nothing; an all -inf set stays (-inf, -1); a NaN
// max gives a NaN sum.
__device__ __forceinline__ MaxSum<float> warp_max_then_sum(MaxSum<float> v) {
    MaxSum<float> o;
    o.m = warp_max(v.m);
    const bool at = v.m == o.m;
    const float add = at ? v.r : (1.0f + v.r) * fast_exp(v.m - o.m);
    const int n_at = __popc(__ballot_sync(0xffffffffu, at));
    o.r = warp_sum(add, 32) + (float)(n_at - 1);
    return o;
}

// Lane `lane`'s share of round `tag`'s k partials (a fixed order), read once
// each partial's two words carry the tag; bounded as group_publish_wait (a trap,
// not a hang). The clock is read only once a word is found not ready.
__device__ __forceinline__ MaxSum<float> tagged_gather(const unsigned long long* base, int k, unsigned int tag,
                                                       int lane) {
    MaxSum<float> w = empty_maxsum<float>();
    for (int i = lane; i < k; i += 32) {
        unsigned long long a = ld_relaxed_u64(base + 2 * i), b = ld_relaxed_u64(base + 2 * i + 1);
        if ((unsigned int)(a >> 32) != tag || (unsigned int)(b >> 32) != tag) {
            const unsigned long long t0 = globaltimer_ns();
            do {
                nanosleep_ns(64);
                if (globaltimer_ns() - t0 > GS_SPIN_LIMIT_NS) __trap();
                a = ld_relaxed_u64(base + 2 * i);
                b = ld_relaxed_u64(base + 2 * i + 1);
            } while ((unsigned int)(a >> 32) != tag || (unsigned int)(b >> 32) != tag);
        }
        MaxSum<float> o;
        o.m = __uint_as_float((unsigned int)a);
        o.r = __uint_as_float((unsigned int)b);
        w = merge(w, o);  // k > 32 only: a lane's second partial
    }
    return w;
}

// The row's (max, sum - 1) over the k blocks of group g, from one partial per
// thread. Every warp reduces its lanes and posts; after the first barrier warp 0
// alone reduces the block's warps, publishes the block's partial (thread 0),
// waits for the group's k partials of this round (each lane for the ones it
// then reads: no other thread's observation to order) and reduces them in a
// fixed order; after the second barrier every thread reads that one result, so
// every block of the group holds the same bits. Two barriers per row and no
// fence; the other warps skip the exchange's instructions. slots: [33] of the
// block's shared memory (one buffer: each slot is rewritten only past a barrier
// every reader has passed). part: [group][2][k][2] words, the two parities as
// for group_merge (nothing overwrites a round's words before every block of the
// group has read them).
__device__ __forceinline__ MaxSum<float> tagged_group_reduce(MaxSum<float> mine, MaxSum<float>* slots,
                                                             unsigned long long* part, int g, int k, int p,
                                                             unsigned int round) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    mine = warp_max_then_sum(mine);
    if (lane == 0) slots[warp] = mine;
    __syncthreads();
    if (warp == 0) {
        const MaxSum<float> b = warp_max_then_sum(lane < nwarps ? slots[lane] : empty_maxsum<float>());
        unsigned long long* base = part + ((g * 2 + (int)(round & 1u)) * k) * 2;  // < 2^31 words
        const unsigned int tag = round + 1u;
        if (lane == 0) {
            st_relaxed_u64(base + 2 * p, tag_word(b.m, tag));
            st_relaxed_u64(base + 2 * p + 1, tag_word(b.r, tag));
        }
        const MaxSum<float> r = warp_max_then_sum(tagged_gather(base, k, tag, lane));
        if (lane == 0) slots[32] = r;
    }
    __syncthreads();
    return slots[32];
}

// After the group's last round: the last of its k blocks to finish zeroes the
// group's words and its done counter (every block is past its reads when it
// counts itself done: the barrier orders its warps' reads first).
__device__ __forceinline__ void tagged_release(unsigned long long* part, unsigned long long* done, long long g,
                                               int k) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();  // once per kernel: this block's reads before its count
        if (atomicAdd(done + g, 1ull) == (unsigned long long)(k - 1)) {
            __threadfence();
            unsigned long long* w = part + g * 4 * (long long)k;
            for (int i = 0; i < 4 * k; ++i) w[i] = 0ull;
            done[g] = 0ull;
        }
    }
}

}  // namespace gs
