//! Default tile sizes, chosen from the model's shapes and the runtime's
//! workers, for every axis the user left unset (NNTile makes users pick all
//! six; we pick them and let any `--*-tile` flag override its axis).
//!
//! On CPU workers a task is one single-threaded kernel, so a step keeps every
//! worker busy only if each op splits into a few tasks per worker:
//!
//! ```text
//! rows (B*T tokens)   4 row tiles per worker of 256..1024 tokens, or at least 1
//!                     of 64..256 when there are few tokens (the inner and
//!                     head splits below then give every worker its share):
//!                     whole sequences per tile while they fit, else even
//!                     cuts of T
//! hidden (C)          whole: LayerNorm and the residual stream stay one task per row tile
//! inner (4C), heads   one tile per worker: the MLP and attention split across
//!                     workers even when there is one row tile (B=1, decoding)
//! vocab (V)           >= 2 tiles per worker, at most 8192 wide: the LM head
//!                     and cross-entropy of one row tile run in parallel
//! ```
//!
//! Parameter axes (hidden, inner, heads, vocab) are fixed when the model is
//! built; the row axes (batch, seq) are chosen per call, from that call's
//! B and T. With a GPU in the runtime every axis defaults to whole, as
//! before: a GPU wants few large tasks.

use super::config::{Gpt2Config, Tiling};
use crate::runtime::{Runtime, WorkerKind};

/// Tokens in one default row tile: never fewer than MIN_ROWS, GOOD_ROWS or
/// more when there are enough (smaller GEMM tiles lose 5-25 % on a 2-core
/// Zen 4, `benches/bench_train.py --sweep`; on the Xeon, 355M at B=1,
/// T=256 ran 56 tok/s with 64-token tiles and 76 with 128), at most
/// MAX_ROWS.
const MIN_ROWS: usize = 64;
const GOOD_ROWS: usize = 256;
const MAX_ROWS: usize = 1024;
/// Widest default vocabulary tile.
const MAX_VOCAB_TILE: usize = 8192;

/// The workers that default tiles are cut for: CPU workers, or None when a
/// GPU is present (every axis whole).
pub(crate) fn cpu_workers(rt: &Runtime) -> Option<usize> {
    if rt.nworkers_of(WorkerKind::Cuda) > 0 {
        None
    } else {
        Some(rt.nworkers_of(WorkerKind::Cpu).max(1))
    }
}

/// `tiles` with its unset parameter axes filled in; the row axes stay as
/// given (see [`row_tiles`]).
pub(crate) fn param_tiles(tiles: &Tiling, cfg: &Gpt2Config, workers: Option<usize>) -> Tiling {
    let Some(w) = workers else {
        return *tiles;
    };
    let split = |n: usize, parts: usize, align: usize| n.div_ceil(parts).next_multiple_of(align);
    Tiling {
        hidden: tiles.hidden.or(Some(cfg.n_embd)),
        inner: tiles.inner.or(Some(split(cfg.n_inner, w, 64).max(256))),
        heads: tiles.heads.or(Some(cfg.n_head.div_ceil(w))),
        vocab: tiles
            .vocab
            .or(Some(split(cfg.vocab_size, 2 * w, 256).min(MAX_VOCAB_TILE))),
        ..*tiles
    }
}

/// (batch tile, seq tile) of a call's activations `[b, t, ...]`: the user's,
/// or cut for `workers` (whole when None).
pub(crate) fn row_tiles(
    tiles: &Tiling,
    b: usize,
    t: usize,
    workers: Option<usize>,
) -> (usize, usize) {
    let Some(w) = workers else {
        return (
            tiles.batch.unwrap_or(b).min(b),
            tiles.seq.unwrap_or(t).min(t),
        );
    };
    // Four row tiles per worker, but not below GOOD_ROWS tokens unless that
    // leaves fewer than one per worker; never below MIN_ROWS.
    let tokens = b * t;
    let floor = tokens.div_ceil(w).clamp(MIN_ROWS, GOOD_ROWS);
    let rows = tokens.div_ceil(4 * w).clamp(floor, MAX_ROWS);
    let tt = match tiles.seq {
        Some(s) => s.min(t),
        None => {
            // Fewest even cuts of T that fit `rows` (whole sequences when
            // they fit, or when the batch already gives every worker rows).
            let per_batch_tile = tiles.batch.map_or(rows, |mb| rows.div_ceil(mb.min(b)));
            t.div_ceil(t.div_ceil(per_batch_tile.max(1)))
        }
    };
    let tb = tiles.batch.unwrap_or((rows / tt).max(1)).min(b);
    (tb, tt)
}

/// The seq tile of a call whose batch tile is fixed at `tb` (the KV cache's).
pub(crate) fn seq_tile_for(tiles: &Tiling, tb: usize, t: usize, workers: Option<usize>) -> usize {
    row_tiles(
        &Tiling {
            batch: Some(tb),
            ..*tiles
        },
        tb,
        t,
        workers,
    )
    .1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_for_two_workers() {
        let none = Tiling::default();
        // B=8, T=256: one sequence per tile (8 tiles).
        assert_eq!(row_tiles(&none, 8, 256, Some(2)), (1, 256));
        // B=1, T=1024: four 256-token cuts.
        assert_eq!(row_tiles(&none, 1, 1024, Some(2)), (1, 256));
        // B=1, T=256: one 128-token cut per worker; never below 64.
        assert_eq!(row_tiles(&none, 1, 256, Some(2)), (1, 128));
        assert_eq!(row_tiles(&none, 1, 100, Some(2)), (1, 50));
        assert_eq!(row_tiles(&none, 1, 50, Some(2)), (1, 50));
        // Many short sequences: several per tile.
        assert_eq!(row_tiles(&none, 64, 32, Some(2)), (8, 32));
        // Decoding one token of 8 rows: one tile.
        assert_eq!(row_tiles(&none, 8, 1, Some(2)), (8, 1));
        // A GPU: whole.
        assert_eq!(row_tiles(&none, 8, 256, None), (8, 256));
        // Flags win.
        let seq = Tiling {
            seq: Some(100),
            ..none
        };
        assert_eq!(row_tiles(&seq, 1, 1024, Some(2)).1, 100);
        let mb = Tiling {
            batch: Some(4),
            ..none
        };
        assert_eq!(row_tiles(&mb, 8, 256, Some(2)), (4, 64));
        // 124M at B=4, T=256 and 32 x 1024: one sequence per tile.
        assert_eq!(row_tiles(&none, 4, 256, Some(2)), (1, 256));
        assert_eq!(row_tiles(&none, 32, 1024, Some(2)), (1, 1024));
    }
}
