// LayerNorm over the last axis, split exactly as src/kernels/cpu/layernorm.rs
// so the normalized axis C may be cut into several tiles. A tile is x viewed
// as [rows, cols] (cols = its share of C); accumulators/stats are acc_t<T>.
//   stats_update:   acc[r] = (count, mean, M2) merged with this tile's row
//                   (one block per row: mean first, then M2 from deviations,
//                   block reductions; then Chan's merge by thread 0)
//   stats_finalize: stats[r] = (mean, 1/sqrt(M2/count + eps)) (thread per row;
//                   the variance in f64 as the CPU, so rstd is rounded once)
//   fwd:            y = (x - mean) * rstd * gamma + beta (thread per element)
//   bwd_reduce:     sums[r] += (sum_c dy*gamma, sum_c dy*gamma*xhat) (block per row)
//   bwd:            dx (=|+=) rstd * (dy*gamma - sums0/N - xhat*sums1/N), N = total_cols
//   param_grad:     dgamma[c] += sum_r dy*xhat, dbeta[c] += sum_r dy, in two
//                   launches, bit for bit the CPU's sums (acc_t sums over blocks
//                   of 256 rows, added in block order into f64 totals from 0.0,
//                   then G(d + total)), as bias_grad in bias.cu:
//     param_grad_part: part [2, nblk, cols]: part[0, k, c] and part[1, k, c]
//                   the acc_t sums of dy*xhat and dy over row block k (rows
//                   k * rblk .. (k + 1) * rblk, rblk = 256 from the launcher)
//                   of column c, as f64 (exact). Block b (1-D grid-stride) owns row
//                   block b / strips and the b % strips-th strip of blockDim.x
//                   columns, a thread one column (coalesced across c).
//     add_col_parts (reduce.cu, y0 = dgamma, y1 = dbeta): the totals in k order.
//                   Fixed partition (the CPU's row block), no atomics: deterministic.
// Fused residual + LayerNorm (ops::layernorm::add_layernorm), s = x + r rounded
// to T and stored, then the statistics of the STORED s, so the result is that
// of an add followed by a LayerNorm. `r` may be null: then `sum` holds r on
// entry (the residual stream updated in place).
//   add_stats_update: sum = x + r, acc[r] merged with the row (C cut in tiles)
//   add_fwd:          sum = x + r, stats and y in one pass (C in one tile)
// Each thread re-reads only the elements of `sum` it wrote itself (same
// strided loop), so no barrier is needed between the store and the reads.
// Launch: row kernels with blockDim a multiple of 32 (ROW_BLOCK).

// (mean, M2) of the row `xr` (cols > 0), by block reductions; every thread
// gets both.
template <typename T, typename A>
__device__ void row_mean_m2(const T* xr, usize cols, A* sh, A* mean_out, A* m2_out) {
    A s = 0;
    for (usize c = threadIdx.x; c < cols; c += blockDim.x) s += ld(xr[c]);
    A mean = block_sum(s, sh) / (A)cols;
    A m2 = 0;
    for (usize c = threadIdx.x; c < cols; c += blockDim.x) {
        A d = ld(xr[c]) - mean;
        m2 += d * d;
    }
    *mean_out = mean;
    *m2_out = block_sum(m2, sh);
}

// Chan's merge of (cols, mean, m2) into a = (count, mean, M2), by one thread.
template <typename A> __device__ void chan_merge(A* a, usize cols, A mean, A m2) {
    A na = a[0], nb = (A)cols;
    if (na == (A)0) {
        a[0] = nb;
        a[1] = mean;
        a[2] = m2;
    } else {
        A n = na + nb;
        A delta = mean - a[1];
        a[1] += delta * (nb / n);
        a[2] += m2 + delta * delta * (na * nb / n);
        a[0] = n;
    }
}

// rstd from (count, M2) in f64, as layernorm_stats_finalize on the CPU.
template <typename A> __device__ A ln_rstd(A count, A m2, double eps) {
    double var = (double)m2 / (double)count;
    return (A)(1.0 / sqrt(var + eps));
}

