//! Repeats one workload on the KJV sample so that `perf stat -e task-clock` can measure its CPU
//! time (MB per CPU-second does not depend on how loaded the machine is):
//!
//! ```text
//! cargo build --release -p prts-chunker --features tokenizers --example throughput
//! perf stat -e task-clock target/release/examples/throughput load 0
//! perf stat -e task-clock target/release/examples/throughput tokenizer-only 10
//! perf stat -e task-clock target/release/examples/throughput precise+overlap 10
//! perf stat -e task-clock target/release/examples/throughput dementor 10
//! ```
//!
//! `precise+overlap-recount` and `dementor-recount` run the slow path (every block re-encoded),
//! as for tokenizers whose counts do not add up at whitespace.
//!
//! MB/cpu-s = reps × MB / (task-clock of the workload − task-clock of `load 0`). The thread
//! count is rayon's (set `RAYON_NUM_THREADS`); the wall-clock figure is printed too. A third
//! argument replaces the SmolLM2 tokenizer.json.

use std::time::Instant;

use prts_chunker::{
    chunk, read_text, sentence_ranges, ChunkConfig, EosPlacement, Mode, TokenCounter,
};
use rayon::prelude::*;

/// The same tokenizer without the additivity promise: every block is re-encoded (the path
/// taken for Llama-3/Qwen2-style or SentencePiece tokenizers).
struct Plain<'a>(&'a tokenizers::Tokenizer);
impl TokenCounter for Plain<'_> {
    fn count(&self, text: &str) -> usize {
        self.0.count(text)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/");
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "precise+overlap".into());
    let reps: usize = args.next().map_or(Ok(10), |s| s.parse())?;
    let hard_cut = "\n\n\n";
    let text = read_text(format!("{data}kjv-books-1mb.txt").as_ref(), hard_cut)?;
    let tok_path = args
        .next()
        .unwrap_or_else(|| format!("{data}smollm2-tokenizer.json"));
    let tok = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| e.to_string())?;
    let cfg = ChunkConfig::new(256)
        .with_hard_cut(hard_cut)
        .with_eos(EosPlacement::HardCutOnly);
    let sentences: Vec<&str> = sentence_ranges(&text, hard_cut)
        .into_iter()
        .map(|r| &text[r])
        .collect();
    let t = Instant::now();
    let mut blocks = 0;
    for _ in 0..reps {
        blocks += match what.as_str() {
            "load" => 0,
            "tokenizer-only" => sentences
                .par_iter()
                .with_min_len(64)
                .map(|s| tok.count(s))
                .sum::<usize>(),
            "precise+overlap" => chunk(&text, &cfg.clone().with_overlap(true), &tok)?
                .blocks
                .len(),
            "precise+overlap-recount" => {
                chunk(&text, &cfg.clone().with_overlap(true), &Plain(&tok))?
                    .blocks
                    .len()
            }
            "dementor-recount" => {
                chunk(&text, &cfg.clone().with_mode(Mode::Dementor), &Plain(&tok))?
                    .blocks
                    .len()
            }
            "dementor" => chunk(&text, &cfg.clone().with_mode(Mode::Dementor), &tok)?
                .blocks
                .len(),
            other => return Err(format!("unknown workload {other:?}").into()),
        };
    }
    let secs = t.elapsed().as_secs_f64();
    let mb = (text.len() * reps) as f64 / 1e6;
    println!(
        "{what}: {reps} reps, {blocks} results, {:.2} MB/s wall on {} threads",
        mb / secs,
        rayon::current_num_threads()
    );
    Ok(())
}
