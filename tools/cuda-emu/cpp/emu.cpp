// The scheduler behind emu.h: blocks in order, a block's threads as fibers.
//
// Fibers rather than one OS thread per CUDA thread: a block of 256 threads
// then costs no thread creation and no kernel-level synchronisation, which
// keeps the whole test suite to seconds on a 2-core CI machine, and the
// interleaving is fixed, so a failure reproduces.
#include "emu.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <vector>

thread_local EmuDim threadIdx, blockIdx, blockDim, gridDim;

namespace {

enum class State { Ready, AtBarrier, AtShuffle, Exited };

struct Fiber {
    ucontext_t ctx;
    State state;
    uint64_t offered, received; // shuffle values
    int lane_mask;
};

struct Launch {
    void (*body)(void*);
    void* arg;
    ucontext_t scheduler;
    std::vector<Fiber> fibers;
    Fiber* current;
};
thread_local Launch* launch_ = nullptr;

[[noreturn]] void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "cuda-emu: ");
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, " (block %u of %u, block size %ux%u)\n", blockIdx.x, gridDim.x, blockDim.x,
                 blockDim.y);
    std::abort();
}

// Fiber stacks, one per thread of the largest block seen on this OS thread,
// kept across launches. The kernels' locals are a few hundred bytes (the
// attention rows hold HS_MAX / 32 values per array), so 256 KiB is ample;
// an overflow hits the guard page below each stack instead of a neighbour.
constexpr size_t kStack = 256 << 10;
struct Stacks {
    char* base = nullptr;
    size_t count = 0;
    ~Stacks() {
        if (base) munmap(base, count * kStack);
    }
    void reserve(size_t n) {
        if (n <= count) return;
        if (base) munmap(base, count * kStack);
        void* p = mmap(nullptr, n * kStack, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) fail("cannot map %zu fiber stacks", n);
        base = static_cast<char*>(p);
        count = n;
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        for (size_t i = 0; i < n; i++) mprotect(base + i * kStack, page, PROT_NONE);
    }
};
thread_local Stacks stacks;

void fiber_main() {
    Launch* l = launch_;
    l->body(l->arg);
    l->current->state = State::Exited; // then uc_link resumes the scheduler
}

void wait(State s) {
    Launch* l = launch_;
    if (!l) fail("__syncthreads or a shuffle outside a kernel");
    Fiber* f = l->current;
    f->state = s;
    swapcontext(&f->ctx, &l->scheduler);
}

// Runs one block to completion. Each round resumes every ready fiber once;
// when none is ready, a warp whose 32 lanes all wait at a shuffle exchanges,
// else a barrier that every thread of the block waits at opens.
void run_block(Launch& l) {
    unsigned n = (unsigned)l.fibers.size();
    for (;;) {
        for (unsigned t = 0; t < n; t++) {
            Fiber& f = l.fibers[t];
            if (f.state != State::Ready) continue;
            l.current = &f;
            threadIdx = EmuDim{t % blockDim.x, t / blockDim.x, 0};
            swapcontext(&l.scheduler, &f.ctx);
        }
        bool released = false;
        for (unsigned lo = 0; lo < n; lo += 32) {
            unsigned hi = lo + 32 < n ? lo + 32 : n, waiting = 0;
            for (unsigned t = lo; t < hi; t++) waiting += l.fibers[t].state == State::AtShuffle;
            if (waiting == 0) continue;
            // Every lane must take part in a full-mask shuffle.
            if (hi - lo < 32) fail("shuffle in the partial warp %u", lo / 32);
            for (unsigned t = lo; t < hi; t++)
                if (l.fibers[t].state == State::Exited)
                    fail("shuffle in warp %u, whose lane %u has exited", lo / 32, t - lo);
            if (waiting != 32) continue; // lanes at a barrier: the deadlock below
            for (unsigned t = lo; t < hi; t++) {
                unsigned src = ((t - lo) ^ (unsigned)l.fibers[t].lane_mask);
                if (src >= 32) fail("shuffle lane mask %d", l.fibers[t].lane_mask);
                l.fibers[t].received = l.fibers[lo + src].offered;
            }
            for (unsigned t = lo; t < hi; t++) l.fibers[t].state = State::Ready;
            released = true;
        }
        if (released) continue;
        unsigned exited = 0, at_barrier = 0;
        for (Fiber& f : l.fibers) {
            exited += f.state == State::Exited;
            at_barrier += f.state == State::AtBarrier;
        }
        if (exited == n) return;
        if (at_barrier == n) {
            for (Fiber& f : l.fibers) f.state = State::Ready;
            continue;
        }
        // CUDA requires a barrier to be reached by the whole block.
        fail("deadlock: %u threads at __syncthreads, %u exited, %u at a shuffle", at_barrier, exited,
             n - at_barrier - exited);
    }
}

// A fresh fiber for thread `t` of the next block. (Its own function: the
// caller's locals stay clear of getcontext, which "returns twice" for g++.)
void start_fiber(Launch& l, size_t t) {
    Fiber& f = l.fibers[t];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stacks.base + t * kStack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &l.scheduler;
    makecontext(&f.ctx, fiber_main, 0);
    f.state = State::Ready;
}

} // namespace

extern "C" void emu_syncthreads() { wait(State::AtBarrier); }

extern "C" uint64_t emu_shfl_xor(unsigned mask, uint64_t bits, int lane_mask) {
    Fiber* f = launch_ ? launch_->current : nullptr;
    if (!f) fail("shuffle outside a kernel");
    if (mask != 0xffffffffu) fail("shuffle with mask %#x: only whole warps are emulated", mask);
    f->offered = bits;
    f->lane_mask = lane_mask;
    wait(State::AtShuffle);
    return f->received;
}

extern "C" [[noreturn]] void emu_trap() { fail("the kernel called __trap()"); }

// Runs `body(arg)` as every thread of a grid of `grid` blocks of
// `block_x` x `block_y` threads (threadIdx.x fastest, as on the GPU).
extern "C" void emu_launch(void (*body)(void*), void* arg, unsigned grid, unsigned block_x,
                           unsigned block_y) {
    gridDim = EmuDim{grid, 1, 1};
    blockDim = EmuDim{block_x, block_y, 1};
    blockIdx = EmuDim{0, 0, 0};
    size_t n = (size_t)block_x * block_y;
    if (grid == 0 || grid > 0x7fffffffu || n == 0 || n > 1024 || block_y > 1024)
        fail("launch geometry outside CUDA's limits");
    if (launch_) fail("a launch inside a kernel");
    stacks.reserve(n);
    Launch l;
    l.body = body;
    l.arg = arg;
    l.fibers.resize(n);
    launch_ = &l;
    for (unsigned b = 0; b < grid; b++) {
        blockIdx = EmuDim{b, 0, 0};
        for (size_t t = 0; t < n; t++) start_fiber(l, t);
        run_block(l);
    }
    launch_ = nullptr;
}
