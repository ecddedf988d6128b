// Token log-probabilities and entropy (RL post-training): forward and backward.
//
// One block per row, rows walked grid-stride. The element -> thread mapping and
// every reduction order depend on the row length and the block size alone, and
// the launcher picks the block size from the row length alone: a row's results
// are bitwise the same whatever the batch it arrives in (batch invariance).
// For the same reason the 16-byte slot layout is taken from the row's first
// element, not from the pointer's alignment: a misaligned row reads the same
// elements per thread with element loads instead of vector loads.
//
// z = cap * tanh(x / cap) / T (cap = 0: z = x / T). The kept set of a masked row
// is {z >= thr}: top_k and top_p both keep a prefix of the values in descending
// order with ties whole, so one threshold describes it; the backward reads it
// from the per-row record and applies the same comparison to the same z.
//
// Per-row record (TLP_RECORD values, accumulation type): m (max of the kept z;
// NaN for a row whose results are NaN), log_s = log sum_K exp(z - m),
// mean_sh = sum_K q (z - m), thr (-inf without a mask).

#include "common.cuh"

namespace gs {

constexpr int TLP_RECORD = 4;

// Order-preserving unsigned keys of floats (-0 sorts below +0; the searches
// compare values as floats, so that never matters): the threshold searches
// bisect over keys, which takes at most 32 (float) or 64 (double) steps.
__device__ __forceinline__ unsigned long long tlp_key(float f) {
    union {
        float f;
        unsigned u;
    } c;
    c.f = f;
    return (c.u & 0x80000000u) ? (unsigned long long)(~c.u) : (unsigned long long)(c.u | 0x80000000u);
}
__device__ __forceinline__ unsigned long long tlp_key(double f) {
    union {
        double f;
        unsigned long long u;
    } c;
    c.f = f;
    return (c.u >> 63) ? ~c.u : (c.u | 0x8000000000000000ull);
}
__device__ __forceinline__ float tlp_val(unsigned long long k, float) {
    union {
        float f;
        unsigned u;
    } c;
    const unsigned u = (unsigned)k;
    c.u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    return c.f;
}
__device__ __forceinline__ double tlp_val(unsigned long long k, double) {
    union {
        double f;
        unsigned long long u;
    } c;
    c.u = (k >> 63) ? (k & 0x7fffffffffffffffull) : ~k;
    return c.f;
}

__device__ __forceinline__ float acc_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double acc_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float acc_log(float x) { return logf(x); }
__device__ __forceinline__ double acc_log(double x) { return log(x); }

// The soft-cap and temperature as one transform, so every pass (and the backward)
// computes bitwise the same z from the same x.
template <class A>
struct Scale {
    A inv_t, cap, inv_cap, cap_t;  // cap == 0: no soft-cap

    __device__ __forceinline__ Scale(double inv_t_, double cap_)
        : inv_t((A)inv_t_), cap((A)cap_), inv_cap(cap_ > 0 ? (A)(1.0 / cap_) : A(0)), cap_t((A)(cap_ * inv_t_)) {}

