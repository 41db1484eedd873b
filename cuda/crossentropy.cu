// Softmax cross-entropy over a vocabulary cut into tiles, as
// src/kernels/cpu/crossentropy.rs. A logits tile is [rows, vt] holding
// vocabulary columns vocab_lo..vocab_lo+vt; targets are i64 (< 0: ignored).
//   maxsumexp_update: acc[r] = (max, sum exp(z - max)) merged online with this
//                     tile (one block per row; acc starts at (-inf, 0))
//   ce_loss_target:   loss[0] -= z[r, t_r] for targets inside the tile
//   ce_loss_lse:      loss[0] += max + ln sumexp for non-ignored rows
//     (loss is one f64 scalar, summed with atomicAdd: order nondeterministic)
//   ce_bwd:           IN PLACE z[r, v] = scale * (exp(z - max)/sumexp - [v == t_r]),
//                     0 for ignored rows (thread per element)

#define CROSSENTROPY(T, S)                                                                  \
    extern "C" __global__ void maxsumexp_update_##S(const T* logits, usize rows, usize vt,  \
                                                    ACC(T)* acc) {                          \
        typedef ACC(T) A;                                                                   \
        __shared__ A sh[32];                                                                \
        usize r = blockIdx.x;                                                               \
        if (r >= rows || vt == 0) return;                                                   \
        const T* z = logits + r * vt;                                                       \
        A m = (A)(-1.0 / 0.0);                                                              \
        for (usize c = threadIdx.x; c < vt; c += blockDim.x) m = xmax(m, ld(z[c]));         \
        m = block_max(m, sh);                                                               \
        A s = 0;                                                                            \
        if (m > (A)(-1.0 / 0.0))                                                            \
            for (usize c = threadIdx.x; c < vt; c += blockDim.x) s += xexp(ld(z[c]) - m);   \
        s = block_sum(s, sh);                                                               \
        if (threadIdx.x == 0) {                                                             \
            A* a = acc + 2 * r;                                                             \
            A m0 = a[0], s0 = a[1];                                                         \
            if (m <= m0) {                                                                  \
                if (m > (A)(-1.0 / 0.0)) a[1] = s0 + s * xexp(m - m0);                      \
            } else {                                                                        \
                a[1] = (m0 > (A)(-1.0 / 0.0) ? s0 * xexp(m0 - m) : (A)0) + s;               \
                a[0] = m;                                                                   \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void ce_loss_target_##S(const T* logits, usize rows, usize vt,    \
                                                  usize vocab_lo, const i64* targets, double* loss) { \
        GRID_LOOP(r, rows) {                                                                \
            i64 t = targets[r];                                                             \
            if (t >= (i64)vocab_lo && t < (i64)(vocab_lo + vt))                             \
                atomicAdd(loss, -(double)ld(logits[r * vt + ((usize)t - vocab_lo)]));       \
        }                                                                                   \
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
                A p = xexp(ld(logits[i]) - acc[2 * r]) / acc[2 * r + 1];                    \
                A y = (i64)(vocab_lo + c) == t ? (A)1 : (A)0;                               \
                logits[i] = sto<T>(sc * (p - y));                                           \
            }                                                                               \
        }                                                                                   \
    }
FOR_ALL_DTYPES(CROSSENTROPY)

#define CE_LSE(A, S)                                                                        \
    extern "C" __global__ void ce_loss_lse_##S(const A* acc, usize rows, const i64* targets, \
                                               double* loss) {                              \
        GRID_LOOP(r, rows) {                                                                \
            if (targets[r] >= 0) atomicAdd(loss, (double)(acc[2 * r] + xlog(acc[2 * r + 1]))); \
        }                                                                                   \
    }
CE_LSE(float, f32)
CE_LSE(double, f64)
