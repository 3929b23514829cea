//! Arbitrary bytes and settings into the chunker: no panic, and the block invariants hold
//! (exact sizes within the cutoff, no hard cut crossed, no text lost, overlap rules).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use prts_chunker::{
    chunk, Additivity, BlockKind, ChunkConfig, EosPlacement, Mode, TokenCounter, WhitespaceCounter,
};

#[derive(Debug, Arbitrary)]
struct Input {
    cutoff: u16,
    hard_cut: u8,
    overlap: bool,
    dementor: bool,
    eos: u8,
    bos: bool,
    min_chars: u8,
    counter: u8,
    text: Vec<u8>,
}

/// Llama-3-like: one token per run of non-whitespace (punctuation-ending runs take the line
/// breaks after them), per run of line breaks, per run of other whitespace.
struct Glue;
impl TokenCounter for Glue {
    fn count(&self, text: &str) -> usize {
        let mut n = 0;
        let mut chars = text.chars().peekable();
        let nl = |c: char| c == '\r' || c == '\n';
        while let Some(c) = chars.next() {
            n += 1;
            if !c.is_whitespace() {
                let mut last = c;
                while let Some(&d) = chars.peek().filter(|d| !d.is_whitespace()) {
                    last = d;
                    chars.next();
                }
                if !last.is_ascii_alphanumeric() {
                    while chars.next_if(|&d| nl(d)).is_some() {}
                }
            } else if nl(c) {
                while chars.next_if(|&d| nl(d)).is_some() {}
            } else {
                while chars.next_if(|&d| d.is_whitespace() && !nl(d)).is_some() {}
            }
        }
        n
    }
    fn additivity(&self) -> Additivity {
        Additivity::PunctuationTakesLineBreaks
    }
}

/// Not additive: words plus one token per 16 bytes (joined text can count more than parts).
struct Lumpy;
impl TokenCounter for Lumpy {
    fn count(&self, text: &str) -> usize {
        text.split_whitespace().count() + text.len() / 16
    }
}

const HARD_CUTS: [&str; 4] = ["", "\n\n\n", "|", "ab"];

fuzz_target!(|input: Input| {
    let text = String::from_utf8_lossy(&input.text);
    let hc = HARD_CUTS[usize::from(input.hard_cut) % HARD_CUTS.len()];
    let cfg = ChunkConfig::new(usize::from(input.cutoff % 512))
        .with_hard_cut(hc)
        .with_overlap(input.overlap)
        .with_mode(if input.dementor {
            Mode::Dementor
        } else {
            Mode::Precise
        })
        .with_eos(match input.eos % 3 {
            0 => EosPlacement::EveryBlock,
            1 => EosPlacement::HardCutOnly,
            _ => EosPlacement::None,
        })
        .with_bos(input.bos)
        .with_min_chars(usize::from(input.min_chars % 16));
    match input.counter % 3 {
        0 => check(&text, &cfg, hc, &WhitespaceCounter),
        1 => check(&text, &cfg, hc, &Lumpy),
        _ => check(&text, &cfg, hc, &Glue),
    }
});

fn check(text: &str, cfg: &ChunkConfig, hc: &str, counter: &(impl TokenCounter + Sync)) {
    let Ok(out) = chunk(text, cfg, counter) else {
        assert!(cfg.validate().is_err(), "only invalid settings may fail");
        return;
    };
    let marks: Vec<usize> = if hc.is_empty() {
        Vec::new()
    } else {
        text.match_indices(hc).map(|(i, _)| i).collect()
    };
    let mut covered = vec![false; text.len()];
    for b in &out.blocks {
        let r = b.ranges[0].clone();
        assert_eq!(&text[r.clone()], b.text);
        assert_eq!(
            b.tokens,
            usize::from(b.bos) + counter.count(&b.text) + usize::from(b.eos)
        );
        assert!(b.tokens <= cfg.cutoff());
        assert!(!b.text.is_empty() && b.text.trim() == b.text);
        assert!(
            !marks.iter().any(|&m| m + hc.len() > r.start && m < r.end),
            "hard cut crossed"
        );
        if b.kind != BlockKind::Overlap {
            covered[r].iter_mut().for_each(|c| *c = true);
        }
    }
    for o in out.blocks.iter().filter(|b| b.kind == BlockKind::Overlap) {
        let r = &o.ranges[0];
        let host = out.blocks.iter().find(|m| {
            m.kind == BlockKind::Main && m.ranges[0].start < r.start && r.start < m.ranges[0].end
        });
        assert!(
            host.is_some_and(|m| m.ranges[0].end < r.end),
            "overlap must start inside a main block and run past it"
        );
    }
    let lost = text
        .char_indices()
        .filter(|&(i, c)| {
            !c.is_whitespace() && !covered[i] && !marks.iter().any(|&m| i >= m && i < m + hc.len())
        })
        .count();
    assert!(
        lost <= out.summary.chars_dropped,
        "lost {lost} chars, reported {}",
        out.summary.chars_dropped
    );
}