    __device__ __forceinline__ A z(A x) const { return cap > A(0) ? cap_t * acc_tanh(x * inv_cap) : x * inv_t; }
    __device__ __forceinline__ A operator()(A x) const { return z(x); }
};

// The same transform with the soft-cap decided once per row instead of per slot
// (the statistics pass is the fast path): bitwise the z of Scale::z.
template <class A>
struct ZPlain {
    A inv_t;
    __device__ __forceinline__ A operator()(A x) const { return x * inv_t; }
    // The constant slope is folded into the backward's coefficients (k), so dz = 1.
    __device__ __forceinline__ A k() const { return inv_t; }
    __device__ __forceinline__ A with_slope(A x, A& dz) const {
        dz = A(1);
        return x * inv_t;
    }
};
template <class A>
struct ZCapped {
    A cap_t, inv_cap, inv_t;
    __device__ __forceinline__ A operator()(A x) const { return cap_t * acc_tanh(x * inv_cap); }
    __device__ __forceinline__ A k() const { return A(1); }
    __device__ __forceinline__ A with_slope(A x, A& dz) const {  // dz/dx from the same tanh
        const A th = acc_tanh(x * inv_cap);
        dz = (A(1) - th * th) * inv_t;
        return cap_t * th;
    }
};

// (max, sum - 1, sum exp(z - max) (z - max)): the MaxSum pair of common.cuh plus
// the weighted sum the entropy needs, merged with the same rescaling.
template <class A>
struct Stat3 {
    A m, r, w;
};

template <class A>
__device__ __forceinline__ Stat3<A> stat3_empty() {
    Stat3<A> e;
    e.m = -inf_of(A(0));
    e.r = A(-1);
    e.w = A(0);
    return e;
}

// `lo` rescaled onto max m and added to `hi` (which holds m). Guards keep an
// empty side (m = -inf) from making 0 * inf.
template <class A>
__device__ __forceinline__ Stat3<A> stat3_fold(Stat3<A> hi, Stat3<A> lo, A m) {
    const A f = rel_exp(lo.m, m);
    const A d = (lo.m == m) ? A(0) : lo.m - m;
    const A s = A(1) + lo.r;
    Stat3<A> o;
    o.m = m;
    o.r = hi.r + s * f;
    o.w = hi.w + ((f > A(0)) ? f * (lo.w + d * s) : A(0));
    return o;
}

template <class A>
__device__ __forceinline__ Stat3<A> stat3_merge(Stat3<A> a, Stat3<A> b) {
    const A m = nan_max(a.m, b.m);
    return (a.m == m) ? stat3_fold(a, b, m) : stat3_fold(b, a, m);
}

template <class A>
__device__ __forceinline__ Stat3<A> warp_merge3(Stat3<A> v) {
    for (int off = 16; off > 0; off >>= 1) {
        Stat3<A> o;
        o.m = __shfl_xor_sync(0xffffffffu, v.m, off, 32);
        o.r = __shfl_xor_sync(0xffffffffu, v.r, off, 32);
        o.w = __shfl_xor_sync(0xffffffffu, v.w, off, 32);
        v = stat3_merge(v, o);
    }
    return v;
}

// Block-wide merge, the result in every thread. The merge is not bitwise
// symmetric, so lane 0's value (the same in every warp) is the one broadcast.
template <class A>
__device__ __forceinline__ Stat3<A> block_merge3(Stat3<A> v, Stat3<A>* scratch /* [33] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_merge3(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        Stat3<A> w = lane < nwarps ? scratch[lane] : stat3_empty<A>();
        w = warp_merge3(w);
        if (lane == 0) scratch[32] = w;
    }
    __syncthreads();
    return scratch[32];
}

// Block-wide max and min (NaN dropped: fmax/fmin), the result in every thread.
// A block's sum, broadcast to every thread, safe to call back to back on the same
// slots (the bisection loops do): the leading barrier lets every thread finish
// reading the previous result before any warp writes the next.
template <class V>
__device__ __forceinline__ V tlp_block_sum(V v, V* slots /* [32] */) {
    __syncthreads();
    return block_sum_1b(v, slots);
}

template <class A>
__device__ __forceinline__ void block_max_min(A& hi, A& lo, A* scratch /* [66] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    for (int off = 16; off > 0; off >>= 1) {
        hi = fmax(hi, __shfl_xor_sync(0xffffffffu, hi, off, 32));
        lo = fmin(lo, __shfl_xor_sync(0xffffffffu, lo, off, 32));
    }
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = hi;
        scratch[33 + warp] = lo;
    }
    __syncthreads();
    if (warp == 0) {
        A h = lane < nwarps ? scratch[lane] : -inf_of(A(0));
        A l = lane < nwarps ? scratch[33 + lane] : inf_of(A(0));
        for (int off = 16; off > 0; off >>= 1) {
            h = fmax(h, __shfl_xor_sync(0xffffffffu, h, off, 32));
            l = fmin(l, __shfl_xor_sync(0xffffffffu, l, off, 32));
        }
        if (lane == 0) {
            scratch[32] = h;
            scratch[65] = l;
        }
    }
    __syncthreads();
    hi = scratch[32];
    lo = scratch[65];
}

// The row's z, one 16-byte slot at a time: f(e0, v) for every slot this thread
// owns, v[i] the z of element e0 + i (pad past the row's end; only a row's last
// slot is partial, so the per-element bound check is off the fast path).
template <class S, class Z, class F>
__device__ __forceinline__ void for_row_slots(const typename S::T* xr, int cols, bool vec_ok, const Z& sc,
                                              typename S::A pad, F f) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC;
    for (int e0 = threadIdx.x * VEC; e0 < cols; e0 += blockDim.x * VEC) {
        A v[VEC];
        load_slot<S, int>(xr, e0, cols, vec_ok, v, pad);
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[i] = sc(v[i]);
        if (e0 + VEC > cols) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) v[i] = (e0 + i < cols) ? v[i] : pad;
        }
        f(e0, v);
    }
}

// A thread's running statistics: m the running max, c how many values equal it,
// s = sum e^(z-m) over the values below it, w = sum e^(z-m) (z-m). m starts at the
// lowest finite value, not -inf, so that z - m is never -inf - (-inf); a -inf value
// then contributes e = 0 and no w term. Keeping the max's count apart from s keeps
// r = (c - 1) + s exact when one class dominates (as MaxSum's "sum - 1" does).
template <class A>
struct Running {
    A m, c, s, w;
};

__device__ __forceinline__ float lowest_of(float) { return -3.4028234663852886e38f; }
__device__ __forceinline__ double lowest_of(double) { return -1.7976931348623157e308; }

// Below this, e^d is 0 in the accumulation type (float: e^-104 flushes; double: e^-746).
template <class A>
__device__ __forceinline__ A w_clamp() {
    return sizeof(A) == 4 ? A(-1.0e4) : A(-1.0e5);
}

template <class A, int VEC>
__device__ __forceinline__ void running_add(Running<A>& st, const A (&v)[VEC]) {
    A mv = v[0];
#pragma unroll
    for (int i = 1; i < VEC; ++i) mv = fmax(mv, v[i]);  // NaN dropped here, caught by s below
    if (mv > st.m) {  // rare once the row's large values are seen
        const A d = st.m - mv;
        const A f = fast_exp(d);
        st.w = (f > A(0)) ? f * (st.w + d * (st.s + st.c)) : A(0);
        st.s = f * (st.s + st.c);
        st.c = A(0);
        st.m = mv;
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        const A d = v[i] - st.m;  // NaN (a NaN or +inf value) flows into s
        const A e = fast_exp(d);
        const bool at_max = (d == A(0));
        st.c += at_max ? A(1) : A(0);
        st.s += at_max ? A(0) : e;
        // A -inf value has e = 0: the clamp makes its term 0 * finite, not 0 * -inf
        // (one max instead of a compare and a select); NaN still propagates.
        st.w = fma(e, fmax(d, w_clamp<A>()), st.w);
    }
}

template <class A>
__device__ __forceinline__ Stat3<A> running_stat(const Running<A>& st) {
    if (st.c == A(0) && st.s == A(0)) return stat3_empty<A>();  // nothing above -inf
    Stat3<A> o;
    o.m = (st.s == st.s) ? st.m : nan_of(A(0));
    o.r = (st.c - A(1)) + st.s;
    o.w = st.w;
    return o;
}

// Statistics of {z >= thr} over the row (thr = -inf: the whole row).
template <class S, bool MASKED, class Z>
__device__ __forceinline__ Stat3<typename S::A> row_stats(const typename S::T* xr, int cols, bool vec_ok, const Z& sc,
                                                          typename S::A thr, Stat3<typename S::A>* scratch) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC;
    Running<A> st;
    st.m = lowest_of(A(0));
    st.c = st.s = st.w = A(0);
    for_row_slots<S>(xr, cols, vec_ok, sc, -inf_of(A(0)), [&](int, A(&v)[VEC]) {
        if (MASKED) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) v[i] = (v[i] >= thr) ? v[i] : -inf_of(A(0));
        }
        running_add<A, VEC>(st, v);
    });
    return block_merge3(running_stat(st), scratch);
}

// The k-th largest z of the row (k <= cols): the largest key u with
// #{z >= val(u)} >= k, bisected between the row's min and max. Uniform loop:
// every thread holds the same bounds (block reductions broadcast).
template <class S>
__device__ __forceinline__ typename S::A top_k_threshold(const typename S::T* xr, int cols, bool vec_ok,
                                                         const Scale<typename S::A>& sc, long long k,
                                                         typename S::A lo_v, typename S::A hi_v, int* iscratch) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC;
    unsigned long long lo = tlp_key(lo_v), hi = tlp_key(hi_v);
    while (lo < hi) {
        const unsigned long long mid = lo + (hi - lo + 1) / 2;
        const A u = tlp_val(mid, A(0));
        int n = 0;
        for_row_slots<S>(xr, cols, vec_ok, sc, -inf_of(A(0)), [&](int e0, A(&v)[VEC]) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) n += (e0 + i < cols && v[i] >= u) ? 1 : 0;
        });
        n = tlp_block_sum(n, iscratch);
        if ((long long)n >= k) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return tlp_val(lo, A(0));
}

// top_p over {z >= thr_k}: the smallest key u in [thr_k, max] whose strictly
// larger kept classes weigh < top_p, i.e. sum_{thr_k <= z, z > val(u)} exp(z - max)
// < top_p * sum_{z >= thr_k} exp(z - max). The answer is a value of the row, so the
// kept set {z >= val(u)} keeps ties whole and at least the max.
template <class S>
__device__ __forceinline__ typename S::A top_p_threshold(const typename S::T* xr, int cols, bool vec_ok,
                                                         const Scale<typename S::A>& sc, double top_p,
                                                         typename S::A thr_k, typename S::A hi_v,
                                                         typename S::A* scratch) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC;
    A total = A(0);
    for_row_slots<S>(xr, cols, vec_ok, sc, -inf_of(A(0)), [&](int, A(&v)[VEC]) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) total += (v[i] >= thr_k) ? fast_exp(v[i] - hi_v) : A(0);
    });
    const A target = (A)top_p * tlp_block_sum(total, scratch);
    unsigned long long lo = tlp_key(thr_k), hi = tlp_key(hi_v);
    while (lo < hi) {
        const unsigned long long mid = lo + (hi - lo) / 2;
        const A u = tlp_val(mid, A(0));
        A mass = A(0);
        for_row_slots<S>(xr, cols, vec_ok, sc, -inf_of(A(0)), [&](int, A(&v)[VEC]) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) mass += (v[i] >= thr_k && v[i] > u) ? fast_exp(v[i] - hi_v) : A(0);
        });
        if (tlp_block_sum(mass, scratch) < target) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return tlp_val(hi, A(0));
}

// Forward: logp, entropy and the per-row record. MASKED: top_k (0: off) and
// top_p (>= 1: off) thresholds found on chip first (several passes over the row).
template <class S, bool MASKED>
__device__ __forceinline__ void tlp_fwd(const typename S::T* x, const long long* tok, typename S::A* logp,
                                        typename S::A* ent, typename S::A* rec, long long rows, long long cols,
                                        long long ignore, double inv_t, double cap, long long top_k, double top_p) {
    typedef typename S::A A;
    __shared__ Stat3<A> scratch3[33];
    __shared__ A scratch[66];
    __shared__ int iscratch[33];
    const Scale<A> sc(inv_t, cap);
    const int n = (int)cols;
    const A ninf = -inf_of(A(0)), nan = nan_of(A(0));
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long t = tok[row];
        A* out_rec = rec + row * TLP_RECORD;
        if (t == ignore) {  // not read: exact zeros
            if (threadIdx.x == 0) {
                logp[row] = A(0);
                ent[row] = A(0);
                out_rec[0] = A(0);
                out_rec[1] = A(0);
                out_rec[2] = A(0);
                out_rec[3] = ninf;
            }
            continue;
        }
        const typename S::T* xr = x + row * cols;
        const bool vec_ok = misalign<S>(xr) == 0;
        A thr = ninf;
        bool bad = false;
        if (MASKED) {
            A hi = ninf, lo = inf_of(A(0));
            int nans = 0;
            for_row_slots<S>(xr, n, vec_ok, sc, ninf, [&](int e0, A(&v)[S::VEC]) {
#pragma unroll
                for (int i = 0; i < S::VEC; ++i) {
                    const bool in = e0 + i < n;
                    nans += (v[i] != v[i]) ? 1 : 0;
                    hi = fmax(hi, v[i]);
                    lo = in ? fmin(lo, v[i]) : lo;
                }
            });
            nans = tlp_block_sum(nans, iscratch);
            block_max_min(hi, lo, scratch);
            // NaN, +inf or no finite value: the row's results are NaN, no search.
            bad = nans > 0 || is_inf(hi);
            if (!bad) {
                thr = lo;
                if (top_k > 0 && top_k < cols) thr = top_k_threshold<S>(xr, n, vec_ok, sc, top_k, lo, hi, iscratch);
                if (top_p < 1.0) thr = top_p_threshold<S>(xr, n, vec_ok, sc, top_p, thr, hi, scratch);
            }
        }
        const Stat3<A> st = (sc.cap > A(0))
                                ? row_stats<S, MASKED>(xr, n, vec_ok, ZCapped<A>{sc.cap_t, sc.inv_cap, sc.inv_t}, thr, scratch3)
                                : row_stats<S, MASKED>(xr, n, vec_ok, ZPlain<A>{sc.inv_t}, thr, scratch3);
        if (threadIdx.x == 0) {
            bad = bad || !(st.m == st.m) || is_inf(st.m);
            const A log_s = acc_log1p(st.r);
            const A mean_sh = st.w / (A(1) + st.r);
            A lp = nan;
            if (t >= 0 && t < cols && !bad) {
                const A zt = sc.z(S::to_acc(xr[t]));
                lp = (zt >= thr) ? (zt - st.m) - log_s : ninf;
            }
            logp[row] = lp;
            ent[row] = bad ? nan : log_s - mean_sh;
            out_rec[0] = bad ? nan : st.m;
            out_rec[1] = log_s;
            out_rec[2] = mean_sh;
            out_rec[3] = thr;
        }
    }
}

// One row of the backward, the soft-cap decided once per row (Z). Per element
// grad = (hit gl - q (c0 + ge sh)) dz/dx with sh = z - m, c0 = gl - ge mean_sh:
// the log p term -gl q and the entropy term -ge q (sh - mean_sh) in one product,
// the coefficients negated and times the constant slope k beforehand.
template <class S, class Z>
__device__ __forceinline__ void bwd_row(const typename S::T* xr, typename S::T* gr, int n, bool vec_ok, const Z& zf,
                                        int t, typename S::A m, typename S::A log_s, typename S::A thr,
                                        typename S::A gl, typename S::A ge, typename S::A c0) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC;
    const A k = zf.k(), nge = -ge * k, nc0 = -c0 * k, glk = gl * k;
    for (int e0 = threadIdx.x * VEC; e0 < n; e0 += blockDim.x * VEC) {
        A v[VEC];
        load_slot<S, int>(xr, e0, n, vec_ok, v, A(0));
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            A dz;
            const A z = zf.with_slope(v[i], dz);
            const A sh = z - m;
            const A q = (z >= thr) ? fast_exp(sh - log_s) : A(0);
            // sh clamped where q is 0 anyway (e^-1e4): 0 * finite, never 0 * inf.
            v[i] = (q * fma(nge, fmax(sh, w_clamp<A>()), nc0)) * dz;
        }
        if (t >= e0 && t < e0 + VEC) {  // the token's slot: one per row
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                if (e0 + i == t) {
                    A dz;
                    zf.with_slope(S::to_acc(xr[t]), dz);
                    v[i] += glk * dz;
                }
            }
        }
        store_slot<S, int>(gr, e0, n, vec_ok, v);
    }
}

template <class S>
__device__ __forceinline__ void fill_row(typename S::T* gr, int n, bool vec_ok, typename S::A fill) {
    typedef typename S::A A;
    constexpr int VEC = S::VEC;
    for (int e0 = threadIdx.x * VEC; e0 < n; e0 += blockDim.x * VEC) {
        A v[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[i] = fill;
        store_slot<S, int>(gr, e0, n, vec_ok, v);
    }
}

// Backward: one read of x and one write of grad per element. g_ent may be null
// (the entropy not differentiated).
template <class S>
__device__ __forceinline__ void tlp_bwd(const typename S::T* x, typename S::T* grad, const long long* tok,
                                        const typename S::A* rec, const typename S::A* g_logp,
                                        const typename S::A* g_ent, long long rows, long long cols, long long ignore,
                                        double inv_t, double cap) {
    typedef typename S::A A;
    const Scale<A> sc(inv_t, cap);
    const int n = (int)cols;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long t = tok[row];
        const typename S::T* xr = x + row * cols;
        typename S::T* gr = grad + row * cols;
        const bool vec_ok = misalign<S>(xr) == 0 && misalign<S>(gr) == 0;
        const A* r = rec + row * TLP_RECORD;
        const bool ignored = t == ignore;
        const A m = r[0], log_s = r[1], mean_sh = r[2], thr = r[3];
        if (ignored || !(m == m) || t < 0 || t >= cols) {
            fill_row<S>(gr, n, vec_ok, ignored ? A(0) : nan_of(A(0)));
            continue;
        }
        // In range from here on (so an int). The token's own z decides whether log p
        // has a gradient (-inf outside K).
        const bool token_kept = sc.z(S::to_acc(xr[t])) >= thr;
        const A gl = token_kept ? g_logp[row] : A(0);
        const A ge = g_ent ? g_ent[row] : A(0);
        const A c0 = gl - ge * mean_sh;
        if (sc.cap > A(0)) {
            bwd_row<S>(xr, gr, n, vec_ok, ZCapped<A>{sc.cap_t, sc.inv_cap, sc.inv_t}, (int)t, m, log_s, thr, gl, ge,
                       c0);
        } else {
            bwd_row<S>(xr, gr, n, vec_ok, ZPlain<A>{sc.inv_t}, (int)t, m, log_s, thr, gl, ge, c0);
        }
    }
}

}  // namespace gs
