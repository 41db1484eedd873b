// Reductions.
// sum_axis: y[o, i] = alpha * sum_a x[o, a, i] + beta * y[o, i], x viewed as
//   [outer, len, inner]; one thread per output (o, i) walks the axis
//   (coalesced over i), accumulating in f64 as the CPU kernel's totals.
// sum_all: y[0] = alpha * sum(x) + beta * y[0], launched with ONE block
//   (block-wide tree reduction in f64; simple and deterministic).
// ssq_update: acc = [scale, ssq] merged with sum(x^2) without overflow, as
//   the CPU kernel: one block, max |x| first, then sum (x/scale)^2, then the
//   merge with the previous [scale, ssq] (NaN/inf rules as on the CPU).

#define REDUCE(T, S)                                                                        \
    extern "C" __global__ void sum_axis_##S(usize outer, usize len, usize inner, double alpha, \
                                            const T* x, double beta, T* y) {                \
        GRID_LOOP(j, outer * inner) {                                                       \
            usize o = j / inner, i = j % inner;                                             \
            double s = 0.0;                                                                 \
            for (usize a = 0; a < len; a++) s += (double)ld(x[(o * len + a) * inner + i]);  \
            double r = alpha * s;                                                           \
            if (beta != 0.0) r += beta * (double)ld(y[j]);                                  \
            y[j] = st<T>(r);                                                                \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void sum_all_##S(usize n, double alpha, const T* x, double beta, T* y) { \
        __shared__ double sh[32];                                                           \
        double s = 0.0;                                                                     \
        for (usize i = threadIdx.x; i < n; i += blockDim.x) s += (double)ld(x[i]);          \
        s = block_sum(s, sh);                                                               \
        if (threadIdx.x == 0) {                                                             \
            double r = alpha * s;                                                           \
            if (beta != 0.0) r += beta * (double)ld(y[0]);                                  \
            y[0] = st<T>(r);                                                                \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void ssq_update_##S(usize n, const T* x, double* acc) {           \
        __shared__ double sh[32];                                                           \
        double amax = 0.0;                                                                  \
        bool nan = false;                                                                   \
        for (usize i = threadIdx.x; i < n; i += blockDim.x) {                               \
            double v = fabs((double)ld(x[i]));                                              \
            if (v != v) nan = true; else amax = fmax(amax, v);                              \
        }                                                                                   \
        amax = block_max(amax, sh);                                                         \
        double any_nan = block_sum(nan ? 1.0 : 0.0, sh);                                    \
        double s = 0.0;                                                                     \
        bool finite = amax > 0.0 && amax < 1.0 / 0.0;                                       \
        if (finite)                                                                         \
            for (usize i = threadIdx.x; i < n; i += blockDim.x) {                           \
                double v = (double)ld(x[i]) / amax;                                         \
                s += v * v;                                                                 \
            }                                                                               \
        s = block_sum(s, sh);                                                               \
        if (threadIdx.x == 0) {                                                             \
            double scale = acc[0], ssq = acc[1];                                            \
            if (any_nan > 0.0) { acc[1] = 0.0 / 0.0; return; }                              \
            if (amax == 0.0) return;                                                        \
            if (!finite || scale == 1.0 / 0.0) { acc[0] = 1.0 / 0.0; acc[1] = ssq != ssq ? ssq : 1.0; return; } \
            if (amax > scale) {                                                             \
                double r = scale / amax;                                                    \
                acc[0] = amax; acc[1] = ssq * r * r + s;                                    \
            } else {                                                                        \
                double r = amax / scale;                                                    \
                acc[1] = ssq + s * r * r;                                                   \
            }                                                                               \
        }                                                                                   \
    }
FOR_ALL_DTYPES(REDUCE)
