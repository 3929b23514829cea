//! Chunker throughput on the KJV sample (~1 MB) with the SmolLM2 tokenizer, next to a
//! tokenizer-only baseline that encodes the same sentences one by one, on 1 and 2 threads.
//!
//! `cargo bench -p benches --bench chunker` (figures in MB/s; see docs/chunker.md).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prts_chunker::{
    chunk, read_text, sentence_ranges, ChunkConfig, EosPlacement, Mode, TokenCounter,
};
use rayon::prelude::*;
use tokenizers::Tokenizer;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/");
const HARD_CUT: &str = "\n\n\n";

fn chunker(c: &mut Criterion) {
    let text =
        read_text(format!("{DATA}kjv-books-1mb.txt").as_ref(), HARD_CUT).expect("KJV sample");
    let tok =
        Tokenizer::from_file(format!("{DATA}smollm2-tokenizer.json")).expect("SmolLM2 tokenizer");
    let sentences: Vec<&str> = sentence_ranges(&text, HARD_CUT)
        .into_iter()
        .map(|r| &text[r])
        .collect();
    let cfg = ChunkConfig::new(256)
        .with_hard_cut(HARD_CUT)
        .with_eos(EosPlacement::HardCutOnly);
    let precise = cfg.clone().with_overlap(true);
    let dementor = cfg.with_mode(Mode::Dementor);

    let mut group = c.benchmark_group("chunker");
    group.throughput(Throughput::BytesDecimal(text.len() as u64));
    group.sample_size(10);
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        group.bench_function(format!("tokenizer-only/{threads}t"), |b| {
            b.iter(|| {
                pool.install(|| {
                    sentences
                        .par_iter()
                        .with_min_len(64)
                        .map(|s| tok.count(s))
                        .sum::<usize>()
                })
            });
        });
        group.bench_function(format!("precise+overlap/{threads}t"), |b| {
            b.iter(|| pool.install(|| chunk(black_box(&text), &precise, &tok).expect("chunk")));
        });
        group.bench_function(format!("dementor/{threads}t"), |b| {
            b.iter(|| pool.install(|| chunk(black_box(&text), &dementor, &tok).expect("chunk")));
        });
    }
    group.finish();
}

criterion_group!(benches, chunker);
criterion_main!(benches);
