// Host emulation of the CUDA features our kernels use, so that CI (no GPU) can run
// the real kernel source: one fiber per CUDA thread, counting barriers for
// __syncthreads/__syncwarp, a per-warp exchange buffer for shuffles. The functions
// of common.cuh written in inline PTX are replaced by the host versions below.
// It proves index arithmetic, tails, alignment paths, reductions and in-place
// safety; not GPU memory ordering, timing or the exact __expf rounding.
#include <cstdint>
#include <cstring>
#include <cmath>
#include <math.h>
#include <atomic>
#include <thread>
#include <vector>
#include <array>
#include <algorithm>
#include <functional>
#include <sched.h>
#include <sys/mman.h>
#include <chrono>
#include <mutex>
#include <cstdio>
#include <cstdlib>
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
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline double __longlong_as_double(long long i) { double f; memcpy(&f, &i, 8); return f; }
// Round-to-nearest float add and multiply, never fused (-O1 on x86-64 does not contract).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __expf(float x) { float r = exp2f(x * 1.44269504088896340736f); return (std::fabs(r) < 1.17549435e-38f) ? 0.0f : r; }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }

// Each CUDA thread is a fiber (its own stack, switched in user space): a barrier
// is a few hundred instructions, not a futex round trip through the kernel.
// Fibers are resumed in a fresh random order every round, so a missing barrier
// shows as a read of another thread's unwritten (poisoned) data.
struct FBar { unsigned expected = 0, count = 0, gen = 0; };
struct BlockCtx {
    FBar bar;
    std::vector<FBar> wbar;
    std::vector<std::array<unsigned long long, 32>> sbuf;
    alignas(64) char shared[16384];
    std::vector<uint4> dyn;  // dynamic shared memory of the launch
    int popc[2] = {0, 0};    // __syncthreads_count
};
thread_local BlockCtx* g_ctx;
inline void* gs_emu_shared() { return g_ctx->shared; }
inline void* gs_emu_dyn_shared() { return g_ctx->dyn.data(); }

