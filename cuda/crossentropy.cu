// Softmax cross-entropy over a vocabulary cut into tiles, as
// src/kernels/cpu/crossentropy.rs. A logits tile is [rows, vt] holding
// vocabulary columns vocab_lo..vocab_lo+vt; targets are i64 (< 0: ignored).
// Probabilities are never stored: forward keeps (max, sumexp) per row, and
// backward turns the logits into their gradient in place.
//   maxsumexp_init:   acc[r] = (-inf, 0) (thread per row)
//   maxsumexp_update: m' = max(max_c z, m); acc[r] = (m', s exp(m - m') + sum_c exp(z - m'))
//                     (one block per row)
//   ce_loss_target:   loss[0] -= sum_r z[r, t_r] over targets inside the tile
//   ce_loss_lse:      loss[0] += sum_r (max + ln sumexp) (in f64) over non-ignored rows
//     (each block reduces its rows in f64 and adds once: launched with ONE
//     block the sum is deterministic; with several, blocks add atomically)
//   ce_bwd:           IN PLACE z[r, v] = exp(z - max) * (scale / sumexp), and at the
//                     target scale * (exp(z - max) / sumexp - 1) (p - 1 exact for
//                     p >= 1/2); 0 for ignored rows (thread per element)

// Adds a block's f64 partial into loss[0] (sign included in `s`).
__device__ __forceinline__ void ce_add_loss(double* loss, double s) {
    if (threadIdx.x == 0) {
        if (gridDim.x == 1)
            loss[0] += s;
        else
            atomicAdd(loss, s);
    }
}

#define CROSSENTROPY(T, S)                                                                  \
    extern "C" __global__ void maxsumexp_update_##S(const T* logits, usize rows, usize vt,  \
                                                    ACC(T)* acc) {                          \
        typedef ACC(T) A;                                                                   \
        __shared__ A sh[32];                                                                \
        usize r = blockIdx.x;                                                               \
        if (r >= rows || vt == 0) return;                                                   \
        const T* z = logits + r * vt;                                                       \
        A mx = (A)(-1.0 / 0.0);                                                             \
        for (usize c = threadIdx.x; c < vt; c += blockDim.x) mx = xmax(mx, (A)ld(z[c]));    \
        A* a = acc + 2 * r;                                                                 \
        A m_old = a[0];                                                                     \
        A m_new = xmax(block_max(mx, sh), m_old);                                           \
        A s = 0;                                                                            \
        for (usize c = threadIdx.x; c < vt; c += blockDim.x) s += xexp(ld(z[c]) - m_new);   \
        s = block_sum(s, sh);                                                               \
        if (threadIdx.x == 0) {                                                             \
            /* exp(-inf - m) = 0 for the empty accumulator */                               \
            a[1] = a[1] * xexp(m_old - m_new) + s;                                          \
            a[0] = m_new;                                                                   \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void ce_loss_target_##S(const T* logits, usize rows, usize vt,    \
                                                  usize vocab_lo, const i64* targets, double* loss) { \
        __shared__ double sh[32];                                                           \
        double s = 0.0;                                                                     \
        GRID_LOOP(r, rows) {                                                                \
            i64 t = targets[r];                                                             \
            if (t >= 0 && t >= (i64)vocab_lo && t < (i64)(vocab_lo + vt))                   \
                s += (double)ld(logits[r * vt + ((usize)t - vocab_lo)]);                    \
        }                                                                                   \
        s = block_sum(s, sh);                                                               \
        ce_add_loss(loss, -s);                                                              \
    }                                                                                       \
    extern "C" __global__ void ce_bwd_##S(const ACC(T)* acc, usize rows, usize vt, usize vocab_lo, \
                                          const i64* targets, double scale, T* logits) {    \
        typedef ACC(T) A;                                                                   \
        A sc = (A)scale;                                                                    \
        GRID_LOOP(i, rows * vt) {                                                           \
            usize r = i / vt, c = i % vt;                                                   \
            i64 t = targets[r];                                                             \
            if (t < 0) {                                                                    \
                logits[i] = st<T>(0.0);                                                     \
            } else {                                                                        \
                A m = acc[2 * r], se = acc[2 * r + 1];                                      \
                A e = xexp(ld(logits[i]) - m);                                              \
                logits[i] = (i64)(vocab_lo + c) == t ? sto<T>(sc * (e / se - (A)1))         \
                                                     : sto<T>(e * (sc / se));               \
            }                                                                               \
        }                                                                                   \
    }
FOR_ALL_DTYPES(CROSSENTROPY)

#define CE_ACC(A, S)                                                                        \
    extern "C" __global__ void ce_loss_lse_##S(const A* acc, usize rows, const i64* targets, \
                                               double* loss) {                              \
        __shared__ double sh[32];                                                           \
        double s = 0.0;                                                                     \
        GRID_LOOP(r, rows) {                                                                \
            if (targets[r] >= 0) s += (double)acc[2 * r] + log((double)acc[2 * r + 1]);     \
        }                                                                                   \
        s = block_sum(s, sh);                                                               \
        ce_add_loss(loss, s);                                                               \
    }                                                                                       \
    extern "C" __global__ void maxsumexp_init_##S(usize rows, A* acc) {                     \
        GRID_LOOP(r, rows) {                                                                \
            acc[2 * r] = (A)(-1.0 / 0.0);                                                   \
            acc[2 * r + 1] = 0;                                                             \
        }                                                                                   \
    }
CE_ACC(float, f32)
CE_ACC(double, f64)
