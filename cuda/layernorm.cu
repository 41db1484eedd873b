// LayerNorm over the last axis, split exactly as src/kernels/cpu/layernorm.rs
// so the normalized axis C may be cut into several tiles. A tile is x viewed
// as [rows, cols] (cols = its share of C); accumulators/stats are acc_t<T>.
//   stats_update:   acc[r] = (count, mean, M2) merged with this tile's row
//                   (one block per row: mean first, then M2 from deviations,
//                   block reductions; then Chan's merge by thread 0)
//   stats_finalize: stats[r] = (mean, 1/sqrt(M2/count + eps)) (thread per row)
//   fwd:            y = (x - mean) * rstd * gamma + beta (thread per element)
//   bwd_reduce:     sums[r] += (sum_c dy*gamma, sum_c dy*gamma*xhat) (block per row)
//   bwd:            dx (=|+=) rstd * (dy*gamma - sums0/N - xhat*sums1/N), N = total_cols
//   param_grad:     dgamma[c] += sum_r dy*xhat, dbeta[c] += sum_r dy (thread per
//                   column walking the rows, f64 totals; deterministic)
// Launch: row kernels with blockDim a multiple of 32 (ROW_BLOCK).

#define LAYERNORM(T, S)                                                                     \
    extern "C" __global__ void layernorm_stats_update_##S(const T* x, usize rows, usize cols, \
                                                          ACC(T)* acc) {                    \
        typedef ACC(T) A;                                                                   \
        __shared__ A sh[32];                                                                \
        usize r = blockIdx.x;                                                               \
        if (r >= rows || cols == 0) return;                                                 \
        const T* xr = x + r * cols;                                                         \
        A s = 0;                                                                            \
        for (usize c = threadIdx.x; c < cols; c += blockDim.x) s += ld(xr[c]);              \
        A mean = block_sum(s, sh) / (A)cols;                                                \
        A m2 = 0;                                                                           \
        for (usize c = threadIdx.x; c < cols; c += blockDim.x) {                            \
            A d = ld(xr[c]) - mean;                                                         \
            m2 += d * d;                                                                    \
        }                                                                                   \
        m2 = block_sum(m2, sh);                                                             \
        if (threadIdx.x == 0) {                                                             \
            A* a = acc + r * 3;                                                             \
            A na = a[0], nb = (A)cols, n = na + nb;                                         \
            A delta = mean - a[1];                                                          \
            a[1] = na == 0 ? mean : a[1] + delta * (nb / n);                                \
            a[2] = na == 0 ? m2 : a[2] + m2 + delta * delta * (na * nb / n);                \
            a[0] = n;                                                                       \
        }                                                                                   \
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
        if (r >= rows) return;                                                              \
        A mean = stats[2 * r], rstd = stats[2 * r + 1], s0 = 0, s1 = 0;                     \
        for (usize c = threadIdx.x; c < cols; c += blockDim.x) {                            \
            A g = ld(dy[r * cols + c]) * ld(gamma[c]);                                      \
            s0 += g;                                                                        \
            s1 += g * (ld(x[r * cols + c]) - mean) * rstd;                                  \
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
        A inv_n = (A)1 / (A)total_cols;                                                     \
        GRID_LOOP(i, rows * cols) {                                                         \
            usize r = i / cols, c = i % cols;                                               \
            A rstd = stats[2 * r + 1];                                                      \
            A xhat = (ld(x[i]) - stats[2 * r]) * rstd;                                      \
            A g = ld(dy[i]) * ld(gamma[c]);                                                 \
            A d = rstd * (g - sums[2 * r] * inv_n - xhat * sums[2 * r + 1] * inv_n);        \
            dx[i] = sto<T>(accumulate ? ld(dx[i]) + d : d);                                 \
        }                                                                                   \
    }
FOR_ALL_DTYPES(LAYERNORM)

#define LN_FINALIZE(A, S)                                                                   \
    extern "C" __global__ void layernorm_stats_finalize_##S(const A* acc, usize rows, double eps, \
                                                            A* stats) {                     \
        GRID_LOOP(r, rows) {                                                                \
            A n = acc[3 * r];                                                               \
            stats[2 * r] = acc[3 * r + 1];                                                  \
            stats[2 * r + 1] = (A)1 / xsqrt(acc[3 * r + 2] / n + (A)eps);                   \
        }                                                                                   \
    }
LN_FINALIZE(float, f32)
LN_FINALIZE(double, f64)

#define LN_PARAM_GRAD(T, S, G, GS)                                                          \
    extern "C" __global__ void layernorm_param_grad_##S##_##GS(const T* x, const T* dy,     \
                                                              const ACC(T)* stats, usize rows, \
                                                              usize cols, G* dgamma, G* dbeta) { \
        GRID_LOOP(c, cols) {                                                                \
            double sg = 0.0, sb = 0.0;                                                      \
            for (usize r = 0; r < rows; r++) {                                              \
                ACC(T) xhat = (ld(x[r * cols + c]) - stats[2 * r]) * stats[2 * r + 1];      \
                ACC(T) d = ld(dy[r * cols + c]);                                            \
                sg += (double)(d * xhat);                                                   \
                sb += (double)d;                                                            \
            }                                                                               \
            dgamma[c] = st<G>((double)ld(dgamma[c]) + sg);                                  \
            dbeta[c] = st<G>((double)ld(dbeta[c]) + sb);                                    \
        }                                                                                   \
    }
FOR_GRAD_PAIRS(LN_PARAM_GRAD)