#if defined(__x86_64__) && !defined(GS_EMU_UCONTEXT)
// Saves the callee-saved registers on this stack, stores its pointer in *save_sp
// and resumes the stack at next_sp (swapcontext would add a syscall per switch).
extern "C" void gs_emu_swap(void** save_sp, void* next_sp);
asm(R"(
.text
.p2align 4
.globl gs_emu_swap
.hidden gs_emu_swap
.type gs_emu_swap,@function
gs_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size gs_emu_swap, .-gs_emu_swap
)");
struct Fiber { void* sp; char* stack; BlockCtx* ctx; unsigned bx, tx; bool done, spun; };
thread_local void* t_sched_sp;     // the scheduler's saved stack pointer
inline void gs_emu_to_fiber(Fiber& f) { gs_emu_swap(&t_sched_sp, f.sp); }
inline void gs_emu_to_sched(Fiber& f) { gs_emu_swap(&f.sp, t_sched_sp); }
#else
#include <ucontext.h>
struct Fiber { ucontext_t uc; char* stack; BlockCtx* ctx; unsigned bx, tx; bool done, spun; };
thread_local ucontext_t t_sched_uc;
inline void gs_emu_to_fiber(Fiber& f) { swapcontext(&t_sched_uc, &f.uc); }
inline void gs_emu_to_sched(Fiber& f) { swapcontext(&f.uc, &t_sched_uc); }
#endif
thread_local Fiber* t_fiber;       // the fiber running now on this host thread
thread_local unsigned long long t_progress;  // barrier arrivals and exits so far
thread_local const std::function<void()>* t_body;
inline void gs_emu_yield() { gs_emu_to_sched(*t_fiber); }
inline void gs_emu_bar_wait(FBar& b) {
    const unsigned g = b.gen;
    ++t_progress;
    if (++b.count == b.expected) { b.count = 0; ++b.gen; return; }
    do gs_emu_yield(); while (b.gen == g);
}
inline void __syncwarp(unsigned = 0xffffffffu) { gs_emu_bar_wait(g_ctx->wbar[threadIdx.x >> 5]); }
inline void __syncthreads() { gs_emu_bar_wait(g_ctx->bar); }
template <class T> T __shfl_xor_sync(unsigned mask, T v, int off, int width = 32) {
    if (mask != 0xffffffffu) abort();
    if (width <= 0 || width > 32 || (width & (width - 1)) || off >= width) abort();
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    auto& buf = g_ctx->sbuf[w];
    unsigned long long tmp = 0; memcpy(&tmp, &v, sizeof(T));
    buf[lane] = tmp;
    gs_emu_bar_wait(g_ctx->wbar[w]);
    T r; unsigned long long t2 = buf[lane ^ off]; memcpy(&r, &t2, sizeof(T));
    gs_emu_bar_wait(g_ctx->wbar[w]);
    return r;
}
template <class T> T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    if (mask != 0xffffffffu) abort();
    if (width <= 0 || width > 32 || (width & (width - 1)) || src < 0 || src >= width) abort();
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    auto& buf = g_ctx->sbuf[w];
    unsigned long long tmp = 0; memcpy(&tmp, &v, sizeof(T));
    buf[lane] = tmp;
    gs_emu_bar_wait(g_ctx->wbar[w]);
    T r; unsigned long long t2 = buf[(lane & ~(width - 1)) + src]; memcpy(&r, &t2, sizeof(T));
    gs_emu_bar_wait(g_ctx->wbar[w]);
    return r;
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    if (mask != 0xffffffffu) abort();
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    auto& buf = g_ctx->sbuf[w];
    buf[lane] = pred ? 1ull : 0ull;
    gs_emu_bar_wait(g_ctx->wbar[w]);
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= (buf[i] ? 1u : 0u) << i;
    gs_emu_bar_wait(g_ctx->wbar[w]);
    return r;
}
// redux.sync.max.s32 over the full warp.
inline int __reduce_max_sync(unsigned mask, int v) {
    for (int off = 16; off > 0; off >>= 1) v = std::max(v, __shfl_xor_sync(mask, v, off));
    return v;
}
// bar.red.popc: a barrier that also counts the block's threads with pred set.
// Counts alternate between two buffers by barrier generation; the first arriver
// clears its generation's buffer (every thread read the one two barriers back
// before it could pass the barrier between).
inline int __syncthreads_count(int pred) {
    auto& b = g_ctx->bar;
    const unsigned g = b.gen;
    if (b.count == 0) g_ctx->popc[g & 1] = 0;
    g_ctx->popc[g & 1] += pred ? 1 : 0;
    gs_emu_bar_wait(b);
    return g_ctx->popc[g & 1];
}
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
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
inline void st_relaxed_u64(unsigned long long* p, unsigned long long v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
inline unsigned long long ld_relaxed_u64(const unsigned long long* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
// A spin-wait on another block: let the other fibers run.
inline void nanosleep_ns(unsigned) { t_fiber->spun = true; gs_emu_yield(); }
// cp.async has no host form: a plain copy, already complete when wait_all runs.
inline void cp_async16(uint4* smem, const void* gmem) { memcpy(smem, gmem, 16); }
inline void cp_async_wait_all() {}
inline void cp_async_commit() {}
inline unsigned dynamic_smem_bytes() { return (unsigned)(g_ctx->dyn.size() * 16); }
// Shared-window addresses: offsets into the launch's dynamic shared memory (the
// only shared memory the kernels address this way).
inline unsigned shared_addr(const void* p) { return (unsigned)((const char*)p - (const char*)gs_emu_dyn_shared()); }
inline void cp_async16_at(unsigned s, const void* gmem) { memcpy((char*)gs_emu_dyn_shared() + s, gmem, 16); }
inline uint4 ld_shared_v4(unsigned s) { uint4 v; memcpy(&v, (const char*)gs_emu_dyn_shared() + s, 16); return v; }
inline void cp_async_wait_one() {}
// max.NaN.f32: NaN if either input is NaN.
inline float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }
inline void st_global_v4(void* p, uint4 v) { memcpy(p, &v, 16); }
inline float pinned(float x) { return x; }
// max.NaN.{bf16,f16}x2: per half, the canonical NaN (0x7fff, 0x7fff) if either
// input is NaN, else the larger value's bits.
inline unsigned short gs_emu_max16(unsigned short a, unsigned short b, bool bf) {
    float fa, fb;
    if (bf) { unsigned ua = (unsigned)a << 16, ub = (unsigned)b << 16; memcpy(&fa, &ua, 4); memcpy(&fb, &ub, 4); }
    else { fa = f16_to_f32(a); fb = f16_to_f32(b); }
    if (fa != fa || fb != fb) return 0x7fff;
    return fa > fb || (fa == fb && !(a & 0x8000)) ? a : b;
}
inline unsigned gs_emu_max16x2(unsigned a, unsigned b, bool bf) {
    return gs_emu_max16(a & 0xffff, b & 0xffff, bf) | ((unsigned)gs_emu_max16(a >> 16, b >> 16, bf) << 16);
}
inline unsigned max_nan_bf16x2(unsigned a, unsigned b) { return gs_emu_max16x2(a, b, true); }
inline unsigned max_nan_f16x2(unsigned a, unsigned b) { return gs_emu_max16x2(a, b, false); }
// An empty asm on the GPU (it keeps code on its branch): nothing to do here.
inline void pin_to_branch(float&, float&) {}
// ex2.approx.ftz.f32: subnormal results flushed to zero, as __expf above.
inline float fast_exp2(float x) { float r = exp2f(x); return (std::fabs(r) < 1.17549435e-38f) ? 0.0f : r; }
}


