//! GPT-2's byte-level BPE for `gpt2rs-prepare` and `gpt2rs.data`: the exact
//! ids of GPT-2's tokenizer (tiktoken's `r50k_base`, whose merge ranks the
//! `tiktoken-rs` crate bundles, so nothing is downloaded), on every core.
//!
//! One document becomes
//!
//! ```text
//! split at each literal "<|endoftext|>"   -> EOT (50256) between the parts, never the text
//! pre-tokenize each part (GPT-2's pattern) -> pieces
//! BPE-merge each piece (cached per worker) -> ids
//! append EOT                               -> one document, ready to concatenate
//! ```
//!
//! which is what tiktoken's `encode(text, allowed_special="all")` followed by
//! the end-of-text token gives (checked against `tiktoken-rs` itself by
//! [`gpt2_encode_reference`] in the tests).
//!
//! Why not call `tiktoken-rs`'s encoder directly: GPT-2's pattern
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! has one look-ahead, which needs a backtracking engine (`fancy-regex`, a
//! few MB/s). We run it without the look-ahead on the linear-time `regex`
//! crate and redo by hand the one thing the look-ahead changes: a whitespace
//! run of two or more characters followed by a non-space gives back its last
//! character, which then starts the next piece (` word` when it is a space).
//! Most pieces are whole GPT-2 tokens or repeat (a story's words), so a rank
//! look-up or a per-worker cache answers them without merging.

use super::error::guard;
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use regex::Regex;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use tiktoken_rs::{byte_pair_split, CoreBPE, Rank};

/// GPT-2's end-of-text token id.
pub const EOT: u16 = 50256;
/// GPT-2's vocabulary: 50256 byte-level BPE tokens plus end-of-text.
pub const VOCAB_SIZE: usize = 50257;
const EOT_TEXT: &str = "<|endoftext|>";

/// GPT-2's pre-tokenizer pattern without its `\s+(?!\S)` look-ahead (see the
/// module doc); `regex` matches leftmost-first, like the original.
const PRETOKENIZE: &str = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Pieces this long or longer go to `tiktoken-rs`'s own encoder, whose merge
/// is O(n log n) where `byte_pair_split`'s is quadratic; they are not cached.
const LONG_PIECE: usize = 100;
/// A worker's cache is cleared when it holds this many pieces (about 20 MB).
const CACHE_CAP: usize = 1 << 18;
/// Work is handed to workers in runs of documents of about this many bytes.
const CHUNK_BYTES: usize = 256 << 10;

type Cache = FxHashMap<Box<[u8]>, Box<[u16]>>;
/// A run of documents encoded: their ids, concatenated, and each one's length.
type Encoded = (Vec<u16>, Vec<usize>);
/// `gpt2_encode_batch`'s result: ids (uint16) and offsets (int64).
type IdsOffsets<'py> = (Bound<'py, PyArray1<u16>>, Bound<'py, PyArray1<i64>>);

struct Gpt2Bpe {
    /// Token bytes -> id, for ids 0..50256 (EOT is special, not here).
    ranks: FxHashMap<Vec<u8>, Rank>,
    pretokenize: Regex,
    /// `tiktoken-rs`'s encoder: long pieces, decoding, and the reference.
    core: CoreBPE,
}

fn bpe() -> &'static Gpt2Bpe {
    static BPE: OnceLock<Gpt2Bpe> = OnceLock::new();
    BPE.get_or_init(|| {
        let core = tiktoken_rs::r50k_base().expect("the bundled r50k_base ranks parse");
        let mut ranks = FxHashMap::default();
        for id in 0..Rank::from(EOT) {
            let bytes = core
                .decode_bytes(&[id])
                .expect("ids below 50256 are BPE tokens");
            ranks.insert(bytes, id);
        }
        let pretokenize = Regex::new(PRETOKENIZE).expect("the pre-tokenizer pattern compiles");
        Gpt2Bpe {
            ranks,
            pretokenize,
            core,
        }
    })
}

