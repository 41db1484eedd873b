// Causal multi-head attention, flash-attention style, on the tiles of
// src/kernels/cpu/attention.rs: q [b, tq, h, hs], k and v [b, tk, h, hs]
// (k, v rows of batch row ib start at ib * ks positions: ks = tk, or the
// rows of a KV-cache tile of which the first tk are used), statistics m, l,
// lse, delta [b, tq, h] and the accumulator acc [b, tq, h, hs] in acc_t<T>;
// q0, k0 are the absolute positions of the first query and key (key j is
// visible to query i iff k0 + j <= q0 + i). No T x T matrix exists: each row
// walks the keys (or queries) of the tile with an online softmax.
//
// ONE WARP PER ROW, lanes striding over the head dimension; a row's vectors
// (q, the accumulators) live in registers, NPL = HS_MAX / 32 per lane, so
// hs <= HS_MAX (the Rust side keeps larger heads on the CPU). Rows are
// visited by a warp-stride loop, so any grid is correct.
//   fwd_init:     m = -inf, l = 0, acc = 0 (thread per element)
//   flash_fwd:    per query row, for each visible key j: s = scale q.k_j;
//                 m' = max(m, s); c = exp(m - m'); p = exp(s - m');
//                 l = l c + p; acc = acc c + pd v_j, pd = p Z_j / (1 - p_drop)
//                 (dropout acts on the normalized probabilities: l sees p)
//   fwd_finalize: o = acc * (1 / l), lse = m + ln l
//   bwd_delta:    delta = rowsum(dO o O) (warp per row)
//   flash_bwd:    recomputes p = exp(scale q.k - lse), dp = dO.v and
//                 ds = pd dp - p delta (= p (dp - delta) without dropout);
//                 per QUERY row: dq += scale sum_j ds k_j; per KEY row:
//                 dk += scale sum_i ds q_i, dv += sum_i pd dO_i. Each output
//                 row is owned by one warp, summed in registers and added to
//                 its tile once (no atomics; one rounding per call, as the CPU).
// dq, dk, dv ACCUMULATE (the caller zeroes them). Rows that see no key of
// the tile are left untouched, as on the CPU.
//
// Attention dropout is the counter-based mask of src/kernels/cpu/dropout.rs
// (bit for bit; the same hash as in activation.cu) on the global row-major
// index of the probability in [B, NH, T, T]:
//   (((b_off + ib) * NH + h_off + head) * T + q0 + i) * T + k0 + j.
// Launch: blockDim a multiple of 32 (ATTN_BLOCK).

#define HS_MAX 256
#define NPL (HS_MAX / WARP_SIZE)

// AttnDrop, att_mask, att_keep and att_index (the dropout mask) are in prelude.cu.

// One query row of the forward update.
template <typename T>
__device__ void flash_fwd_row(const T* q, const T* k, const T* v, usize tq, usize tk, usize ks,
                              usize h, usize hs, usize q0, usize k0, double scale,
                              const AttnDrop& drop, const AttnMask& mk, ACC(T)* m, ACC(T)* l,
                              ACC(T)* acc, usize row, unsigned lane) {
    typedef ACC(T) A;
    usize hd = row % h, iq = (row / h) % tq, ib = row / (h * tq);
    usize pos = q0 + iq;
    if (tk == 0 || pos < k0) return;
    usize nv = pos + 1 - k0 < tk ? pos + 1 - k0 : tk;
    A qr[NPL], ar[NPL];
#pragma unroll
    for (int u = 0; u < NPL; u++) {
        usize d = lane + u * WARP_SIZE;
        qr[u] = d < hs ? (A)ld(q[row * hs + d]) : (A)0;
        ar[u] = d < hs ? acc[row * hs + d] : (A)0;
    }
    A mr = m[row], lr = l[row], sc = (A)scale, dsc = (A)drop.scale;
    for (usize j = 0; j < nv; j++) {
        usize kr = ((ib * ks + j) * h + hd) * hs;
        A s = 0;
#pragma unroll
        for (int u = 0; u < NPL; u++) {
            usize d = lane + u * WARP_SIZE;
            if (d < hs) s += qr[u] * ld(k[kr + d]);
        }
        s = warp_sum(s) * sc;
        A mn = s > mr ? s : mr;
        A c = xexp(mr - mn), p = xexp(s - mn);
        lr = lr * c + p;
        if (mk.on) p = att_keep(mk, att_index(drop, ib, hd, pos, k0 + j)) ? p * dsc : (A)0;
#pragma unroll
        for (int u = 0; u < NPL; u++) {
            usize d = lane + u * WARP_SIZE;
            if (d < hs) ar[u] = ar[u] * c + p * ld(v[kr + d]);
        }
        mr = mn;
    }
    if (lane == 0) {
        m[row] = mr;
        l[row] = lr;
    }
#pragma unroll
    for (int u = 0; u < NPL; u++) {
        usize d = lane + u * WARP_SIZE;
        if (d < hs) acc[row * hs + d] = ar[u];
    }
}