#define LAYERNORM(T, S)                                                                     \
    extern "C" __global__ void layernorm_stats_update_##S(const T* x, usize rows, usize cols, \
                                                          ACC(T)* acc) {                    \
        typedef ACC(T) A;                                                                   \
        __shared__ A sh[32];                                                                \
        usize r = blockIdx.x;                                                               \
        if (r >= rows || cols == 0) return;                                                 \
        A mean, m2;                                                                         \
        row_mean_m2(x + r * cols, cols, sh, &mean, &m2);                                    \
        if (threadIdx.x == 0) chan_merge(acc + r * 3, cols, mean, m2);                      \
    }                                                                                       \
    extern "C" __global__ void layernorm_fwd_##S(const T* x, const ACC(T)* stats, const T* gamma, \
                                                 const T* beta, usize rows, usize cols, T* y) { \
        GRID_LOOP(i, rows * cols) {                                                         \
            usize r = i / cols, c = i % cols;                                               \
            ACC(T) xhat = (ld(x[i]) - stats[2 * r]) * stats[2 * r + 1];                     \
            y[i] = sto<T>(xhat * ld(gamma[c]) + ld(beta[c]));                               \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void layernorm_bwd_reduce_##S(const T* x, const T* dy, const ACC(T)* stats, \
                                                        const T* gamma, usize rows, usize cols, \
                                                        ACC(T)* acc) {                      \
        typedef ACC(T) A;                                                                   \
        __shared__ A sh[32];                                                                \
        usize r = blockIdx.x;                                                               \
        if (r >= rows || cols == 0) return;                                                 \
        A mean = stats[2 * r], rstd = stats[2 * r + 1], s0 = 0, s1 = 0;                     \
        for (usize c = threadIdx.x; c < cols; c += blockDim.x) {                            \
            A g = ld(dy[r * cols + c]) * ld(gamma[c]);                                      \
            s0 += g;                                                                        \
            s1 += g * ((ld(x[r * cols + c]) - mean) * rstd);                                \
        }                                                                                   \
        s0 = block_sum(s0, sh);                                                             \
        s1 = block_sum(s1, sh);                                                             \
        if (threadIdx.x == 0) {                                                             \
            acc[2 * r] += s0;                                                               \
            acc[2 * r + 1] += s1;                                                           \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void layernorm_bwd_##S(const T* x, const T* dy, const ACC(T)* stats, \
                                                 const T* gamma, const ACC(T)* sums, usize total_cols, \
                                                 usize rows, usize cols, int accumulate, T* dx) { \
        typedef ACC(T) A;                                                                   \
        A inv_n = (A)(1.0 / (double)total_cols);                                            \
        GRID_LOOP(i, rows * cols) {                                                         \
            usize r = i / cols, c = i % cols;                                               \
            A mean = stats[2 * r], rstd = stats[2 * r + 1];                                 \
            A c0 = sums[2 * r] * inv_n, c1 = sums[2 * r + 1] * inv_n;                       \
            A xhat = (ld(x[i]) - mean) * rstd;                                              \
            A d = rstd * (ld(dy[i]) * ld(gamma[c]) - c0 - xhat * c1);                       \
            dx[i] = sto<T>(accumulate ? ld(dx[i]) + d : d);                                 \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void add_layernorm_stats_update_##S(const T* x, const T* r_, usize rows, \
                                                              usize cols, T* sum, ACC(T)* acc) { \
        typedef ACC(T) A;                                                                   \
        __shared__ A sh[32];                                                                \
        usize r = blockIdx.x;                                                               \
        if (r >= rows || cols == 0) return;                                                 \
        const T* rr = r_ ? r_ : sum;                                                        \
        for (usize c = threadIdx.x; c < cols; c += blockDim.x) {                            \
            usize i = r * cols + c;                                                         \
            sum[i] = sto<T>(ld(x[i]) + ld(rr[i]));                                          \
        }                                                                                   \
        A mean, m2;                                                                         \
        row_mean_m2((const T*)sum + r * cols, cols, sh, &mean, &m2);                        \
        if (threadIdx.x == 0) chan_merge(acc + r * 3, cols, mean, m2);                      \
    }                                                                                       \
    extern "C" __global__ void add_layernorm_fwd_##S(const T* x, const T* r_, const T* gamma, \
                                                     const T* beta, usize rows, usize cols, \
                                                     double eps, T* sum, ACC(T)* stats, T* y) { \
        typedef ACC(T) A;                                                                   \
        __shared__ A sh[32];                                                                \
        usize r = blockIdx.x;                                                               \
        if (r >= rows) return;                                                              \
        if (cols == 0) {                                                                    \
            /* As the CPU: an empty row leaves count 0, so mean 0 and rstd NaN. */          \
            if (threadIdx.x == 0) {                                                         \
                stats[2 * r] = 0;                                                           \
                stats[2 * r + 1] = ln_rstd((A)0, (A)0, eps);                                \
            }                                                                               \
            return;                                                                         \
        }                                                                                   \
        const T* rr = r_ ? r_ : sum;                                                        \
        for (usize c = threadIdx.x; c < cols; c += blockDim.x) {                            \
            usize i = r * cols + c;                                                         \
            sum[i] = sto<T>(ld(x[i]) + ld(rr[i]));                                          \
        }                                                                                   \
        A mean, m2;                                                                         \
        row_mean_m2((const T*)sum + r * cols, cols, sh, &mean, &m2);                        \
        A rstd = ln_rstd((A)cols, m2, eps);                                                 \
        if (threadIdx.x == 0) {                                                             \
            stats[2 * r] = mean;                                                            \
            stats[2 * r + 1] = rstd;                                                        \
        }                                                                                   \
        for (usize c = threadIdx.x; c < cols; c += blockDim.x) {                            \
            usize i = r * cols + c;                                                         \
            A xhat = (ld(sum[i]) - mean) * rstd;                                            \
            y[i] = sto<T>(xhat * ld(gamma[c]) + ld(beta[c]));                               \
        }                                                                                   \
    }
FOR_ALL_DTYPES(LAYERNORM)

#define LN_FINALIZE(A, S)                                                                   \
    extern "C" __global__ void layernorm_stats_finalize_##S(const A* acc, usize rows, double eps, \
                                                            A* stats) {                     \
        GRID_LOOP(r, rows) {                                                                \
            stats[2 * r] = acc[3 * r + 1];                                                  \
            stats[2 * r + 1] = ln_rstd(acc[3 * r], acc[3 * r + 2], eps);                    \
        }                                                                                   \
    }
LN_FINALIZE(float, f32)
LN_FINALIZE(double, f64)

#define LN_PARAM_GRAD(T, S)                                                                 \
    extern "C" __global__ void layernorm_param_grad_part_##S(const T* x, const T* dy,       \
                                                             const ACC(T)* stats, usize rows, \
                                                             usize cols, usize rblk,        \
                                                             double* part) {                \
        typedef ACC(T) A;                                                                   \
        usize strips = (cols + blockDim.x - 1) / blockDim.x;                                \
        usize nblk = (rows + rblk - 1) / rblk;                                              \
        for (usize b = blockIdx.x; b < nblk * strips; b += gridDim.x) {                     \
            usize k = b / strips, c = (b % strips) * blockDim.x + threadIdx.x;              \
            if (c >= cols) continue;                                                        \
            usize r1 = (k + 1) * rblk < rows ? (k + 1) * rblk : rows;                       \
            A pg = 0, pb = 0;                                                               \
            for (usize r = k * rblk; r < r1; r++) {                                         \
                A d = ld(dy[r * cols + c]);                                                 \
                pg += d * ((ld(x[r * cols + c]) - stats[2 * r]) * stats[2 * r + 1]);        \
                pb += d;                                                                    \
            }                                                                               \
            part[k * cols + c] = (double)pg;                                                \
            part[(nblk + k) * cols + c] = (double)pb;                                       \
        }                                                                                   \
    }
FOR_ALL_DTYPES(LN_PARAM_GRAD)
