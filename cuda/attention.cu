// Causal multi-head attention, flash-attention style, on the tiles of
// src/kernels/cpu/attention.rs: q [b, tq, h, hs], k and v [b, tk, h, hs],
// statistics m, l, lse, delta [b, tq, h] and the accumulator acc [b, tq, h, hs]
// in acc_t<T>; q0, k0 are the absolute positions of the first query and key
// (key k is masked for query q when k0 + k > q0 + q). No T x T matrix exists:
// each query row walks the keys of the tile with an online softmax.
//
// Simple on purpose (correctness first): ONE WARP PER QUERY ROW (b, q, head),
// lanes striding over the head dimension; a dot product is a warp sum.
//   fwd_init:     m = -inf, l = 0, acc = 0 (thread per element)
//   fwd_update:   for each visible key j: s = scale q.k_j; m' = max(m, s);
//                 c = exp(m - m'); p = exp(s - m'); l = l c + p; acc = acc c + p v_j
//   fwd_finalize: o = acc / l, lse = m + ln l
//   bwd_delta:    delta = rowsum(dO o O) (warp per row)
//   bwd_update:   per visible key j: p = exp(scale q.k_j - lse); dp = dO.v_j;
//                 ds = p (dp - delta); dq += scale ds k_j (the warp owns the row);
//                 dk_j += scale ds q, dv_j += p dO (atomicAdd: keys are shared)
// dq, dk, dv ACCUMULATE (the caller zeroes them). No attention dropout on the
// GPU yet (the CPU kernel's counter-based mask is not ported).
// Launch: blockDim = ATTN_BLOCK (a multiple of 32), one warp per row.

#define ATTENTION(T, S)                                                                     \
    extern "C" __global__ void attn_fwd_init_##S(usize rows, usize hs, ACC(T)* m, ACC(T)* l, \
                                                 ACC(T)* acc) {                             \
        GRID_LOOP(i, rows * hs) {                                                           \
            acc[i] = 0;                                                                     \
            if (i < rows) { m[i] = (ACC(T))(-1.0 / 0.0); l[i] = 0; }                        \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void attn_fwd_update_##S(const T* q, const T* k, const T* v, usize b, \
                                                   usize tq, usize tk, usize h, usize hs,   \
                                                   usize q0, usize k0, double scale,        \
                                                   ACC(T)* m, ACC(T)* l, ACC(T)* acc) {     \
        typedef ACC(T) A;                                                                   \
        usize row = ((usize)blockIdx.x * blockDim.x + threadIdx.x) / WARP_SIZE;             \
        unsigned lane = threadIdx.x % WARP_SIZE;                                            \
        if (row >= b * tq * h) return; /* whole warps exit together */                      \
        usize hd = row % h, iq = (row / h) % tq, ib = row / (h * tq);                       \
        const T* qr = q + row * hs;                                                         \
        A* ar = acc + row * hs;                                                             \
        A mr = m[row], lr = l[row], sc = (A)scale;                                          \
        usize pos = q0 + iq;                                                                \
        for (usize j = 0; j < tk && k0 + j <= pos; j++) {                                   \
            usize kr = ((ib * tk + j) * h + hd) * hs;                                       \
            A s = 0;                                                                        \
            for (usize d = lane; d < hs; d += WARP_SIZE) s += ld(qr[d]) * ld(k[kr + d]);    \
            s = warp_sum(s) * sc;                                                           \
            A mn = xmax(mr, s);                                                             \
            A c = xexp(mr - mn), p = xexp(s - mn);                                          \
            lr = lr * c + p;                                                                \
            for (usize d = lane; d < hs; d += WARP_SIZE) ar[d] = ar[d] * c + p * ld(v[kr + d]); \
            mr = mn;                                                                        \
        }                                                                                   \
        if (lane == 0) { m[row] = mr; l[row] = lr; }                                        \
    }                                                                                       \
    extern "C" __global__ void attn_fwd_finalize_##S(const ACC(T)* m, const ACC(T)* l,      \
                                                     const ACC(T)* acc, usize rows, usize hs, \
                                                     T* o, ACC(T)* lse) {                   \
        GRID_LOOP(i, rows * hs) {                                                           \
            usize r = i / hs;                                                               \
            o[i] = sto<T>(acc[i] / l[r]);                                                   \
            if (i % hs == 0) lse[r] = m[r] + xlog(l[r]);                                    \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void attn_bwd_delta_##S(const T* o, const T* d_o, usize rows, usize hs, \
                                                  ACC(T)* delta) {                          \
        typedef ACC(T) A;                                                                   \
        usize row = ((usize)blockIdx.x * blockDim.x + threadIdx.x) / WARP_SIZE;             \
        unsigned lane = threadIdx.x % WARP_SIZE;                                            \
        if (row >= rows) return;                                                            \
        A s = 0;                                                                            \
        for (usize d = lane; d < hs; d += WARP_SIZE) s += ld(o[row * hs + d]) * ld(d_o[row * hs + d]); \
        s = warp_sum(s);                                                                    \
        if (lane == 0) delta[row] = s;                                                      \
    }                                                                                       \
    extern "C" __global__ void attn_bwd_update_##S(const T* q, const T* k, const T* v, const T* d_o, \
                                                   const ACC(T)* lse, const ACC(T)* delta,  \
                                                   usize b, usize tq, usize tk, usize h, usize hs, \
                                                   usize q0, usize k0, double scale,        \
                                                   T* dq, T* dk, T* dv) {                   \
        typedef ACC(T) A;                                                                   \
        usize row = ((usize)blockIdx.x * blockDim.x + threadIdx.x) / WARP_SIZE;             \
        unsigned lane = threadIdx.x % WARP_SIZE;                                            \
        if (row >= b * tq * h) return;                                                      \
        usize hd = row % h, iq = (row / h) % tq, ib = row / (h * tq);                       \
        const T* qr = q + row * hs;                                                         \
        const T* dor = d_o + row * hs;                                                      \
        A sc = (A)scale, L = lse[row], D = delta[row];                                      \
        usize pos = q0 + iq;                                                                \
        for (usize j = 0; j < tk && k0 + j <= pos; j++) {                                   \
            usize kr = ((ib * tk + j) * h + hd) * hs;                                       \
            A s = 0, dp = 0;                                                                \
            for (usize d = lane; d < hs; d += WARP_SIZE) {                                  \
                s += ld(qr[d]) * ld(k[kr + d]);                                             \
                dp += ld(dor[d]) * ld(v[kr + d]);                                           \
            }                                                                               \
            s = warp_sum(s) * sc;                                                           \
            dp = warp_sum(dp);                                                              \
            A p = xexp(s - L);                                                              \
            A ds = p * (dp - D);                                                            \
            for (usize d = lane; d < hs; d += WARP_SIZE) {                                  \
                dq[row * hs + d] = sto<T>(ld(dq[row * hs + d]) + sc * ds * ld(k[kr + d]));  \
                atomic_add(&dk[kr + d], sc * ds * ld(qr[d]));                               \
                atomic_add(&dv[kr + d], p * ld(dor[d]));                                    \
            }                                                                               \
        }                                                                                   \
    }
FOR_ALL_DTYPES(ATTENTION)
