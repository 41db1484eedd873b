// Attention on tensor cores: the elementwise steps of the cuBLAS path of the
// attention update tasks (launcher and GEMMs: src/kernels/cuda/attention_tc.rs;
// the reference is src/kernels/cpu/attention.rs, whose formulas these mirror).
//
// Tiles as in attention.cu: q, dO [b, tq, h, hs], k, v [b, tk, h, hs], the
// statistics m, l, lse, delta [b, tq, h] and acc [b, tq, h, hs] in f32 (these
// kernels exist for f32, bf16 and f16 storage only: f64 keeps the warp
// path). Only query rows i >= first = max(k0 - q0, 0) see a key of the tile
// (key j is visible to query i iff k0 + j <= q0 + i, i.e. for j < nv(i) =
// min(q0 + i + 1 - k0, tk)); the GEMMs run on those nr = tq - first rows.
// A chunk of bc batch rows (b0 .. b0 + bc of the tile) is processed at once,
// through f32 score blocks laid out [bc, h, nr, tk] (row r of a block is
// batch b0 + r / (h nr), head (r / nr) % h, query first + r % nr):
//
//   S  = scale Q K^T                   (cuBLAS, f32)
// forward (attn_tc_fwd_rows), per query row, then acc += Pd V (cuBLAS, f32 C):
//   m' = max(m, max_{j<nv} S_j),  c = exp(m - m'),  P_j = exp(S_j - m') (j < nv)
//   l  = l c + sum_j P_j,  m = m',  acc *= c
//   Pd_j = P_j Z_j / (1 - p) for j < nv, 0 after   (dropout after l, as the CPU)
// backward (attn_tc_bwd_rows), with DP = dO V^T (cuBLAS, f32), per element:
//   P = exp(S - lse),  Pd = P Z / (1 - p)
//   dS = Pd DP - P delta   (dropout)   or   P (DP - delta)   (none)
//   (0 for j >= nv), then dV += Pd^T dO, dQ += scale dS K, dK += scale dS^T Q
//   (cuBLAS, inputs and C in T: each gradient tile gets one GEMM per batch
//   row, accumulated in f32 and rounded to T once, as the CPU rounds once).
// Pd and dS are written in the storage dtype T (the GEMM inputs): bf16/f16
// round them once, f32 keeps them exact.
//
// Rows that see no key of the tile (i < first) are not in the blocks and
// stay untouched, as on the CPU. The dropout mask is the CPU's
// (src/kernels/cpu/dropout.rs) on the global index of the probability in
// [B, NH, T, T]: (((b_off + ib) * NH + h_off + head) * T + q0 + i) * T + k0 + j.
//
// Launch: ONE WARP PER ROW of a block (lanes stride over the tk keys, so
// reads of S and writes of P are coalesced), rows visited by a warp-stride
// loop, so any grid is correct; blockDim a multiple of 32 (ATTN_TC_BLOCK).

// AttnDrop, att_mask, att_keep and att_index (the dropout mask, the same as
// attention.cu's) are in prelude.cu.

// Where row r of a [bc, h, nr, tk] block sits in the tile.
struct TcRow {
    usize ib;  // batch row in the tile
    usize hd;  // head in the tile
    usize i;   // query row in the tile (>= first)
    usize nv;  // visible keys (>= 1)
    usize st;  // index in the [b, tq, h] statistics
};
__device__ __forceinline__ TcRow tc_row(usize r, usize nr, usize tk, usize tq, usize h,
                                        usize first, usize q0, usize k0, usize b0) {
    TcRow w;
    w.ib = b0 + r / (nr * h);
    w.hd = (r / nr) % h;
    w.i = first + r % nr;
    usize seen = q0 + w.i + 1 - k0;  // >= 1: q0 + i >= k0 for i >= first
    w.nv = seen < tk ? seen : tk;
    w.st = (w.ib * tq + w.i) * h + w.hd;
    return w;
}

