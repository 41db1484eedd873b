//! GPT-2 (HF's `GPT2LMHeadModel`) on tiles, with an explicit forward and
//! backward per layer as in llm.c and NNTile: no autograd, every step a
//! graph of tile tasks submitted in program order.

mod autotile;
pub mod config;
pub(crate) mod gpt2;
pub mod kvcache;
pub mod params;

pub use config::{Gpt2Config, Tiling, WHOLE};
pub use gpt2::{Gpt2, StepOptions};
pub use params::{Param, Params};
