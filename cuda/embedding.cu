// Token embedding over a vocabulary tile [vocab_lo, vocab_lo + vt) of the
// table wte [vt, cols], and learned / sinusoidal positions: the kernels the
// codelets of src/ops/embedding.rs launch, mirroring
// src/kernels/cpu/embedding.rs:
//   embedding_rows_fwd: y[r, :] = wte[ids[r] - vocab_lo, :] for ids inside
//     the tile (rows whose id lies outside are left untouched), one block per
//     row (grid-stride over rows): the row's id is read once, and a row of
//     another vocabulary tile costs one load.
//   embedding_bwd_sorted: dwte[id - vocab_lo, :] += dy[r, :] without atomics
//     and in the CPU's order. The host passes the distinct ids (sorted) and,
//     for each, the rows that hold it in increasing order (CSR: rows[offs[u]
//     .. offs[u + 1]]). Block b (1-D grid-stride) owns distinct id b / strips
//     and the b % strips-th strip of blockDim.x columns; a thread adds its
//     id's rows into one gradient element one after the other, rounding into
//     G after each add as the CPU kernel does: bit-identical to it and
//     deterministic. The CPU's per-add rounding fixes the order within an
//     id, so an id's rows are not split further: the kernel runs
//     nuniq * cols threads, and its longest walk is the most frequent id's
//     rows (one column per thread).
//   add_rows: y[b, t, :] += table[first_row + t, :], y [batch, tt, cols]
//     (learned positions), in T's accumulator as the CPU.
//   add_rows_bwd: dtable[first_row + t, :] += sum_b dy[b, t, :]: one thread
//     per (t, c) sums the batch in T's accumulator, in batch order, then adds
//     into G in f64 as the CPU (bit for bit). Already tt * cols threads, each
//     walking only the `batch` rows of a position (B, not B * T): the CPU's
//     unblocked acc_t sum over the batch is not split.
//   sinusoidal: out [n, cols] = PE(pos_lo + p, cols_lo + c) of a total_cols
//     wide table, PE(pos, 2i) = sin(pos * f_i), PE(pos, 2i + 1) = cos(pos * f_i),
//     f_i = exp(-(2i / total_cols) * ln_base) with ln_base = ln 10000 from the
//     host; in f64 like the CPU (libdevice's sin/cos/exp may differ from the
//     CPU's libm in the last f64 bit).

#define EMBEDDING_ROWS(T, S)                                                                \
    extern "C" __global__ void embedding_rows_fwd_##S(usize rows, const i64* ids, usize vocab_lo, \
                                                      const T* wte, usize vt, usize cols, T* y) { \
        for (usize r = blockIdx.x; r < rows; r += gridDim.x) {                              \
            i64 id = ids[r];                                                                \
            if (id < (i64)vocab_lo || id >= (i64)(vocab_lo + vt)) continue;                 \
            const T* src = wte + ((usize)id - vocab_lo) * cols;                             \
            for (usize c = threadIdx.x; c < cols; c += blockDim.x) y[r * cols + c] = src[c]; \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void add_rows_##S(const T* table, usize first_row, usize tt, usize batch, \
                                            usize cols, T* y) {                             \
        GRID_LOOP(i, batch * tt * cols) {                                                   \
            usize t = (i / cols) % tt, c = i % cols;                                        \
            y[i] = sto<T>(ld(y[i]) + ld(table[(first_row + t) * cols + c]));                \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void sinusoidal_##S(usize pos_lo, usize n, usize cols_lo, usize cols, \
                                              usize total_cols, double ln_base, T* out) {   \
        double d = (double)total_cols;                                                      \
        GRID_LOOP(i, n * cols) {                                                            \
            usize p = i / cols, c = cols_lo + i % cols;                                     \
            double f = exp(-((double)(c - c % 2) / d) * ln_base);                           \
            double a = (double)(pos_lo + p) * f;                                            \
            out[i] = st<T>(c % 2 == 0 ? sin(a) : cos(a));                                   \
        }                                                                                   \
    }
FOR_ALL_DTYPES(EMBEDDING_ROWS)

#define EMBEDDING_ROWS_BWD(T, S, G, GS)                                                     \
    extern "C" __global__ void embedding_bwd_sorted_##S##_##GS(                             \
        usize nuniq, const i64* uniq, const i64* offs, const i64* rows, usize vocab_lo,     \
        const T* dy, usize vt, usize cols, G* dwte) {                                       \
        usize strips = (cols + blockDim.x - 1) / blockDim.x;                                \
        for (usize b = blockIdx.x; b < nuniq * strips; b += gridDim.x) {                    \
            usize u = b / strips, c = (b % strips) * blockDim.x + threadIdx.x;              \
            i64 id = uniq[u];                                                               \
            if (c >= cols || id < (i64)vocab_lo || id >= (i64)(vocab_lo + vt)) continue;    \
            G* o = &dwte[((usize)id - vocab_lo) * cols + c];                                \
            ACC(G) v = ld(*o);                                                              \
            for (i64 k = offs[u]; k < offs[u + 1]; k++)                                     \
                v = ld(sto<G>(v + (ACC(G))ld(dy[(usize)rows[k] * cols + c])));              \
            *o = sto<G>(v);                                                                 \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void add_rows_bwd_##S##_##GS(const T* dy, usize first_row, usize tt, \
                                                       usize batch, usize cols, G* dtable) { \
        GRID_LOOP(j, tt * cols) {                                                           \
            ACC(T) p = 0;                                                                   \
            for (usize b = 0; b < batch; b++) p += ld(dy[b * tt * cols + j]);               \
            G* o = &dtable[first_row * cols + j];                                           \
            *o = st<G>((double)ld(*o) + (double)p);                                         \
        }                                                                                   \
    }
FOR_GRAD_PAIRS(EMBEDDING_ROWS_BWD)