// One query row of the forward: softmax state update and Pd (see the header).
template <typename T>
__device__ void tc_fwd_row(const float* s, usize nr, usize tk, usize tq, usize h, usize hs,
                           usize first, usize q0, usize k0, usize b0, const AttnDrop& drop,
                           const AttnMask& mk, float* m, float* l, float* acc, T* p, usize r,
                           unsigned lane) {
    TcRow w = tc_row(r, nr, tk, tq, h, first, q0, k0, b0);
    const float* sr = s + r * tk;
    T* pr = p + r * tk;
    float mx = -1.0f / 0.0f;
    for (usize j = lane; j < w.nv; j += WARP_SIZE) {
        float v = sr[j];
        mx = v > mx ? v : mx;
    }
    mx = warp_max(mx);
    float m_old = m[w.st], l_old = l[w.st];
    float mn = mx > m_old ? mx : m_old;
    // Rescales what was accumulated under the old max (0 when it was -inf).
    float c = xexp(m_old - mn);
    float dsc = (float)drop.scale, sum = 0.0f;
    usize qpos = q0 + w.i;
    for (usize j = lane; j < tk; j += WARP_SIZE) {
        float e = 0.0f;
        if (j < w.nv) {
            e = xexp(sr[j] - mn);
            sum += e;
            // After the sum: dropout acts on the normalized probabilities.
            if (mk.on) e = att_keep(mk, att_index(drop, w.ib, w.hd, qpos, k0 + j)) ? e * dsc : 0.0f;
        }
        pr[j] = stf<T>(e);
    }
    sum = warp_sum(sum);
    float* ar = acc + w.st * hs;
    for (usize d = lane; d < hs; d += WARP_SIZE) ar[d] *= c;
    if (lane == 0) {
        m[w.st] = mn;
        l[w.st] = l_old * c + sum;
    }
}

// One query row of the backward: Pd and dS from S and DP (see the header).
template <typename T>
__device__ void tc_bwd_row(const float* s, const float* dp, const float* lse, const float* delta,
                           usize nr, usize tk, usize tq, usize h, usize first, usize q0, usize k0,
                           usize b0, const AttnDrop& drop, const AttnMask& mk, T* pd, T* ds,
                           usize r, unsigned lane) {
    TcRow w = tc_row(r, nr, tk, tq, h, first, q0, k0, b0);
    const float* sr = s + r * tk;
    const float* dpr = dp + r * tk;
    T* pdr = pd + r * tk;
    T* dsr = ds + r * tk;
    float L = lse[w.st], D = delta[w.st], dsc = (float)drop.scale;
    usize qpos = q0 + w.i;
    for (usize j = lane; j < tk; j += WARP_SIZE) {
        float pv = 0.0f, dsv = 0.0f;
        if (j < w.nv) {
            float p = xexp(sr[j] - L), g = dpr[j];
            if (mk.on) {
                pv = att_keep(mk, att_index(drop, w.ib, w.hd, qpos, k0 + j)) ? p * dsc : 0.0f;
                dsv = pv * g - p * D;
            } else {
                pv = p;
                dsv = p * (g - D);
            }
        }
        pdr[j] = stf<T>(pv);
        dsr[j] = stf<T>(dsv);
    }
}

#define TC_WARP_LOOP(row, n)                                                                \
    for (usize row = ((usize)blockIdx.x * blockDim.x + threadIdx.x) / WARP_SIZE; row < (n); \
         row += ((usize)gridDim.x * blockDim.x) / WARP_SIZE)

// rows = bc * h * nr (the rows of the chunk's blocks).
#define ATTENTION_TC(T, S)                                                                       \
    extern "C" __global__ void attn_tc_fwd_rows_##S(                                             \
        const float* s, usize rows, usize nr, usize tk, usize tq, usize h, usize hs, usize first, \
        usize q0, usize k0, usize b0, AttnDrop drop, float* m, float* l, float* acc, T* p) {     \
        AttnMask mk = att_mask(drop);                                                               \
        unsigned lane = threadIdx.x % WARP_SIZE;                                                 \
        TC_WARP_LOOP(r, rows)                                                                    \
        tc_fwd_row<T>(s, nr, tk, tq, h, hs, first, q0, k0, b0, drop, mk, m, l, acc, p, r, lane); \
    }                                                                                            \
    extern "C" __global__ void attn_tc_bwd_rows_##S(                                             \
        const float* s, const float* dp, const float* lse, const float* delta, usize rows,      \
        usize nr, usize tk, usize tq, usize h, usize first, usize q0, usize k0, usize b0,        \
        AttnDrop drop, T* pd, T* ds) {                                                           \
        AttnMask mk = att_mask(drop);                                                               \
        unsigned lane = threadIdx.x % WARP_SIZE;                                                 \
        TC_WARP_LOOP(r, rows)                                                                    \
        tc_bwd_row<T>(s, dp, lse, delta, nr, tk, tq, h, first, q0, k0, b0, drop, mk, pd, ds, r,  \
                      lane);                                                                     \
    }

ATTENTION_TC(float, f32)
#ifndef GPT2RS_HOST_EMU
ATTENTION_TC(bf16, bf16)
ATTENTION_TC(f16, f16)
#endif
