//! `trainer-cli chunk`: run the PRTS chunker on a file or folder and write the
//! blocks as JSON Lines, with a human summary on stderr.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use prts_chunker::{chunk, read_text, unescape_hard_cut, Block, BlockKind, ChunkConfig, Chunks};
use prts_chunker::{EosPlacement, Mode};
use serde::Serialize;

use crate::fsutil::write_atomic;

/// Slicing mode.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Sentence-aligned blocks filled up to the cutoff (PRTS), optional overlap blocks.
    Precise,
    /// Sliding window, one sentence stride (long-form memorisation).
    Dementor,
}

/// Where EOS goes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EosArg {
    /// After every block.
    EveryBlock,
    /// Only after blocks that end at a hard cut (or the end of the text).
    HardCut,
    /// Never.
    None,
}

/// Chunking settings of `trainer-cli chunk` (`train` has the same ones as settings).
#[derive(Debug, Clone, Args)]
pub struct ChunkOpts {
    /// Maximum tokens per block, as trained (BOS/EOS included).
    #[arg(long, default_value_t = 256)]
    pub cutoff: usize,
    /// Hard-cut string: blocks never cross it. Backslash escapes \n and \t are understood; "" disables it.
    #[arg(long, default_value = "\\n\\n\\n")]
    pub hard_cut: String,
    /// Add overlap blocks between neighbouring blocks (precise mode).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub overlap: bool,
    /// Slicing mode.
    #[arg(long, value_enum, default_value_t = ModeArg::Precise)]
    pub mode: ModeArg,
    /// EOS placement.
    #[arg(long, value_enum, default_value_t = EosArg::EveryBlock)]
    pub eos: EosArg,
    /// Start every block with BOS (true/false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub bos: bool,
    /// Drop blocks of at most this many characters, outer whitespace not counted (counted and reported).
    #[arg(long, default_value_t = 0)]
    pub min_chars: usize,
}

impl ChunkOpts {
    /// The chunker configuration these options describe.
    pub fn config(&self) -> ChunkConfig {
        let mode = match self.mode {
            ModeArg::Precise => Mode::Precise,
            ModeArg::Dementor => Mode::Dementor,
        };
        let eos = match self.eos {
            EosArg::EveryBlock => EosPlacement::EveryBlock,
            EosArg::HardCut => EosPlacement::HardCutOnly,
            EosArg::None => EosPlacement::None,
        };
        ChunkConfig::new(self.cutoff)
            .with_hard_cut(&unescape_hard_cut(&self.hard_cut))
            .with_overlap(self.overlap)
            .with_mode(mode)
            .with_eos(eos)
            .with_bos(self.bos)
            .with_min_chars(self.min_chars)
    }
}

/// Arguments of `trainer-cli chunk`.
#[derive(Debug, Args)]
pub struct ChunkArgs {
    /// A text file, or a folder of .txt files (recursive, natural order, joined with the hard cut).
    #[arg(long)]
    pub text: PathBuf,
    /// The tokenizer that counts tokens (a Hugging Face tokenizer.json).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Write the blocks here, one JSON object per line.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub opts: ChunkOpts,
}

#[derive(Serialize)]
struct BlockLine<'a> {
    index: usize,
    kind: &'static str,
    tokens: usize,
    bos: bool,
    eos: bool,
    ends_at_hard_cut: bool,
    ranges: Vec<[usize; 2]>,
    text: &'a str,
}

fn kind_name(kind: BlockKind) -> &'static str {
    match kind {
        BlockKind::Main => "main",
        BlockKind::Overlap => "overlap",
        BlockKind::Window => "window",
    }
}

/// Loads a `tokenizer.json`, with an error that names the file.
pub fn load_tokenizer_file(path: &std::path::Path) -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot load tokenizer {}: {e} (give a Hugging Face tokenizer.json)",
            path.display()
        )
    })
}

/// Renders the blocks as JSON Lines.
pub fn blocks_jsonl(blocks: &[Block]) -> Result<String> {
    let mut out = String::new();
    for (index, b) in blocks.iter().enumerate() {
        let line = BlockLine {
            index,
            kind: kind_name(b.kind),
            tokens: b.tokens,
            bos: b.bos,
            eos: b.eos,
            ends_at_hard_cut: b.ends_at_hard_cut,
            ranges: b.ranges.iter().map(|r| [r.start, r.end]).collect(),
            text: &b.text,
        };
        out.push_str(&serde_json::to_string(&line)?);
        out.push('\n');
    }
    Ok(out)
}

/// A human summary of a chunking run.
pub fn summary_text(chunks: &Chunks, bytes: usize, cutoff: usize) -> String {
    let s = &chunks.summary;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "input:          {bytes} bytes, {} sentences",
        s.sentences
    );
    let _ = writeln!(
        out,
        "blocks:         {} ({} main/window + {} overlap)",
        chunks.blocks.len(),
        s.blocks,
        s.overlap_blocks
    );
    let _ = writeln!(
        out,
        "tokens:         {} (as trained, BOS/EOS included)",
        s.tokens
    );
    let _ = writeln!(
        out,
        "longest block:  {} tokens (cutoff {cutoff})",
        s.longest_block
    );
    let _ = writeln!(
        out,
        "pieces split:   {} (sentences longer than the cutoff)",
        s.pieces_split
    );
    let _ = write!(
        out,
        "pieces dropped: {} ({} chars, under --min-chars)",
        s.pieces_dropped, s.chars_dropped
    );
    out
}

/// Runs `trainer-cli chunk`.
pub fn run(args: &ChunkArgs) -> Result<ExitCode> {
    let cfg = args.opts.config();
    let tokenizer = load_tokenizer_file(&args.tokenizer)?;
    let hard_cut = unescape_hard_cut(&args.opts.hard_cut);
    let text = read_text(&args.text, &hard_cut)?;
    let chunks = chunk(&text, &cfg, &tokenizer)
        .with_context(|| format!("cannot chunk {}", args.text.display()))?;
    if let Some(out) = &args.out {
        write_atomic(out, blocks_jsonl(&chunks.blocks)?.as_bytes())?;
    }
    eprintln!("{}", summary_text(&chunks, text.len(), args.opts.cutoff));
    if let Some(out) = &args.out {
        eprintln!("wrote {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}
