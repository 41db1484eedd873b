// Reductions on one tile, as src/kernels/cpu/reduce.rs. Every term is added
// in f64 (the CPU adds blocks of T::Acc sums in f64), so a GPU sum is at
// least as accurate as the CPU's but not bit-identical to it. Each kernel
// adds in a fixed order with no atomics: results do not change run to run.
// beta == 0 means y is not read.
//
// sum_axis: y[o, i] = alpha * sum_a x[o, a, i] + beta * y[o, i], x viewed as
//   [outer, len, inner]. Blocks of WARP_SIZE x AXIS_SPLIT threads: a block
//   owns 32 consecutive columns i of one o (coalesced loads), its thread
//   rows split the axis by residue a % AXIS_SPLIT, and the AXIS_SPLIT
//   partial sums are added in shared memory in residue order.
// sum_rows: the same for inner == 1 (sums of contiguous rows): one block per
//   row, block tree reduction.
// sum_partial + sum_all: y[0] = alpha * sum(x) + beta * y[0] in two launches.
//   Block b of sum_partial sums its grid-stride share of x into part[b];
//   sum_all (one block) adds the parts. The grid is a function of n only.
// ssq_partial + ssq_update: the scaled sum of squares acc = [scale, ssq]
//   (LAPACK dlassq, value scale^2 * ssq) of the CPU kernel. Block b of
//   ssq_partial writes part[3b..3b+3] = (max |x|, sum (x / max)^2, NaN seen)
//   for its share of x; ssq_update (one thread) merges the parts into acc in
//   block order, each as the CPU merges one chunk (same NaN / inf rules).
//   ssq_update's suffix names the dtype of x; its code does not depend on it.
// norm_from_ssq: y[0] = alpha * scale * sqrt(ssq) + beta * y[0].
// add_col_parts: the second pass of the column reductions of bias.cu and
//   layernorm.cu (bias_grad, param_grad), whose first pass writes the
//   partial sums part [nout, nparts, cols] (f64): y0[c] and y1[c] (y1 null:
//   one output) += t, t = ((0.0 + part[j, 0, c]) + part[j, 1, c]) + ... in
//   f64 in part order, then one rounding of y_j[c] + t into T (the CPU's
//   `G::from_f64(g + total)`). One thread per (j, c); T is the gradient's
//   dtype, whatever the first pass's was.

#define AXIS_SPLIT 8

// `alpha * s + beta * y` rounded once into T, not reading y when beta == 0.
template <typename T> __device__ __forceinline__ void combine(double alpha, double s, double beta, T* y) {
    double r = alpha * s;
    if (beta != 0.0) r += beta * (double)ld(*y);
    *y = st<T>(r);
}

