// Prelude prepended (by src/kernels/cuda/mod.rs) to every kernel module.
//
// No CUDA headers: NVRTC then needs no include path (the pip wheel
// nvidia-cuda-nvrtc alone compiles every module). bf16 and f16 are 16-bit
// storage structs; loads widen to f32 exactly (bf16 by a shift, f16 by
// `cvt.f32.f16`), stores round to nearest-even once (`cvt.rn.bf16.f32`,
// sm_80+, and `cvt.rn.f16.f32`). Arithmetic is in the accumulator type
// `acc_t<T>`: f32 for f32/bf16/f16, f64 for f64, as `T::Acc` on the CPU.
//
// Kernels are `extern "C"` with dtype-suffixed names (`fill_f32`, ...),
// generated per dtype by macros in each module; sizes are `usize` (64-bit).
//
// GPT2RS_HOST_EMU is defined only by the host emulator (tools/cuda-emu),
// which compiles these sources as C++ to test the f32/f64 kernels against
// the CPU ones: it leaves out the 16-bit parts (inline PTX) and instantiates
// the f32/f64 dtypes only. NVRTC never sees it defined.

typedef unsigned long long usize;
typedef long long i64;

struct bf16 { unsigned short x; };
struct f16 { unsigned short x; };

template <typename T> struct AccOf { typedef float type; };
template <> struct AccOf<double> { typedef double type; };
#define ACC(T) typename AccOf<T>::type

__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ double ld(double v) { return v; }
#ifndef GPT2RS_HOST_EMU
__device__ __forceinline__ float ld(bf16 v) { return __uint_as_float(((unsigned)v.x) << 16); }
__device__ __forceinline__ float ld(f16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.x));
    return f;
}
#endif

// Round an f32 or f64 value to T (f64 -> bf16/f16 goes through f32: the
// f64 paths below only ever store f64).
template <typename T> __device__ __forceinline__ T st(double v);
template <> __device__ __forceinline__ double st<double>(double v) { return v; }
template <> __device__ __forceinline__ float st<float>(double v) { return (float)v; }
#ifndef GPT2RS_HOST_EMU
template <> __device__ __forceinline__ bf16 st<bf16>(double v) {
    bf16 r;
    float f = (float)v;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.x) : "f"(f));
    return r;
}
template <> __device__ __forceinline__ f16 st<f16>(double v) {
    f16 r;
    float f = (float)v;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.x) : "f"(f));
    return r;
}
#endif
// Float overloads, so f32 arithmetic does not detour through f64.
template <typename T> __device__ __forceinline__ T stf(float v) { return st<T>((double)v); }
template <> __device__ __forceinline__ float stf<float>(float v) { return v; }
#ifndef GPT2RS_HOST_EMU
template <> __device__ __forceinline__ bf16 stf<bf16>(float v) {
    bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.x) : "f"(v));
    return r;
}
template <> __device__ __forceinline__ f16 stf<f16>(float v) {
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.x) : "f"(v));
    return r;
}
#endif
template <typename T> __device__ __forceinline__ T sto(float v) { return stf<T>(v); }
template <typename T> __device__ __forceinline__ T sto(double v) { return st<T>(v); }

