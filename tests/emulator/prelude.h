// Host emulation of the CUDA features our kernels use, so that CI (no GPU) can run
// the real kernel source: one host thread per CUDA thread, std::barrier for
// __syncthreads/__syncwarp, a per-warp exchange buffer for shuffles. The functions
// of common.cuh written in inline PTX are replaced by the host versions below.
// It proves index arithmetic, tails, alignment paths, reductions and in-place
// safety; not GPU memory ordering, timing or the exact __expf rounding.
#include <cstdint>
#include <cstring>
#include <cmath>
#include <math.h>
#include <atomic>
#include <barrier>
#include <thread>
#include <vector>
#include <array>
#include <algorithm>
#include <functional>
#include <pthread.h>
#include <sched.h>
using std::min;
struct dim3e { unsigned x, y, z; };
thread_local dim3e threadIdx, blockIdx;
dim3e blockDim, gridDim;
struct uint4 { unsigned x, y, z, w; };
#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(...)
#define __restrict__
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double f; memcpy(&f, &i, 8); return f; }
inline float __expf(float x) { float r = exp2f(x * 1.44269504088896340736f); return (std::fabs(r) < 1.17549435e-38f) ? 0.0f : r; }

struct BlockCtx {
    std::barrier<>* bar;
    std::vector<std::barrier<>*> wbar;
    std::vector<std::array<unsigned long long, 32>> sbuf;
    alignas(64) char shared[16384];
    std::vector<uint4> dyn;  // dynamic shared memory of the launch
};
thread_local BlockCtx* g_ctx;
inline void* gs_emu_shared() { return g_ctx->shared; }
inline void* gs_emu_dyn_shared() { return g_ctx->dyn.data(); }
inline void __syncwarp(unsigned = 0xffffffffu) { g_ctx->wbar[threadIdx.x >> 5]->arrive_and_wait(); }
inline void __syncthreads() { g_ctx->bar->arrive_and_wait(); }
template <class T> T __shfl_xor_sync(unsigned mask, T v, int off, int width = 32) {
    if (mask != 0xffffffffu) abort();
    if (width <= 0 || width > 32 || (width & (width - 1)) || off >= width) abort();
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    auto& buf = g_ctx->sbuf[w];
    unsigned long long tmp = 0; memcpy(&tmp, &v, sizeof(T));
    buf[lane] = tmp;
    g_ctx->wbar[w]->arrive_and_wait();
    T r; unsigned long long t2 = buf[lane ^ off]; memcpy(&r, &t2, sizeof(T));
    g_ctx->wbar[w]->arrive_and_wait();
    return r;
}
template <class T> T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    if (mask != 0xffffffffu) abort();
    if (width <= 0 || width > 32 || (width & (width - 1)) || src < 0 || src >= width) abort();
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    auto& buf = g_ctx->sbuf[w];
    unsigned long long tmp = 0; memcpy(&tmp, &v, sizeof(T));
    buf[lane] = tmp;
    g_ctx->wbar[w]->arrive_and_wait();
    T r; unsigned long long t2 = buf[(lane & ~(width - 1)) + src]; memcpy(&r, &t2, sizeof(T));
    g_ctx->wbar[w]->arrive_and_wait();
    return r;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

namespace gs {
inline float f16_to_f32(unsigned short h) { _Float16 x; memcpy(&x, &h, 2); return (float)x; }
inline unsigned short f32_to_f16(float f) { _Float16 x = (_Float16)f; unsigned short h; memcpy(&h, &x, 2); return h; }
inline unsigned short f32_to_bf16(float f) {
    unsigned u; memcpy(&u, &f, 4);
    if (std::isnan(f)) return (unsigned short)((u >> 16) | 0x40);
    u += 0x7FFF + ((u >> 16) & 1);
    return (unsigned short)(u >> 16);
}
inline unsigned long long ld_acquire(const unsigned long long* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
inline float ld_relaxed(const float* p) { return *(const volatile float*)p; }
inline double ld_relaxed(const double* p) { return *(const volatile double*)p; }
inline void nanosleep_ns(unsigned) { sched_yield(); }
// cp.async has no host form: a plain copy, already complete when wait_all runs.
inline void cp_async16(uint4* smem, const void* gmem) { memcpy(smem, gmem, 16); }
inline void cp_async_wait_all() {}
}

struct Launch {
    std::function<void()> body;
};
struct TArg { BlockCtx* ctx; unsigned bx, tx; std::function<void()>* body; };
static void* thread_main(void* a) {
    TArg* t = (TArg*)a;
    g_ctx = t->ctx; blockIdx = {t->bx, 0, 0}; threadIdx = {t->tx, 0, 0};
    (*t->body)();
    return nullptr;
}
static int emu_run(unsigned grid, unsigned block, unsigned smem, std::function<void()> body) {
    blockDim = {block, 1, 1}; gridDim = {grid, 1, 1};
    if (block % 32) return 2;
    std::vector<BlockCtx*> ctxs;
    for (unsigned b = 0; b < grid; ++b) {
        BlockCtx* c = new BlockCtx();
        c->bar = new std::barrier<>(block);
        for (unsigned w = 0; w < block / 32; ++w) c->wbar.push_back(new std::barrier<>(32));
        c->sbuf.resize(block / 32);
        memset(c->shared, 0xAB, sizeof(c->shared));
        c->dyn.assign((smem + 15) / 16, uint4{0xABABABABu, 0xABABABABu, 0xABABABABu, 0xABABABABu});
        ctxs.push_back(c);
    }
    std::vector<TArg> targs(grid * block);
    std::vector<pthread_t> th(grid * block);
    pthread_attr_t attr; pthread_attr_init(&attr); pthread_attr_setstacksize(&attr, 1 << 17);
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < block; ++t) {
            targs[b * block + t] = {ctxs[b], b, t, &body};
            if (pthread_create(&th[b * block + t], &attr, thread_main, &targs[b * block + t])) return 3;
        }
    for (auto& x : th) pthread_join(x, nullptr);
    for (auto c : ctxs) { delete c->bar; for (auto w : c->wbar) delete w; delete c; }
    return 0;
}