// (p, pd, ds) of one (query, key) pair from the warp-reduced s = q.k, dp = dO.v.
template <typename A>
__device__ __forceinline__ void att_grad_terms(A s, A dp, A lse, A delta, bool kept, bool on,
                                               A dsc, A* p_out, A* pd_out, A* ds_out) {
    A p = xexp(s - lse);
    if (on) {
        A pd = kept ? p * dsc : (A)0;
        *pd_out = pd;
        *ds_out = pd * dp - p * delta;
    } else {
        *pd_out = p;
        *ds_out = p * (dp - delta);
    }
    *p_out = p;
}

// dq of one query row.
template <typename T>
__device__ void flash_bwd_q_row(const T* q, const T* k, const T* v, const T* d_o,
                                const ACC(T)* lse, const ACC(T)* delta, usize tq, usize tk,
                                usize h, usize hs, usize q0, usize k0, double scale,
                                const AttnDrop& drop, const AttnMask& mk, T* dq, usize row,
                                unsigned lane) {
    typedef ACC(T) A;
    usize hd = row % h, iq = (row / h) % tq, ib = row / (h * tq);
    usize pos = q0 + iq;
    if (tk == 0 || pos < k0) return;
    usize nv = pos + 1 - k0 < tk ? pos + 1 - k0 : tk;
    A qr[NPL], dor[NPL], gq[NPL];
#pragma unroll
    for (int u = 0; u < NPL; u++) {
        usize d = lane + u * WARP_SIZE;
        qr[u] = d < hs ? (A)ld(q[row * hs + d]) : (A)0;
        dor[u] = d < hs ? (A)ld(d_o[row * hs + d]) : (A)0;
        gq[u] = 0;
    }
    A sc = (A)scale, dsc = (A)drop.scale, L = lse[row], D = delta[row];
    for (usize j = 0; j < nv; j++) {
        usize kr = ((ib * tk + j) * h + hd) * hs;
        A kj[NPL], s = 0, dp = 0;
#pragma unroll
        for (int u = 0; u < NPL; u++) {
            usize d = lane + u * WARP_SIZE;
            kj[u] = d < hs ? (A)ld(k[kr + d]) : (A)0;
            if (d < hs) {
                s += qr[u] * kj[u];
                dp += dor[u] * ld(v[kr + d]);
            }
        }
        s = warp_sum(s) * sc;
        dp = warp_sum(dp);
        bool kept = mk.on && att_keep(mk, att_index(drop, ib, hd, pos, k0 + j));
        A p, pd, ds;
        att_grad_terms(s, dp, L, D, kept, mk.on, dsc, &p, &pd, &ds);
#pragma unroll
        for (int u = 0; u < NPL; u++) gq[u] += ds * kj[u];
    }
#pragma unroll
    for (int u = 0; u < NPL; u++) {
        usize d = lane + u * WARP_SIZE;
        if (d < hs) dq[row * hs + d] = sto<T>(ld(dq[row * hs + d]) + sc * gq[u]);
    }
}

// dk, dv of one key row (row indexes [b, tk, h]).
template <typename T>
__device__ void flash_bwd_kv_row(const T* q, const T* k, const T* v, const T* d_o,
                                 const ACC(T)* lse, const ACC(T)* delta, usize tq, usize tk,
                                 usize h, usize hs, usize q0, usize k0, double scale,
                                 const AttnDrop& drop, const AttnMask& mk, T* dk, T* dv,
                                 usize row, unsigned lane) {
    typedef ACC(T) A;
    usize hd = row % h, jk = (row / h) % tk, ib = row / (h * tk);
    usize kpos = k0 + jk;
    usize i0 = kpos > q0 ? kpos - q0 : 0; // first query that sees this key
    if (i0 >= tq) return;
    A kr[NPL], vr[NPL], gk[NPL], gv[NPL];
#pragma unroll
    for (int u = 0; u < NPL; u++) {
        usize d = lane + u * WARP_SIZE;
        kr[u] = d < hs ? (A)ld(k[row * hs + d]) : (A)0;
        vr[u] = d < hs ? (A)ld(v[row * hs + d]) : (A)0;
        gk[u] = 0;
        gv[u] = 0;
    }
    A sc = (A)scale, dsc = (A)drop.scale;
    for (usize i = i0; i < tq; i++) {
        usize qrow = (ib * tq + i) * h + hd;
        usize qo = qrow * hs;
        A qi[NPL], doi[NPL], s = 0, dp = 0;
#pragma unroll
        for (int u = 0; u < NPL; u++) {
            usize d = lane + u * WARP_SIZE;
            qi[u] = d < hs ? (A)ld(q[qo + d]) : (A)0;
            doi[u] = d < hs ? (A)ld(d_o[qo + d]) : (A)0;
            s += qi[u] * kr[u];
            dp += doi[u] * vr[u];
        }
        s = warp_sum(s) * sc;
        dp = warp_sum(dp);
        bool kept = mk.on && att_keep(mk, att_index(drop, ib, hd, q0 + i, kpos));
        A p, pd, ds;
        att_grad_terms(s, dp, lse[qrow], delta[qrow], kept, mk.on, dsc, &p, &pd, &ds);
#pragma unroll
        for (int u = 0; u < NPL; u++) {
            gv[u] += pd * doi[u];
            gk[u] += ds * qi[u];
        }
    }
#pragma unroll
    for (int u = 0; u < NPL; u++) {
        usize d = lane + u * WARP_SIZE;
        if (d < hs) {
            dk[row * hs + d] = sto<T>(ld(dk[row * hs + d]) + sc * gk[u]);
            dv[row * hs + d] = sto<T>(ld(dv[row * hs + d]) + gv[u]);
        }
    }
}

