// Optimizer steps on one flat parameter tile, mirroring src/kernels/cpu/optim.rs
// (torch's single-tensor SGD and Adam/AdamW) operation by operation. The
// scalars torch computes in Python (lr/bc1, sqrt(bc2), 1 - dampening, ...)
// are computed by the launcher in f64 and passed here already rounded to P,
// as on the CPU. Parameters and state are P (f32 or f64); gradients G may be
// narrower and are widened exactly. Modules compile with --fmad=false, so no
// multiply-add is contracted (as Rust on the CPU), and each rounding to P of
// an intermediate happens where torch stores a tensor.
//   SGD:  d = g + wd*p; buf = first ? d : mom*buf + (1-damp)*d;
//         d = nesterov ? d + mom*buf : buf (momentum != 0); p = p - lr*d
//   Adam: (AdamW) p *= 1 - lr*wd | (Adam) g += wd*p
//         m = lerp(m, g, 1-beta1); v = beta2*v + (1-beta2)*g*g
//         denom = sqrt(v)/sqrt(bc2) + eps; p += (-(lr/bc1)*m)/denom
// Without momentum the SGD kernel never touches `buf` (the launcher passes
// null). bf16 weights with f32 masters: the codelet runs cast_f32_bf16 on
// the updated masters right after, on the same stream (the CPU path casts
// in the same task too). sqrt and division are IEEE-rounded (NVRTC's
// defaults, no fast math), as Rust's.

#define OPTIM(P, PS, G, GS)                                                                 \
    extern "C" __global__ void sgd_step_##PS##_##GS(usize n, P* p, const G* g, P* buf,      \
                                                    P neg_lr, P wd, int decay, int has_momentum, \
                                                    P mom, P one_m_damp, int nesterov, int first_step) { \
        GRID_LOOP(i, n) {                                                                   \
            P x = p[i];                                                                     \
            P d = (P)ld(g[i]);                                                              \
            if (decay) d += wd * x;                                                         \
            if (has_momentum) {                                                             \
                P b = first_step ? d : buf[i] * mom + one_m_damp * d;                       \
                buf[i] = b;                                                                 \
                d = nesterov ? d + mom * b : b;                                             \
            }                                                                               \
            p[i] = x + neg_lr * d;                                                          \
        }                                                                                   \
    }                                                                                       \
    extern "C" __global__ void adam_step_##PS##_##GS(usize n, P* p, const G* g, P* m, P* v, \
                                                     P neg_step_size, P bc2_sqrt, P eps, P w, \
                                                     P one_m_w, int lerp_lo, P b2, P one_m_b2, P wd, \
                                                     P decay_p, int couple, int decouple) { \
        GRID_LOOP(i, n) {                                                                   \
            P x = p[i];                                                                     \
            P gr = (P)ld(g[i]);                                                             \
            if (decouple) x = x * decay_p;                                                  \
            if (couple) gr += wd * x;                                                       \
            P mo = m[i];                                                                    \
            P mn = lerp_lo ? mo + w * (gr - mo) : gr - (gr - mo) * one_m_w;                 \
            P vn = v[i] * b2 + one_m_b2 * gr * gr;                                          \
            P denom = xsqrt(vn) / bc2_sqrt + eps;                                           \
            x += neg_step_size * mn / denom;                                                \
            m[i] = mn;                                                                      \
            v[i] = vn;                                                                      \
            p[i] = x;                                                                       \
        }                                                                                   \
    }
OPTIM(float, f32, float, f32)
#ifndef GPT2RS_HOST_EMU
OPTIM(float, f32, bf16, bf16)
OPTIM(float, f32, f16, f16)
#endif
OPTIM(double, f64, double, f64)
OPTIM(double, f64, float, f32)
