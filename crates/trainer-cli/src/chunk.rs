//! `trainer-cli chunk`: run the PRTS chunker on a file or folder and write the
//! blocks as JSON Lines, with a human summary on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use prts_chunker::{chunk, read_text, Block, BlockKind};
use serde::Serialize;
use trainer_core::job::slicing_summary;

use crate::fsutil::write_atomic;
use crate::settings::{Settings, SliceFlags};

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
    pub slicing: SliceFlags,
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

/// Runs `trainer-cli chunk`.
pub fn run(args: &ChunkArgs) -> Result<ExitCode> {
    let mut settings = Settings::default();
    args.slicing.apply_to(&mut settings);
    let options = settings.data_options();
    let cfg = options.chunk_config();
    let tokenizer = load_tokenizer_file(&args.tokenizer)?;
    let text = read_text(&args.text, &options.hard_cut)?;
    let chunks = chunk(&text, &cfg, &tokenizer)
        .with_context(|| format!("cannot chunk {}", args.text.display()))?;
    if let Some(out) = &args.out {
        write_atomic(out, blocks_jsonl(&chunks.blocks)?.as_bytes())?;
    }
    eprintln!("{}", slicing_summary(&chunks, text.len(), options.cutoff));
    if let Some(out) = &args.out {
        eprintln!("wrote {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}