#define WARP_LOOP(row, n)                                                                   \
    for (usize row = ((usize)blockIdx.x * blockDim.x + threadIdx.x) / WARP_SIZE; row < (n); \
         row += ((usize)gridDim.x * blockDim.x) / WARP_SIZE)

#define ATTENTION(T, S)                                                                     \
    extern "C" __global__ void attn_fwd_init_##S(usize rows, usize hs, ACC(T)* m, ACC(T)* l, \
                                                 ACC(T)* acc) {                             \
        usize n = rows * hs > rows ? rows * hs : rows;                                      \
        GRID_LOOP(i, n) {                                                                   \
            if (i < rows * hs) acc[i] = 0;                                                  \
            if (i < rows) {                                                                 \
                m[i] = (ACC(T))(-1.0 / 0.0);                                                \
                l[i] = 0;                                                                   \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void flash_fwd_##S(const T* q, const T* k, const T* v, usize b,   \
                                             usize tq, usize tk, usize ks, usize h, usize hs, \
                                             usize q0, usize k0, double scale, AttnDrop drop, \
                                             ACC(T)* m, ACC(T)* l, ACC(T)* acc) {           \
        if (hs > HS_MAX) __trap(); /* the launchers refuse it: never silently wrong */     \
        AttnMask mk = att_mask(drop);                                                       \
        unsigned lane = threadIdx.x % WARP_SIZE;                                            \
        WARP_LOOP(row, b * tq * h)                                                          \
        flash_fwd_row(q, k, v, tq, tk, ks, h, hs, q0, k0, scale, drop, mk, m, l, acc, row, lane); \
    }                                                                                       \
    extern "C" __global__ void attn_fwd_finalize_##S(const ACC(T)* m, const ACC(T)* l,      \
                                                     const ACC(T)* acc, usize rows, usize hs, \
                                                     T* o, ACC(T)* lse) {                   \
        typedef ACC(T) A;                                                                   \
        usize n = rows * hs > rows ? rows * hs : rows;                                      \
        GRID_LOOP(i, n) {                                                                   \
            if (i < rows * hs) {                                                            \
                usize r = i / hs;                                                           \
                o[i] = sto<T>(acc[i] * ((A)1 / l[r]));                                      \
            }                                                                               \
            if (i < rows) lse[i] = m[i] + xlog(l[i]);                                       \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void attn_bwd_delta_##S(const T* o, const T* d_o, usize rows, usize hs, \
                                                  ACC(T)* delta) {                          \
        typedef ACC(T) A;                                                                   \
        unsigned lane = threadIdx.x % WARP_SIZE;                                            \
        WARP_LOOP(row, rows) {                                                              \
            A s = 0;                                                                        \
            for (usize d = lane; d < hs; d += WARP_SIZE)                                    \
                s += ld(o[row * hs + d]) * ld(d_o[row * hs + d]);                           \
            s = warp_sum(s);                                                                \
            if (lane == 0) delta[row] = s;                                                  \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void flash_bwd_##S(const T* q, const T* k, const T* v, const T* d_o, \
                                             const ACC(T)* lse, const ACC(T)* delta, usize b, \
                                             usize tq, usize tk, usize h, usize hs, usize q0, \
                                             usize k0, double scale, AttnDrop drop, T* dq,  \
                                             T* dk, T* dv) {                                \
        if (hs > HS_MAX) __trap(); /* the launchers refuse it: never silently wrong */     \
        AttnMask mk = att_mask(drop);                                                       \
        unsigned lane = threadIdx.x % WARP_SIZE;                                            \
        WARP_LOOP(row, b * tq * h)                                                          \
        flash_bwd_q_row(q, k, v, d_o, lse, delta, tq, tk, h, hs, q0, k0, scale, drop, mk, dq, \
                        row, lane);                                                         \
        WARP_LOOP(row, b * tk * h)                                                          \
        flash_bwd_kv_row(q, k, v, d_o, lse, delta, tq, tk, h, hs, q0, k0, scale, drop, mk, dk, \
                         dv, row, lane);                                                    \
    }
FOR_ALL_DTYPES(ATTENTION)