/// Per-worker piece caches, kept across calls (a corpus's words repeat from
/// one batch to the next); each worker takes one for the length of a call.
static CACHES: Mutex<Vec<Cache>> = Mutex::new(Vec::new());

fn take_cache() -> Cache {
    CACHES
        .lock()
        .map(|mut c| c.pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn give_cache(cache: Cache) {
    if let Ok(mut c) = CACHES.lock() {
        c.push(cache);
    }
}

impl Gpt2Bpe {
    /// Ids of one pre-tokenized piece.
    fn encode_piece(&self, piece: &str, out: &mut Vec<u16>, cache: &mut Cache) {
        let bytes = piece.as_bytes();
        if let Some(&id) = self.ranks.get(bytes) {
            out.push(id as u16);
        } else if bytes.len() >= LONG_PIECE {
            // The piece pre-tokenizes to itself, so this is its BPE merge.
            out.extend(
                self.core
                    .encode_ordinary(piece)
                    .into_iter()
                    .map(|id| id as u16),
            );
        } else if let Some(ids) = cache.get(bytes) {
            out.extend_from_slice(ids);
        } else {
            let ids: Box<[u16]> = byte_pair_split(bytes, &self.ranks)
                .into_iter()
                .map(|part| self.ranks[part] as u16)
                .collect();
            out.extend_from_slice(&ids);
            if cache.len() >= CACHE_CAP {
                cache.clear();
            }
            cache.insert(bytes.into(), ids);
        }
    }

    /// Ids of text that holds no special token (tiktoken's `encode_ordinary`).
    fn encode_ordinary(&self, text: &str, out: &mut Vec<u16>, cache: &mut Cache) {
        let mut pos = 0;
        while pos < text.len() {
            // Every character starts a match (some alternative takes it), so
            // the match begins at `pos`.
            let m = self
                .pretokenize
                .find_at(text, pos)
                .expect("the pre-tokenizer matches every character");
            let mut end = m.end();
            let piece = &text[pos..end];
            let last = piece.chars().next_back().expect("matches are non-empty");
            // `\s+` stopped before a non-space: GPT-2's `\s+(?!\S)` leaves the
            // run's last character for the next piece.
            if last.is_whitespace() && end < text.len() && piece.len() > last.len_utf8() {
                end -= last.len_utf8();
            }
            self.encode_piece(&text[pos..end], out, cache);
            pos = end;
        }
    }

    /// Ids of one document: literal `<|endoftext|>` becomes EOT, and EOT is
    /// appended when `append_eot`.
    fn encode_doc(&self, text: &str, append_eot: bool, out: &mut Vec<u16>, cache: &mut Cache) {
        for (i, part) in text.split(EOT_TEXT).enumerate() {
            if i > 0 {
                out.push(EOT);
            }
            self.encode_ordinary(part, out, cache);
        }
        if append_eot {
            out.push(EOT);
        }
    }
}

/// Encodes `docs` on `workers` threads (0: one per core). Returns the ids of
/// all documents, concatenated in order, and `offsets` (`docs.len() + 1`
/// entries): document `i` is `ids[offsets[i]..offsets[i + 1]]`.
pub fn encode_docs<S: AsRef<str> + Sync>(
    docs: &[S],
    append_eot: bool,
    workers: usize,
) -> (Vec<u16>, Vec<i64>) {
    let bpe = bpe();
    // Runs of consecutive documents of about CHUNK_BYTES each.
    let mut runs = vec![0];
    let mut bytes = 0;
    for (i, d) in docs.iter().enumerate() {
        bytes += d.as_ref().len();
        if bytes >= CHUNK_BYTES {
            runs.push(i + 1);
            bytes = 0;
        }
    }
    if *runs.last().unwrap() != docs.len() {
        runs.push(docs.len());
    }
    let nruns = runs.len() - 1;
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        workers
    }
    .clamp(1, nruns.max(1));

    // Each run's ids and per-document lengths.
    let encode_run = |r: usize, cache: &mut Cache| -> Encoded {
        let mut ids = Vec::new();
        let mut lens = Vec::with_capacity(runs[r + 1] - runs[r]);
        for d in &docs[runs[r]..runs[r + 1]] {
            let before = ids.len();
            bpe.encode_doc(d.as_ref(), append_eot, &mut ids, cache);
            lens.push(ids.len() - before);
        }
        (ids, lens)
    };
    let mut done: Vec<(usize, Encoded)> = if workers == 1 {
        let mut cache = take_cache();
        let out = (0..nruns).map(|r| (r, encode_run(r, &mut cache))).collect();
        give_cache(cache);
        out
    } else {
        // Workers take the next run from a shared counter, so a slow run
        // does not leave the others idle.
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut cache = take_cache();
                        let mut mine = Vec::new();
                        loop {
                            let r = next.fetch_add(1, Ordering::Relaxed);
                            if r >= nruns {
                                break;
                            }
                            mine.push((r, encode_run(r, &mut cache)));
                        }
                        give_cache(cache);
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    done.sort_unstable_by_key(|(r, _)| *r);

    let total = done.iter().map(|(_, (ids, _))| ids.len()).sum();
    let mut ids = Vec::with_capacity(total);
    let mut offsets = Vec::with_capacity(docs.len() + 1);
    offsets.push(0i64);
    for (_, (run_ids, lens)) in done {
        ids.extend_from_slice(&run_ids);
        for len in lens {
            offsets.push(offsets.last().unwrap() + len as i64);
        }
    }
    (ids, offsets)
}

/// Encode documents with GPT-2's tokenizer, on every core, without the GIL.
///
/// Exactly the ids of GPT-2's BPE (tiktoken's ``r50k_base``). A literal
/// ``<|endoftext|>`` inside a document becomes the end-of-text id 50256 (as
/// in Hugging Face's GPT-2 tokenizer), never the text.
///
/// Args:
///     texts: the documents.
///     append_eot: append 50256 after every document.
///     workers: threads to use; 0 means one per core.
///
/// Returns:
///     ``(ids, offsets)``: every document's ids concatenated (uint16), and
///     ``len(texts) + 1`` offsets (int64) so that document ``i`` is
///     ``ids[offsets[i]:offsets[i + 1]]``.
#[pyfunction]
#[pyo3(
    signature = (texts, *, append_eot=true, workers=0),
    text_signature = "(texts, *, append_eot=True, workers=0)"
)]
pub fn gpt2_encode_batch<'py>(
    py: Python<'py>,
    texts: Vec<PyBackedStr>,
    append_eot: bool,
    workers: usize,
) -> PyResult<IdsOffsets<'py>> {
    let (ids, offsets) = py.detach(|| guard(|| Ok(encode_docs(&texts, append_eot, workers))))?;
    Ok((PyArray1::from_vec(py, ids), PyArray1::from_vec(py, offsets)))
}

