// Activations, elementwise (one thread per element), in acc_t<T>:
//   gelu (tanh): y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
//     dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
//   gelu_exact: y = 0.5 x (1 + erf(x / sqrt 2)),  dy/dx = Phi(x) + x phi(x)
//   relu: y = max(x, 0),  dy/dx = [x > 0]
// Backward kernels overwrite dx = dy * act'(x), as the CPU kernels.

#define GELU_C 0.7978845608028654   /* sqrt(2/pi) */
#define INV_SQRT2 0.7071067811865476
#define INV_SQRT_2PI 0.3989422804014327

#define ACTIVATION(T, S)                                                                    \
    extern "C" __global__ void gelu_fwd_##S(usize n, const T* x, T* y) {                    \
        typedef ACC(T) A;                                                                   \
        GRID_LOOP(i, n) {                                                                   \
            A v = ld(x[i]);                                                                 \
            A u = (A)GELU_C * (v + (A)0.044715 * v * v * v);                                \
            y[i] = sto<T>((A)0.5 * v * ((A)1 + xtanh(u)));                                  \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void gelu_bwd_##S(usize n, const T* x, const T* dy, T* dx) {      \
        typedef ACC(T) A;                                                                   \
        GRID_LOOP(i, n) {                                                                   \
            A v = ld(x[i]);                                                                 \
            A u = (A)GELU_C * (v + (A)0.044715 * v * v * v);                                \
            A t = xtanh(u);                                                                 \
            A d = (A)0.5 * ((A)1 + t) +                                                     \
                  (A)0.5 * v * ((A)1 - t * t) * (A)GELU_C * ((A)1 + (A)(3 * 0.044715) * v * v); \
            dx[i] = sto<T>(ld(dy[i]) * d);                                                  \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void gelu_exact_fwd_##S(usize n, const T* x, T* y) {              \
        typedef ACC(T) A;                                                                   \
        GRID_LOOP(i, n) {                                                                   \
            A v = ld(x[i]);                                                                 \
            y[i] = sto<T>((A)0.5 * v * ((A)1 + xerf(v * (A)INV_SQRT2)));                    \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void gelu_exact_bwd_##S(usize n, const T* x, const T* dy, T* dx) { \
        typedef ACC(T) A;                                                                   \
        GRID_LOOP(i, n) {                                                                   \
            A v = ld(x[i]);                                                                 \
            A cdf = (A)0.5 * ((A)1 + xerf(v * (A)INV_SQRT2));                               \
            A pdf = (A)INV_SQRT_2PI * xexp((A)-0.5 * v * v);                                \
            dx[i] = sto<T>(ld(dy[i]) * (cdf + v * pdf));                                    \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void relu_fwd_##S(usize n, const T* x, T* y) {                    \
        GRID_LOOP(i, n) {                                                                   \
            ACC(T) v = ld(x[i]);                                                            \
            y[i] = v > 0 ? x[i] : st<T>(0.0);                                               \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void relu_bwd_##S(usize n, const T* x, const T* dy, T* dx) {      \
        GRID_LOOP(i, n) dx[i] = ld(x[i]) > 0 ? dy[i] : st<T>(0.0);                          \
    }
FOR_ALL_DTYPES(ACTIVATION)
