// Bias over the last axis of a [rows, cols] tile.
//   bias_fill: y[r, c] = bias[c]      bias_add: y[r, c] += bias[c]
//     (one thread per element)
//   bias_grad: db[c] += sum_r dy[r, c]  (one thread per column, walking the
//     rows: coalesced across c, deterministic, summed in f64 as the CPU's totals)

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
        GRID_LOOP(c, cols) {                                                                \
            double s = 0.0;                                                                 \
            for (usize r = 0; r < rows; r++) s += (double)ld(dy[r * cols + c]);             \
            db[c] = st<G>((double)ld(db[c]) + s);                                           \
        }                                                                                   \
    }
FOR_GRAD_PAIRS(BIAS_GRAD)
