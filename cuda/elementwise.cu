// Elementwise ops on a flat tile of n elements, one thread per element in a
// grid-stride loop; arithmetic in acc_t<T>, one rounding per store.
//   fill:  y = value          scale: y = alpha * y
//   axpy:  y = alpha * x + y  add:   y = alpha * x + beta * y (beta == 0: y write-only)
//   cast:  y = (D) x, rounding to nearest-even once (f64 -> bf16/f16 goes
//          through f32: a double rounding the CPU kernel avoids; documented).

#define ELEMENTWISE(T, S)                                                                   \
    extern "C" __global__ void fill_##S(usize n, double value, T* y) {                      \
        T v = st<T>(value);                                                                 \
        GRID_LOOP(i, n) y[i] = v;                                                           \
    }                                                                                       \
    extern "C" __global__ void scale_##S(usize n, double alpha, T* y) {                     \
        ACC(T) a = (ACC(T))alpha;                                                           \
        GRID_LOOP(i, n) y[i] = sto<T>(a * ld(y[i]));                                        \
    }                                                                                       \
    extern "C" __global__ void axpy_##S(usize n, double alpha, const T* x, T* y) {          \
        ACC(T) a = (ACC(T))alpha;                                                           \
        GRID_LOOP(i, n) y[i] = sto<T>(a * ld(x[i]) + ld(y[i]));                             \
    }                                                                                       \
    extern "C" __global__ void add_##S(usize n, double alpha, const T* x, double beta, T* y) { \
        ACC(T) a = (ACC(T))alpha, b = (ACC(T))beta;                                         \
        if (beta == 0.0) {                                                                  \
            GRID_LOOP(i, n) y[i] = sto<T>(a * ld(x[i]));                                    \
        } else {                                                                            \
            GRID_LOOP(i, n) y[i] = sto<T>(a * ld(x[i]) + b * ld(y[i]));                     \
        }                                                                                   \
    }
FOR_ALL_DTYPES(ELEMENTWISE)

#define CAST(S_T, S_S, D_T, D_S)                                                            \
    extern "C" __global__ void cast_##S_S##_##D_S(usize n, const S_T* x, D_T* y) {          \
        GRID_LOOP(i, n) y[i] = sto<D_T>(ld(x[i]));                                          \
    }
#define CAST_FROM(S_T, S_S) \
    CAST(S_T, S_S, float, f32) CAST(S_T, S_S, double, f64) CAST(S_T, S_S, bf16, bf16) CAST(S_T, S_S, f16, f16)
FOR_ALL_DTYPES(CAST_FROM)
