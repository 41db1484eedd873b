// Token embedding over a vocabulary tile [vocab_lo, vocab_lo + vt) of the
// table wte [vt, cols].
//   embedding_fwd: y[r, :] = wte[ids[r] - vocab_lo, :] for ids inside the tile
//     (rows whose id lies outside are left untouched), one thread per element.
//   embedding_bwd: dwte[ids[r] - vocab_lo, :] += dy[r, :] with atomicAdd (a
//     token may repeat); 16-bit gradients use a CAS loop (see prelude).
//     Nondeterministic summation order, unlike the CPU kernel.

#define EMBEDDING(T, S)                                                                     \
    extern "C" __global__ void embedding_fwd_##S(usize rows, const i64* ids, usize vocab_lo, \
                                                 const T* wte, usize vt, usize cols, T* y) { \
        GRID_LOOP(i, rows * cols) {                                                         \
            usize r = i / cols, c = i % cols;                                               \
            i64 id = ids[r];                                                                \
            if (id >= (i64)vocab_lo && id < (i64)(vocab_lo + vt))                           \
                y[i] = wte[((usize)id - vocab_lo) * cols + c];                              \
        }                                                                                   \
    }
FOR_ALL_DTYPES(EMBEDDING)

#define EMBEDDING_BWD(T, S, G, GS)                                                          \
    extern "C" __global__ void embedding_bwd_##S##_##GS(usize rows, const i64* ids, usize vocab_lo, \
                                                        const T* dy, usize vt, usize cols, G* dwte) { \
        GRID_LOOP(i, rows * cols) {                                                         \
            usize r = i / cols, c = i % cols;                                               \
            i64 id = ids[r];                                                                \
            if (id >= (i64)vocab_lo && id < (i64)(vocab_lo + vt))                           \
                atomic_add(&dwte[((usize)id - vocab_lo) * cols + c], ld(dy[i]));            \
        }                                                                                   \
    }
FOR_GRAD_PAIRS(EMBEDDING_BWD)
