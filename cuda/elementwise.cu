// Elementwise ops on a flat tile of n elements, one thread per element in a
// grid-stride loop; arithmetic in acc_t<T>, one rounding per store.
//   fill:  y = value          scale: y = alpha * y
//   axpy:  y = alpha * x + y  add:   y = alpha * x + beta * y (beta == 0: y write-only)
//   cast:  y = (D) x, rounding to nearest-even once (f64 -> bf16/f16 goes
//          through f32: a double rounding the CPU kernel avoids; documented).

#define ELEMENTWISE(T, S)                                                                   \
    extern "C" __global__ void fill_##S(usize n, double value, T* y) {                      \
        T v = st<T>(value);                                                                 \
        GRID_LOOP(i, n) y[i] = v;                                                           \
    }                                                                                       \
    extern "C" __global__ void scale_##S(usize n, double alpha, T* y) {                     \
        ACC(T) a = (ACC(T))alpha;                                                           \
        GRID_LOOP(i, n) y[i] = sto<T>(a * ld(y[i]));                                        \
    }                                                                                       \
    extern "C" __global__ void axpy_##S(usize n, double alpha, const T* x, T* y) {          \
        ACC(T) a = (ACC(T))alpha;                                                           \
        GRID_LOOP(i, n) y[i] = sto<T>(a * ld(x[i]) + ld(y[i]));                             \
    }                                                                                       \
    extern "C" __global__ void add_##S(usize n, double alpha, const T* x, double beta, T* y) { \
        ACC(T) a = (ACC(T))alpha, b = (ACC(T))beta;                                         \
        if (beta == 0.0) {                                                                  \
            GRID_LOOP(i, n) y[i] = sto<T>(a * ld(x[i]));                                    \
        } else {                                                                            \
            GRID_LOOP(i, n) y[i] = sto<T>(a * ld(x[i]) + b * ld(y[i]));                     \
        }                                                                                   \
    }
FOR_ALL_DTYPES(ELEMENTWISE)

#define CAST(S_T, S_S, D_T, D_S)                                                            \
    extern "C" __global__ void cast_##S_S##_##D_S(usize n, const S_T* x, D_T* y) {          \
        GRID_LOOP(i, n) y[i] = sto<D_T>(ld(x[i]));                                          \
    }
#define CAST_FROM(S_T, S_S) FOR_ALL_DTYPES_WITH(CAST, S_T, S_S)
FOR_ALL_DTYPES(CAST_FROM)

// Block copy between two row-major tiles (re-tiling, slicing, cast):
//   y[dst_start + sum_k j_k * dst[k]] = (D) x[src_start + sum_k j_k * src[k]]
// for every multi-index j < n. The launcher merges dims that are contiguous
// on both sides and drops unit dims (as the CPU kernel does), so `ndim` is
// usually 1-3; dims are listed innermost first. One thread per element in a
// grid-stride loop; the flat index is split into j by divisions, in 32 bits
// when the block has fewer than 2^32 elements (64-bit division is several
// times slower). The outermost dim needs no division: what remains of the
// flat index is its coordinate. Same dtype: a bit copy (like the CPU's
// copy_from_slice); otherwise converted exactly as cast_* above.
#define COPY_MAX_DIMS 8
struct BlockDims {
    usize ndim;
    usize n[COPY_MAX_DIMS];
    usize src[COPY_MAX_DIMS];
    usize dst[COPY_MAX_DIMS];
    usize src_start;
    usize dst_start;
};

template <typename D, typename S> struct Conv {
    static __device__ __forceinline__ D f(S v) { return sto<D>(ld(v)); }
};
template <typename T> struct Conv<T, T> {
    static __device__ __forceinline__ T f(T v) { return v; }
};

template <typename I, typename S, typename D>
__device__ __forceinline__ void copy_one(const BlockDims& d, usize i, const S* x, D* y) {
    I r = (I)i;
    usize s = d.src_start, t = d.dst_start;
#pragma unroll
    for (int k = 0; k < COPY_MAX_DIMS; k++) {
        if ((usize)k + 1 < d.ndim) {
            I n = (I)d.n[k];
            I q = r / n;
            usize j = (usize)(r - q * n);
            s += j * d.src[k];
            t += j * d.dst[k];
            r = q;
        } else if ((usize)k + 1 == d.ndim) {
            s += (usize)r * d.src[k];
            t += (usize)r * d.dst[k];
        }
    }
    y[t] = Conv<D, S>::f(x[s]);
}

#define COPY_BLOCK(S_T, S_S, D_T, D_S)                                                      \
    extern "C" __global__ void copy_block_##S_S##_##D_S(BlockDims d, usize total, const S_T* x, \
                                                        D_T* y) {                           \
        if (total <= 0xffffffffull) {                                                       \
            GRID_LOOP(i, total) copy_one<unsigned>(d, i, x, y);                             \
        } else {                                                                            \
            GRID_LOOP(i, total) copy_one<usize>(d, i, x, y);                                \
        }                                                                                   \
    }
#define COPY_BLOCK_FROM(S_T, S_S) FOR_ALL_DTYPES_WITH(COPY_BLOCK, S_T, S_S)
FOR_ALL_DTYPES(COPY_BLOCK_FROM)