#define REDUCE(T, S)                                                                        \
    extern "C" __global__ void sum_axis_##S(usize outer, usize len, usize inner, double alpha, \
                                            const T* x, double beta, T* y) {                \
        __shared__ double sh[AXIS_SPLIT][WARP_SIZE];                                        \
        usize strips = (inner + WARP_SIZE - 1) / WARP_SIZE;                                 \
        for (usize b = blockIdx.x; b < outer * strips; b += gridDim.x) {                    \
            usize o = b / strips, i = (b % strips) * WARP_SIZE + threadIdx.x;               \
            double s = 0.0;                                                                 \
            if (i < inner)                                                                  \
                for (usize a = threadIdx.y; a < len; a += AXIS_SPLIT)                       \
                    s += (double)ld(x[(o * len + a) * inner + i]);                          \
            sh[threadIdx.y][threadIdx.x] = s;                                               \
            __syncthreads();                                                                \
            if (threadIdx.y == 0 && i < inner) {                                            \
                double t = 0.0;                                                             \
                for (int k = 0; k < AXIS_SPLIT; k++) t += sh[k][threadIdx.x];               \
                combine(alpha, t, beta, &y[o * inner + i]);                                 \
            }                                                                               \
            __syncthreads();                                                                \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void sum_rows_##S(usize rows, usize len, double alpha, const T* x, \
                                            double beta, T* y) {                            \
        __shared__ double sh[32];                                                           \
        for (usize r = blockIdx.x; r < rows; r += gridDim.x) {                              \
            double s = 0.0;                                                                 \
            for (usize a = threadIdx.x; a < len; a += blockDim.x) s += (double)ld(x[r * len + a]); \
            s = block_sum(s, sh);                                                           \
            if (threadIdx.x == 0) combine(alpha, s, beta, &y[r]);                           \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void sum_partial_##S(usize n, const T* x, double* part) {         \
        __shared__ double sh[32];                                                           \
        double s = 0.0;                                                                     \
        GRID_LOOP(i, n) s += (double)ld(x[i]);                                              \
        s = block_sum(s, sh);                                                               \
        if (threadIdx.x == 0) part[blockIdx.x] = s;                                         \
    }                                                                                       \
    extern "C" __global__ void sum_all_##S(usize nparts, const double* part, double alpha,  \
                                           double beta, T* y) {                             \
        __shared__ double sh[32];                                                           \
        double s = 0.0;                                                                     \
        for (usize p = threadIdx.x; p < nparts; p += blockDim.x) s += part[p];              \
        s = block_sum(s, sh);                                                               \
        if (threadIdx.x == 0) combine(alpha, s, beta, &y[0]);                               \
    }                                                                                       \
    extern "C" __global__ void ssq_partial_##S(usize n, const T* x, double* part) {         \
        __shared__ double sh[32];                                                           \
        double amax = 0.0, nan = 0.0;                                                       \
        GRID_LOOP(i, n) {                                                                   \
            double v = fabs((double)ld(x[i]));                                              \
            if (v != v) nan = 1.0;                                                          \
            else amax = fmax(amax, v);                                                      \
        }                                                                                   \
        amax = block_max(amax, sh);                                                         \
        nan = block_max(nan, sh);                                                           \
        double s = 0.0;                                                                     \
        if (amax > 0.0 && amax < 1.0 / 0.0) {                                               \
            GRID_LOOP(i, n) {                                                               \
                double v = (double)ld(x[i]) / amax;                                         \
                s += v * v;                                                                 \
            }                                                                               \
        }                                                                                   \
        s = block_sum(s, sh);                                                               \
        if (threadIdx.x == 0) {                                                             \
            part[3 * blockIdx.x] = amax;                                                    \
            part[3 * blockIdx.x + 1] = s;                                                   \
            part[3 * blockIdx.x + 2] = nan;                                                 \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void ssq_update_##S(usize nparts, const double* part, double* acc) { \
        if (blockIdx.x != 0 || threadIdx.x != 0) return;                                    \
        const double inf = 1.0 / 0.0;                                                       \
        double scale = acc[0], ssq = acc[1];                                                \
        for (usize p = 0; p < nparts; p++) {                                                \
            double amax = part[3 * p], s = part[3 * p + 1];                                 \
            bool nan = part[3 * p + 2] != 0.0;                                              \
            if (!(amax > 0.0 && amax < inf) || scale == inf) {                              \
                /* All zero, or an infinity here or before: only NaN still matters. */     \
                if (amax == inf) {                                                          \
                    scale = inf;                                                            \
                    ssq = ssq != ssq ? ssq : 1.0;                                           \
                }                                                                           \
                if (nan) ssq = 0.0 / 0.0;                                                   \
                continue;                                                                   \
            }                                                                               \
            if (amax > scale) {                                                             \
                double r = scale / amax;                                                    \
                ssq = ssq * r * r + s;                                                      \
                scale = amax;                                                               \
            } else {                                                                        \
                double r = amax / scale;                                                    \
                ssq = ssq + s * r * r;                                                      \
            }                                                                               \
            if (nan) ssq = 0.0 / 0.0;                                                       \
        }                                                                                   \
        acc[0] = scale;                                                                     \
        acc[1] = ssq;                                                                       \
    }                                                                                       \
    extern "C" __global__ void norm_from_ssq_##S(const double* acc, double alpha, double beta, T* y) { \
        if (blockIdx.x != 0 || threadIdx.x != 0) return;                                    \
        combine(alpha, acc[0] * sqrt(acc[1]), beta, &y[0]);                                 \
    }                                                                                       \
    extern "C" __global__ void add_col_parts_##S(usize nparts, usize cols, const double* part, \
                                                 T* y0, T* y1) {                            \
        GRID_LOOP(i, (y1 ? 2 : 1) * cols) {                                                 \
            usize j = i / cols, c = i % cols;                                               \
            const double* p = part + j * nparts * cols + c;                                 \
            double t = 0.0;                                                                 \
            for (usize k = 0; k < nparts; k++) t += p[k * cols];                            \
            T* y = j ? y1 : y0;                                                             \
            y[c] = st<T>((double)ld(y[c]) + t);                                             \
        }                                                                                   \
    }
FOR_ALL_DTYPES(REDUCE)
