// Bias over the last axis of a [rows, cols] tile, as src/kernels/cpu/bias.rs.
//   bias_fill: y[r, c] = bias[c]      bias_add: y[r, c] += bias[c]
//     (one thread per element)
//   bias_grad: db[c] += sum_r dy[r, c]  (one thread per column, walking the
//     rows: coalesced across c and deterministic. As the CPU, the column is
//     summed in acc_t over blocks of BIAS_ROW_BLOCK rows and the block sums
//     are added in f64, so an f32 sum over B*T rows loses one block's rounding.)

#define BIAS_ROW_BLOCK 256

#define BIAS(T, S)                                                                          \
    extern "C" __global__ void bias_fill_##S(const T* bias, usize rows, usize cols, T* y) { \
        GRID_LOOP(i, rows * cols) y[i] = bias[i % cols];                                    \
    }                                                                                       \
    extern "C" __global__ void bias_add_##S(const T* bias, usize rows, usize cols, T* y) {  \
        GRID_LOOP(i, rows * cols) y[i] = sto<T>(ld(y[i]) + ld(bias[i % cols]));             \
    }
FOR_ALL_DTYPES(BIAS)

#define BIAS_GRAD(T, S, G, GS)                                                              \
    extern "C" __global__ void bias_grad_##S##_##GS(const T* dy, usize rows, usize cols, G* db) { \
        typedef ACC(T) A;                                                                   \
        if (rows == 0) return;                                                              \
        GRID_LOOP(c, cols) {                                                                \
            double total = 0.0;                                                             \
            for (usize r0 = 0; r0 < rows; r0 += BIAS_ROW_BLOCK) {                           \
                usize r1 = r0 + BIAS_ROW_BLOCK < rows ? r0 + BIAS_ROW_BLOCK : rows;         \
                A part = 0;                                                                 \
                for (usize r = r0; r < r1; r++) part += ld(dy[r * cols + c]);               \
                total += (double)part;                                                      \
            }                                                                               \
            db[c] = st<G>((double)ld(db[c]) + total);                                       \
        }                                                                                   \
    }
FOR_GRAD_PAIRS(BIAS_GRAD)
