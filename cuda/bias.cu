// Bias over the last axis of a [rows, cols] tile, as src/kernels/cpu/bias.rs.
//   bias_fill: y[r, c] = bias[c]      bias_add: y[r, c] += bias[c]
//     (one thread per element)
//   bias_grad: db[c] += sum_r dy[r, c], in two launches, bit for bit the
//     CPU's sum: the CPU sums each column in acc_t over blocks of 256 rows
//     (the last one partial) and adds the block sums, in block order, into
//     an f64 total from 0.0; then db[c] = G(db[c] + total).
//     bias_grad_part: part[k, c] = that acc_t sum over row block k (rows
//       k * rblk .. (k + 1) * rblk, rblk = 256 from the launcher's
//       COL_ROW_BLOCK), as f64 (exact). Block b of the 1-D grid (grid-stride)
//       owns row block b / strips and the b % strips-th strip of blockDim.x
//       columns; a thread walks its column's rblk rows (loads coalesced
//       across c). ceil(rows / rblk) * cols threads in all.
//     add_col_parts (reduce.cu): db[c] = G(db[c] + (((0.0 + part[0, c]) +
//       part[1, c]) + ...)) in f64, in k order: the CPU's total.
//   The partition is the CPU's row block, never the grid or the timing, and
//   nothing is atomic: deterministic and equal to the CPU's bits.

#define BIAS(T, S)                                                                          \
    extern "C" __global__ void bias_fill_##S(const T* bias, usize rows, usize cols, T* y) { \
        GRID_LOOP(i, rows * cols) y[i] = bias[i % cols];                                    \
    }                                                                                       \
    extern "C" __global__ void bias_add_##S(const T* bias, usize rows, usize cols, T* y) {  \
        GRID_LOOP(i, rows * cols) y[i] = sto<T>(ld(y[i]) + ld(bias[i % cols]));             \
    }                                                                                       \
    extern "C" __global__ void bias_grad_part_##S(const T* dy, usize rows, usize cols,      \
                                                  usize rblk, double* part) {               \
        usize strips = (cols + blockDim.x - 1) / blockDim.x;                                \
        usize blocks = (rows + rblk - 1) / rblk * strips;                                   \
        for (usize b = blockIdx.x; b < blocks; b += gridDim.x) {                            \
            usize k = b / strips, c = (b % strips) * blockDim.x + threadIdx.x;              \
            if (c >= cols) continue;                                                        \
            usize r1 = (k + 1) * rblk < rows ? (k + 1) * rblk : rows;                       \
            ACC(T) p = 0;                                                                   \
            for (usize r = k * rblk; r < r1; r++) p += ld(dy[r * cols + c]);                \
            part[k * cols + c] = (double)p;                                                 \
        }                                                                                   \
    }
FOR_ALL_DTYPES(BIAS)
