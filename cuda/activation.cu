// Activations and dropout, elementwise (grid-stride, one thread per element),
// in acc_t<T>, written as src/kernels/cpu/activation.rs computes them:
//   gelu (tanh): y = x / (1 + exp(-2u)) = 0.5 x (1 + tanh u),
//                u = sqrt(2/pi) (x + 0.044715 x^3)
//     dy/dx = s + 2 x s (1 - s) u',  s = 1 / (1 + exp(-2u)),
//             u' = sqrt(2/pi) + 3 * 0.044715 * sqrt(2/pi) x^2
//   gelu_exact: y = 0.5 x erfc(-x / sqrt 2),  dy/dx = Phi(x) + x phi(x)
//   relu: y = max(x, 0) (NaN kept: y = x unless x <= 0),  dy/dx = [x > 0]
// The sigmoid and erfc forms keep full relative precision for very negative
// x, where 1 + tanh u and 1 + erf cancel. Backward kernels overwrite
// dx = dy * act'(x); the `_inplace` ones take dy from dx (dx aliases dy).
//
// Dropout: a bit-for-bit port of src/kernels/cpu/dropout.rs. Element i of a
// tile has the row-major index g(i) in the GLOBAL tensor; it is kept iff
//   draw = mix32(mix32(lo ^ ka) ^ kb) >= threshold,  lo = g mod 2^32,
//   (ka, kb) = halves of mix64(key ^ (g / 2^32 + 1) * PHI),
//   key = mix64(seed ^ mix64(stream + PHI)),  threshold = min(ceil(p 2^32), 2^32 - 1),
// and nothing is kept for p >= 1. Kept: x * scale (scale = 1/(1-p) from the
// host, rounded to acc_t); dropped: exactly 0. All integer arithmetic wraps.
// The tile geometry comes as its shape and the global strides (rank <= 8).

#define SQRT_2_OVER_PI 0.7978845608028654
#define GELU_K 0.044715
#define FRAC_1_SQRT_2 0.7071067811865476
#define INV_SQRT_2PI 0.3989422804014327

__device__ __forceinline__ float xerfc(float x) { return erfcf(x); }
__device__ __forceinline__ double xerfc(double x) { return erfc(x); }

template <typename A> __device__ __forceinline__ A gelu_tanh(A x) {
    A u = (A)SQRT_2_OVER_PI * (x + (A)GELU_K * x * x * x);
    return x / ((A)1 + xexp((A)(-2.0) * u));
}
template <typename A> __device__ __forceinline__ A gelu_tanh_grad(A x) {
    A x2 = x * x;
    A u = (A)SQRT_2_OVER_PI * (x + (A)GELU_K * x2 * x);
    A du = (A)SQRT_2_OVER_PI + (A)(3.0 * GELU_K * SQRT_2_OVER_PI) * x2;
    A s = (A)1 / ((A)1 + xexp((A)(-2.0) * u));
    return s + (A)2 * x * s * ((A)1 - s) * du;
}
template <typename A> __device__ __forceinline__ A gelu_exact(A x) {
    return (A)0.5 * x * xerfc(x * (A)(-FRAC_1_SQRT_2));
}
template <typename A> __device__ __forceinline__ A gelu_exact_grad(A x) {
    A cdf = (A)0.5 * xerfc(x * (A)(-FRAC_1_SQRT_2));
    A pdf = (A)INV_SQRT_2PI * xexp((A)(-0.5) * x * x);
    return cdf + x * pdf;
}

// One activation `NAME`: fwd, bwd and bwd_inplace kernels. FWD(v) is the
// forward value in A, GRAD(v, g) the gradient given dy = g, both of A = acc_t<T>.
#define ACT_KERNELS(T, S, NAME, FWD, GRAD)                                                  \
    extern "C" __global__ void NAME##_fwd_##S(usize n, const T* x, T* y) {                  \
        typedef ACC(T) A;                                                                   \
        GRID_LOOP(i, n) {                                                                   \
            A v = ld(x[i]);                                                                 \
            y[i] = sto<T>(FWD);                                                             \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void NAME##_bwd_##S(usize n, const T* x, const T* dy, T* dx) {    \
        typedef ACC(T) A;                                                                   \
        GRID_LOOP(i, n) {                                                                   \
            A v = ld(x[i]), g = ld(dy[i]);                                                  \
            dx[i] = sto<T>(GRAD);                                                           \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void NAME##_bwd_inplace_##S(usize n, const T* x, T* dxy) {        \
        typedef ACC(T) A;                                                                   \
        GRID_LOOP(i, n) {                                                                   \
            A v = ld(x[i]), g = ld(dxy[i]);                                                 \
            dxy[i] = sto<T>(GRAD);                                                          \
        }                                                                                   \
    }

#define ACTIVATION(T, S)                                                                    \
    ACT_KERNELS(T, S, gelu, gelu_tanh(v), g * gelu_tanh_grad(v))                            \
    ACT_KERNELS(T, S, gelu_exact, gelu_exact(v), g * gelu_exact_grad(v))                    \
    ACT_KERNELS(T, S, relu, (v <= (A)0 ? (A)0 : v), (v > (A)0 ? g : (A)0))
FOR_ALL_DTYPES(ACTIVATION)

// ---------------------------------------------------------------- dropout

// The mask's hash (drop_mix64, drop_keep, ...) is in prelude.cu, shared
// with attention dropout.

// Shape / strides of a tile of rank <= 8, by value (same layout as [u64; 8]).
struct Dims8 {
    usize v[8];
};

#define DROPOUT(T, S)                                                                       \
    extern "C" __global__ void dropout_##S(usize n, unsigned long long seed,                \
                                           unsigned long long stream, double p, double scale, \
                                           usize rank, Dims8 tshape, Dims8 gstride, usize base, \
                                           T* x) {                                          \
        typedef ACC(T) A;                                                                   \
        unsigned long long key = drop_mix64(seed ^ drop_mix64(stream + DROP_PHI));          \
        unsigned thr = drop_threshold(p);                                                   \
        bool none = p >= 1.0;                                                               \
        if (thr == 0u && !none) return; /* p <= 0: the identity, x untouched */             \
        A sc = (A)scale;                                                                    \
        GRID_LOOP(i, n) {                                                                   \
            usize rem = i, g = base;                                                        \
            for (int d = (int)rank - 1; d >= 0; d--) {                                      \
                g += (rem % tshape.v[d]) * gstride.v[d];                                    \
                rem /= tshape.v[d];                                                         \
            }                                                                               \
            A v = ld(x[i]);                                                                 \
            x[i] = sto<T>(drop_keep(key, thr, none, g) ? v * sc : (A)0);                    \
        }                                                                                   \
    }
FOR_ALL_DTYPES(DROPOUT)
