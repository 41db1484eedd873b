//! `cuda/crossentropy.cu`: cross-entropy over vocabulary tiles, the loss as
//! two single-block sums in a fixed order.

cuda_table! { cuda_table_crossentropy($) CrossEntropy;
    /// `acc [rows, 2] = (-inf, 0)` (`T` the accumulation dtype).
    maxsumexp_init<T>(rows, acc: out T::Acc [rows * 2]) @ elementwise(rows);
    /// `acc [rows, 2] = (max, sumexp)` merged with this logits tile.
    maxsumexp_update<T>(logits: in T [rows * vt], rows, vt, acc: out T::Acc [rows * 2])
        @ per_row(rows);
    /// `loss[0] -= sum_r z[r, t_r]` for the targets inside this tile.
    ce_loss_target<T>(
        logits: in T [rows * vt], rows, vt, vocab_lo, targets: in i64 [rows], loss: out f64 [1],
    ) @ per_row_capped(1);
    /// `loss[0] += sum_r (max + ln sumexp)` over the non-ignored rows.
    ce_loss_lse<T>(acc: in T::Acc [rows * 2], rows, targets: in i64 [rows], loss: out f64 [1])
        @ per_row_capped(1);
    /// In place: logits become `scale * (softmax - onehot)`.
    ce_bwd<T>(
        acc: in T::Acc [rows * 2], rows, vt, vocab_lo, targets: in i64 [rows], scale: val f64,
        logits: out T [rows * vt],
    ) @ elementwise(rows * vt);
}
