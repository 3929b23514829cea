//! Precise raw text slicer (PRTS): sentence-aligned training blocks that respect hard cuts.
//!
//! Raw text becomes blocks of whole sentences of at most `cutoff` tokens **as trained**
//! (the block's own text in one encode, plus BOS/EOS as configured). Blocks never cross a
//! hard cut (a user string such as three newlines that separates ideas). Optional overlap
//! blocks bridge neighbouring blocks (PRTS), or a sliding window of one-sentence stride
//! covers the text (DEMENTOR). No text is dropped silently: over-long sentences are split at
//! word boundaries, and the only dropped pieces (`min_chars`) are counted in the [`Summary`].
//!
//! The tokenizer is injected through [`TokenCounter`]; an implementation for
//! `tokenizers::Tokenizer` sits behind the `tokenizers` feature, and [`WhitespaceCounter`]
//! counts words for tests and previews.
//!
//! ```
//! use prts_chunker::{chunk, unescape_hard_cut, BlockKind, ChunkConfig, EosPlacement, WhitespaceCounter};
//!
//! let text = "One idea in two sentences. It ends here.\n\n\nA second idea. Short.";
//! let cfg = ChunkConfig::new(10)
//!     .with_hard_cut(&unescape_hard_cut("\\n\\n\\n"))
//!     .with_eos(EosPlacement::HardCutOnly);
//! let chunks = chunk(text, &cfg, &WhitespaceCounter)?;
//! let texts: Vec<&str> = chunks.blocks.iter().map(|b| b.text.as_str()).collect();
//! assert_eq!(texts, ["One idea in two sentences. It ends here.", "A second idea. Short."]);
//! let first = &chunks.blocks[0];
//! assert!(first.ends_at_hard_cut && first.eos && first.kind == BlockKind::Main);
//! assert_eq!(first.tokens, 8 + 1); // eight words + EOS
//! assert_eq!(&text[first.ranges[0].clone()], first.text);
//! assert_eq!(chunks.summary.hard_cuts, 1);
//! # Ok::<(), prts_chunker::ChunkError>(())
//! ```
//!
//! Reading files: [`read_text`] reads a file or a folder of `.txt` files (joined with the
//! hard cut), strips a BOM, turns CRLF into LF and reports invalid UTF-8 with its offset.

mod block;
mod chunk;
mod config;
mod counter;
mod error;
mod input;
mod pack;
mod sentences;
mod units;

pub use block::{Block, BlockKind, Chunks, Summary};
pub use chunk::chunk;
pub use config::{unescape_hard_cut, ChunkConfig, EosPlacement, Mode, MAX_CUTOFF, MIN_TEXT_TOKENS};
pub use counter::{Additivity, TokenCounter, WhitespaceCounter};
pub use error::ChunkError;
pub use input::read_text;
pub use sentences::sentence_ranges;