__device__ __forceinline__ float xexp(float x) { return expf(x); }
__device__ __forceinline__ double xexp(double x) { return exp(x); }
__device__ __forceinline__ float xlog(float x) { return logf(x); }
__device__ __forceinline__ double xlog(double x) { return log(x); }
__device__ __forceinline__ float xsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double xsqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float xtanh(float x) { return tanhf(x); }
__device__ __forceinline__ double xtanh(double x) { return tanh(x); }
__device__ __forceinline__ float xerf(float x) { return erff(x); }
__device__ __forceinline__ double xerf(double x) { return erf(x); }
__device__ __forceinline__ float xmax(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double xmax(double a, double b) { return fmax(a, b); }

// Grid-stride loop over [0, n).
#define GRID_LOOP(i, n) \
    for (usize i = (usize)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (usize)blockDim.x * gridDim.x)

#define WARP_SIZE 32

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
    for (int o = WARP_SIZE / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename A> __device__ __forceinline__ A warp_max(A v) {
    for (int o = WARP_SIZE / 2; o > 0; o /= 2) v = xmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the total. `shared` holds 32 values of A.
template <typename A> __device__ A block_sum(A v, A* shared) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int nw = blockDim.x / WARP_SIZE;
    A t = lane < nw ? shared[lane] : (A)0;
    return warp_sum(t);
}
template <typename A> __device__ A block_max(A v, A* shared) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int nw = blockDim.x / WARP_SIZE;
    A t = lane < nw ? shared[lane] : (A)(-1.0 / 0.0);
    return warp_max(t);
}

// ---------------------------------------------------------------- dropout
// The counter-based mask of src/kernels/cpu/dropout.rs, bit for bit.

#define DROP_PHI 0x9e3779b97f4a7c15ULL

__device__ __forceinline__ unsigned long long drop_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
__device__ __forceinline__ unsigned drop_mix32(unsigned x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    return x ^ (x >> 16);
}
// Keep threshold: DropoutMask::new's `ceil(p * 2^32).min(u32::MAX) as u32`
// (fmin returns the non-NaN operand, as Rust's f64::min).
__device__ __forceinline__ unsigned drop_threshold(double p) {
    if (p <= 0.0) return 0u;
    return (unsigned)fmin(ceil(p * 4294967296.0), 4294967295.0);
}
__device__ __forceinline__ bool drop_keep(unsigned long long key, unsigned thr, bool none,
                                          unsigned long long g) {
    unsigned long long k = drop_mix64(key ^ (((g >> 32) + 1ULL) * DROP_PHI));
    unsigned ka = (unsigned)k, kb = (unsigned)(k >> 32);
    unsigned draw = drop_mix32(drop_mix32((unsigned)g ^ ka) ^ kb);
    return !none && draw >= thr;
}

// Attention dropout (attention.cu, attention_tc.cu): the layout shared with
// the Rust launcher's `AttnDropArgs` (nine 8-byte fields); on == 0: no dropout.
struct AttnDrop {
    unsigned long long seed, stream;
    double p, scale;
    usize nh, t, b_off, h_off, on;
};
// The mask of one call: DropoutMask::new(seed, stream, p).
struct AttnMask {
    unsigned long long key;
    unsigned thr;
    bool none, on;
};
__device__ __forceinline__ AttnMask att_mask(const AttnDrop& d) {
    AttnMask m;
    m.on = d.on != 0 && d.p > 0.0;
    m.key = drop_mix64(d.seed ^ drop_mix64(d.stream + DROP_PHI));
    m.thr = drop_threshold(d.p);
    m.none = d.p >= 1.0;
    return m;
}
__device__ __forceinline__ bool att_keep(const AttnMask& m, unsigned long long g) {
    return drop_keep(m.key, m.thr, m.none, g);
}
// Global index of the probability (query position qpos, key position kpos)
// in [B, NH, T, T].
__device__ __forceinline__ unsigned long long att_index(const AttnDrop& d, usize ib, usize hd,
                                                        usize qpos, usize kpos) {
    return (unsigned long long)((((d.b_off + ib) * d.nh + d.h_off + hd) * d.t + qpos) * d.t + kpos);
}

// Instantiate MACRO(T, suffix) for every storage dtype. FOR_ALL_DTYPES_WITH
// expands MACRO(A, B, T, suffix) instead (pairs of dtypes, e.g. casts).
// FOR_GRAD_PAIRS: storage dtype with its gradient/accumulator dtype: same
// type, or f32 gradients for 16-bit activations (mixed precision).
#ifndef GPT2RS_HOST_EMU
#define FOR_ALL_DTYPES(M) M(float, f32) M(double, f64) M(bf16, bf16) M(f16, f16)
#define FOR_ALL_DTYPES_WITH(M, A, B) \
    M(A, B, float, f32) M(A, B, double, f64) M(A, B, bf16, bf16) M(A, B, f16, f16)
#define FOR_GRAD_PAIRS(M) \
    M(float, f32, float, f32) M(double, f64, double, f64) M(bf16, bf16, bf16, bf16) \
    M(f16, f16, f16, f16) M(bf16, bf16, float, f32) M(f16, f16, float, f32)
#else
#define FOR_ALL_DTYPES(M) M(float, f32) M(double, f64)
#define FOR_ALL_DTYPES_WITH(M, A, B) M(A, B, float, f32) M(A, B, double, f64)
#define FOR_GRAD_PAIRS(M) M(float, f32, float, f32) M(double, f64, double, f64)
#endif
