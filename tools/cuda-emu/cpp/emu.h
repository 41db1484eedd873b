// The CUDA subset that cuda/*.cu use, for compiling them as host C++ (f32/f64
// instantiations only). Each module's translation unit is this header, then
// cuda/prelude.cu, then the module (see build.rs).
//
// Execution model (emu.cpp): a launch runs its blocks one after the other on
// the calling OS thread; the threads of a block are cooperative fibers
// (ucontext), resumed in a fixed order. A fiber runs until it reaches a
// __syncthreads or a warp shuffle, so a block-wide or warp-wide exchange
// always sees every participant's value, and a run is deterministic. What
// CUDA leaves undefined or the hardware may hang on aborts with a message
// instead of passing silently: a __syncthreads that some thread of the block
// does not reach (exited threads included), a full-mask shuffle with an
// exited or absent lane, a launch outside CUDA's block and grid limits.
#pragma once

#define GPT2RS_HOST_EMU 1

#include <cmath>
#include <cstdint>
#include <cstring>

struct EmuDim {
    unsigned x, y, z;
};
// Set by the scheduler before it resumes a fiber. thread_local: tests launch
// kernels from several OS threads at once, each running its own launch.
extern thread_local EmuDim threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
// One block runs at a time per OS thread, so per-thread static storage is
// exactly one block's shared memory.
#define __shared__ static thread_local

extern "C" void emu_syncthreads();
extern "C" uint64_t emu_shfl_xor(unsigned mask, uint64_t bits, int lane_mask);
extern "C" [[noreturn]] void emu_trap();

#define __syncthreads() emu_syncthreads()
#define __trap() emu_trap()

template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a value wider than 64 bits");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = emu_shfl_xor(mask, bits, lane_mask);
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}

// Fibers never run concurrently, so a read-modify-write is atomic.
inline float atomicAdd(float* p, float v) {
    float old = *p;
    *p = old + v;
    return old;
}
inline double atomicAdd(double* p, double v) {
    double old = *p;
    *p = old + v;
    return old;
}