constexpr size_t kStack = 1 << 17, kGuard = 4096;
static std::mutex g_stack_mu;
static std::vector<char*> g_stacks;  // reused across launches: mmap once
static char* stack_get() {
    {
        std::lock_guard<std::mutex> l(g_stack_mu);
        if (!g_stacks.empty()) { char* s = g_stacks.back(); g_stacks.pop_back(); return s; }
    }
    void* m = mmap(nullptr, kStack + kGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) abort();
    mprotect(m, kGuard, PROT_NONE);  // an overflow faults instead of corrupting a neighbour
    return (char*)m;
}
static void stacks_put(std::vector<Fiber>& fs) {
    std::lock_guard<std::mutex> l(g_stack_mu);
    for (auto& f : fs) g_stacks.push_back(f.stack);
}
[[noreturn]] static void fiber_entry() {
    (*t_body)();
    t_fiber->done = true;
    ++t_progress;
    gs_emu_to_sched(*t_fiber);  // never resumed
    abort();
}
static void fiber_init(Fiber& f, BlockCtx* c, unsigned bx, unsigned tx) {
    f.ctx = c; f.bx = bx; f.tx = tx; f.done = false; f.spun = false;
#if defined(__x86_64__) && !defined(GS_EMU_UCONTEXT)
    uintptr_t top = ((uintptr_t)f.stack + kGuard + kStack) & ~(uintptr_t)15;
    void** sp = (void**)(top - 64);  // six zeroed callee-saved registers, the entry, a null return address
    for (int i = 0; i < 6; ++i) sp[i] = nullptr;
    sp[6] = (void*)&fiber_entry;
    sp[7] = nullptr;
    f.sp = sp;
#else
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = f.stack + kGuard;
    f.uc.uc_stack.ss_size = kStack;
    f.uc.uc_link = nullptr;
    makecontext(&f.uc, (void (*)())&fiber_entry, 0);
#endif
}

static void ctx_init(BlockCtx* c, unsigned block, unsigned smem) {
    c->bar = FBar{block, 0, 0};
    c->wbar.assign(block / 32, FBar{32, 0, 0});
    c->sbuf.resize(block / 32);
    memset(c->shared, 0xAB, sizeof(c->shared));
    c->dyn.assign((smem + 15) / 16, uint4{0xABABABABu, 0xABABABABu, 0xABABABABu, 0xABABABABu});
}

