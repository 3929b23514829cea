//! The chunker's output: blocks and a summary.

use std::ops::Range;

/// What produced a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// A PRTS block: main blocks are disjoint and in text order.
    Main,
    /// A PRTS overlap block: starts strictly inside a main block and runs into the next one.
    Overlap,
    /// A DEMENTOR sliding window.
    Window,
}

/// One training block.
///
/// The trainer encodes it as `[BOS if bos] + encode(text, no special tokens) + [EOS if eos]`;
/// `tokens` is exactly that length and never exceeds the cutoff.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Block {
    /// The block's text: whole sentences (or pieces of an over-long one), trimmed.
    pub text: String,
    /// Tokens as trained: the text's tokens plus BOS/EOS as flagged.
    pub tokens: usize,
    /// Byte ranges in the text given to [`chunk`](crate::chunk) (for files: the text
    /// [`read_text`](crate::read_text) returned) whose concatenation is `text`; today always
    /// exactly one range.
    pub ranges: Vec<Range<usize>>,
    /// Main, overlap or window block.
    pub kind: BlockKind,
    /// The block ends right before a hard cut.
    pub ends_at_hard_cut: bool,
    /// The trainer prepends BOS.
    pub bos: bool,
    /// The trainer appends EOS.
    pub eos: bool,
}

/// Counts describing one chunking run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Sentences found (before over-long ones were split).
    pub sentences: usize,
    /// Hard-cut markers found in the text.
    pub hard_cuts: usize,
    /// Main blocks (PRTS) or windows (DEMENTOR).
    pub blocks: usize,
    /// Overlap blocks (PRTS with overlap).
    pub overlap_blocks: usize,
    /// Tokens over all blocks, as trained.
    pub tokens: usize,
    /// Tokens of the longest block, as trained.
    pub longest_block: usize,
    /// Sentences longer than the cutoff that were split into pieces.
    pub pieces_split: usize,
    /// Pieces dropped: blocks of at most `min_chars` characters, and single characters
    /// (graphemes) longer than the cutoff on their own.
    pub pieces_dropped: usize,
    /// Characters in the dropped pieces.
    pub chars_dropped: usize,
    /// Blocks whose size was re-encoded whole because it could not be proven from sentence
    /// counts (non-additive counter, or joins without whitespace such as CJK).
    pub recounted_blocks: usize,
}

/// Blocks in output order (main blocks or windows in text order, then overlap blocks in text
/// order) and their summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunks {
    /// The blocks.
    pub blocks: Vec<Block>,
    /// Counts for reports.
    pub summary: Summary,
}
