//! Block counts on the KJV sample at cutoff 256 with hard cut `\n\n\n`, to compare with the
//! original Training PRO (1,173 blocks, 925 overlap blocks, 3,591 DEMENTOR windows).
//!
//! Run from the repository root:
//! `cargo run --release -p prts-chunker --features tokenizers --example kjv_counts`
//! Optional arguments: TEXT TOKENIZER (default: the bundled sample and SmolLM2 tokenizer).

use std::time::Instant;

use prts_chunker::{
    chunk, read_text, sentence_ranges, BlockKind, ChunkConfig, EosPlacement, Mode, TokenCounter,
};

/// Best wall time of `reps` runs, in seconds.
fn best_of<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..reps {
        let t = Instant::now();
        out = Some(f());
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, out.expect("reps > 0"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/");
    let mut args = std::env::args().skip(1);
    let text_path = args
        .next()
        .unwrap_or_else(|| format!("{data}kjv-books-1mb.txt"));
    let tok_path = args
        .next()
        .unwrap_or_else(|| format!("{data}smollm2-tokenizer.json"));
    let hard_cut = "\n\n\n";
    let text = read_text(text_path.as_ref(), hard_cut)?;
    let tok =
        tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| format!("{tok_path}: {e}"))?;
    let mb = text.len() as f64 / 1e6;
    let sentences: Vec<&str> = sentence_ranges(&text, hard_cut)
        .into_iter()
        .map(|r| &text[r])
        .collect();
    let (base, _) = best_of(3, || sentences.iter().map(|s| tok.count(s)).sum::<usize>());
    println!(
        "tokenizer-only (same sentences, one by one, this thread): {:.2} MB/s",
        mb / base
    );
    let runs = [
        ("precise", Mode::Precise, false),
        ("precise+overlap", Mode::Precise, true),
        ("dementor", Mode::Dementor, false),
    ];
    for (name, mode, overlap) in runs {
        let cfg = ChunkConfig::new(256)
            .with_hard_cut(hard_cut)
            .with_mode(mode)
            .with_overlap(overlap)
            .with_eos(EosPlacement::None);
        let (secs, out) = best_of(3, || chunk(&text, &cfg, &tok));
        let out = out?;
        let s = &out.summary;
        let mean = s.tokens as f64 / out.blocks.len().max(1) as f64;
        let main_tokens: usize = out
            .blocks
            .iter()
            .filter(|b| b.kind != BlockKind::Overlap)
            .map(|b| b.tokens)
            .sum();
        println!(
            "{name:16} sentences {} blocks {} overlap {} tokens {} (main {main_tokens}) mean {mean:.1} \
             longest {} split {} dropped {} recounted {} | {:.2} MB/s ({:.2}x tokenizer-only)",
            s.sentences,
            s.blocks,
            s.overlap_blocks,
            s.tokens,
            s.longest_block,
            s.pieces_split,
            s.pieces_dropped,
            s.recounted_blocks,
            mb / secs,
            base / secs
        );
    }
    Ok(())
}