enum { EMU_OK = 0, EMU_DEADLOCK = 4, EMU_SPIN_TIMEOUT = 5, EMU_TRAP = 7 };
static std::atomic<int> g_fail;
// The device's %globaltimer: steady-clock nanoseconds times a scale the harness
// sets. The default (1e-3) keeps the kernels' spin bound out of reach of a wait
// that is only slow on the CPU; a test raises it to watch the bound trap.
static std::atomic<double> g_timer_scale{1e-3};
extern "C" void emu_set_timer_scale(double s) { g_timer_scale = s; }
namespace gs {
inline unsigned long long globaltimer_ns() {
    const double ns = (double)std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now().time_since_epoch()).count();
    return (unsigned long long)(ns * g_timer_scale.load());
}
}
// __trap() ends the launch: the scheduler sees g_fail and returns; this fiber stays
// suspended (as after any failed launch).
inline void __trap() {
    fprintf(stderr, "emulator: __trap() (a block waited past the spin bound)\n");
    g_fail = EMU_TRAP;
    t_fiber->spun = true;  // not a barrier deadlock: the scheduler returns EMU_TRAP next round
    for (;;) gs_emu_yield();
}
// Runs the fibers until all have exited. A round in which no fiber arrives at a
// barrier or exits, and none spins, is a barrier deadlock; spinning without
// progress for `spin_limit_s` is a wait that no other block will ever satisfy.
static int schedule(std::vector<Fiber>& fs, unsigned long long seed, double spin_limit_s) {
    std::vector<unsigned> order(fs.size());
    for (unsigned i = 0; i < order.size(); ++i) order[i] = i;
    size_t live = fs.size();
    auto last_progress = std::chrono::steady_clock::now();
    while (live) {
        if (g_fail.load(std::memory_order_relaxed)) return g_fail.load();
        for (size_t i = order.size(); i > 1; --i) {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            std::swap(order[i - 1], order[seed % i]);
        }
        const unsigned long long before = t_progress;
        bool spun = false;
        for (unsigned i : order) {
            Fiber& f = fs[i];
            if (f.done) continue;
            t_fiber = &f; g_ctx = f.ctx; blockIdx = {f.bx, 0, 0}; threadIdx = {f.tx, 0, 0};
            f.spun = false;
            gs_emu_to_fiber(f);
            spun |= f.spun;
            if (f.done) --live;
        }
        if (t_progress != before) { last_progress = std::chrono::steady_clock::now(); continue; }
        if (!live) break;
        if (!spun) {
            fprintf(stderr, "emulator: barrier deadlock (threads of a block wait at different barriers, or exited)\n");
            g_fail = EMU_DEADLOCK;
            return EMU_DEADLOCK;
        }
        sched_yield();
        if (std::chrono::duration<double>(std::chrono::steady_clock::now() - last_progress).count() > spin_limit_s) {
            fprintf(stderr, "emulator: a block spin-waited %.0f s without progress (waiting for a block that is "
                    "not co-resident: a non-cooperative launch must not wait for another block)\n", spin_limit_s);
            g_fail = EMU_SPIN_TIMEOUT;
            return EMU_SPIN_TIMEOUT;
        }
    }
    return EMU_OK;
}

// A cooperative launch keeps every block live at once (its blocks wait for each
// other); any other launch runs one block at a time per host thread, as a GPU
// may schedule its blocks in any order and need not run them together.
static int emu_run(unsigned grid, unsigned block, unsigned smem, bool cooperative, std::function<void()> body) {
    blockDim = {block, 1, 1}; gridDim = {grid, 1, 1};
    if (block % 32) return 2;
    g_fail = EMU_OK;
    unsigned hosts = std::max(1u, std::min(grid, std::thread::hardware_concurrency()));
    std::atomic<unsigned> next_block{0};
    auto host = [&](unsigned h) {
        t_body = &body;
        t_progress = 0;
        unsigned long long seed = 0x9E3779B97F4A7C15ull ^ ((unsigned long long)(h + 1) * 0xD1B54A32D192ED03ull) ^ grid;
        if (cooperative) {
            std::vector<BlockCtx*> ctxs;
            std::vector<Fiber> fs;
            for (unsigned b = h; b < grid; b += hosts) ctxs.push_back(new BlockCtx());
            fs.resize(ctxs.size() * block);
            for (size_t i = 0; i < ctxs.size(); ++i) {
                ctx_init(ctxs[i], block, smem);
                for (unsigned t = 0; t < block; ++t) {
                    Fiber& f = fs[i * block + t];
                    f.stack = stack_get();
                    fiber_init(f, ctxs[i], h + (unsigned)i * hosts, t);
                }
            }
            int rc = schedule(fs, seed, 120.0);
            if (rc == EMU_OK) { stacks_put(fs); for (auto c : ctxs) delete c; }  // else: fibers stay suspended, leaked
            return;
        }
        BlockCtx* c = new BlockCtx();
        std::vector<Fiber> fs(block);
        for (auto& f : fs) f.stack = stack_get();
        for (unsigned b; (b = next_block.fetch_add(1)) < grid;) {
            ctx_init(c, block, smem);
            for (unsigned t = 0; t < block; ++t) fiber_init(fs[t], c, b, t);
            seed += b;
            if (schedule(fs, seed, 10.0) != EMU_OK) return;
        }
        stacks_put(fs);
        delete c;
    };
    std::vector<std::thread> others;
    for (unsigned h = 1; h < hosts; ++h) others.emplace_back(host, h);
    host(0);
    for (auto& t : others) t.join();
    return g_fail.load();
}