/// GPT-2 ids of one text by ``tiktoken-rs``'s own (slower) encoder, with
/// ``<|endoftext|>`` allowed as the special token: the reference the fast
/// encoder is tested against. No end-of-text is appended.
///
/// Args:
///     text: the text.
///
/// Returns:
///     the ids, as a list of int.
#[pyfunction]
#[pyo3(text_signature = "(text)")]
pub fn gpt2_encode_reference(py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
    let text = text.to_owned();
    py.detach(|| guard(|| Ok(bpe().core.encode_with_special_tokens(&text))))
}

/// The bytes GPT-2 ids stand for (UTF-8 text once whole characters are in).
///
/// Args:
///     ids: token ids, each below 50257.
///
/// Returns:
///     the bytes.
///
/// Raises:
///     ValueError: an id is not in GPT-2's vocabulary.
#[pyfunction]
#[pyo3(text_signature = "(ids)")]
pub fn gpt2_decode_bytes(
    py: Python<'_>,
    ids: Vec<u32>,
) -> PyResult<std::borrow::Cow<'static, [u8]>> {
    match py.detach(|| bpe().core.decode_bytes(&ids)) {
        Ok(b) => Ok(b.into()),
        Err(e) => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "token id {} is not in GPT-2's vocabulary of {VOCAB_SIZE}",
            e.token
        ))),
    }
}
