//! The entry point: text in, blocks out.

use rayon::prelude::*;

use crate::pack::{Packer, Span};
use crate::{
    units, Block, BlockKind, ChunkConfig, ChunkError, Chunks, Mode, Summary, TokenCounter,
};

/// Cuts `text` into training blocks.
///
/// Sentences are counted once each, in parallel on the current rayon pool (install a
/// `rayon::ThreadPool` to choose the thread count); the result does not depend on it.
///
/// # Errors
/// [`ChunkError::Config`] for invalid settings, [`ChunkError::Counter`] when the counter
/// cannot count exactly (e.g. a truncating tokenizer), [`ChunkError::Cancelled`] when the
/// cancel flag was raised.
pub fn chunk(
    text: &str,
    cfg: &ChunkConfig,
    counter: &(impl TokenCounter + Sync),
) -> Result<Chunks, ChunkError> {
    cfg.validate()?;
    counter.check().map_err(ChunkError::Counter)?;
    let units = units::build(text, cfg, counter)?;
    let packer = Packer::new(text, &units, cfg, counter);
    let (primary, overlap, kind) = match cfg.mode {
        Mode::Precise => {
            let main = packer.main_blocks();
            cfg.check_cancel()?;
            let overlap = if cfg.overlap {
                // Only main blocks that are kept host an overlap block.
                let kept: Vec<Span> = main
                    .iter()
                    .filter(|s| text[packer.range(s.first, s.last)].chars().count() > cfg.min_chars)
                    .copied()
                    .collect();
                packer.overlap_blocks(&kept)
            } else {
                Vec::new()
            };
            (main, overlap, BlockKind::Main)
        }
        Mode::Dementor => (packer.windows(), Vec::new(), BlockKind::Window),
    };
    cfg.check_cancel()?;
    let mut summary = Summary {
        sentences: units.sentences,
        hard_cuts: units.sections.len() - 1,
        pieces_split: units.pieces_split,
        pieces_dropped: units.pieces_dropped,
        chars_dropped: units.chars_dropped,
        ..Summary::default()
    };
    let mut blocks = Vec::with_capacity(primary.len() + overlap.len());
    for (spans, kind) in [(primary, kind), (overlap, BlockKind::Overlap)] {
        let made: Vec<Block> = spans
            .par_iter()
            .map(|s| make_block(&packer, s, kind))
            .collect();
        for (block, span) in made.into_iter().zip(&spans) {
            summary.recounted_blocks += usize::from(span.recounted);
            let chars = block.text.chars().count();
            if chars <= cfg.min_chars {
                // Overlap blocks repeat text held by main blocks: dropping one loses nothing.
                if kind != BlockKind::Overlap {
                    summary.pieces_dropped += 1;
                    summary.chars_dropped += chars;
                }
                continue;
            }
            match kind {
                BlockKind::Overlap => summary.overlap_blocks += 1,
                _ => summary.blocks += 1,
            }
            summary.tokens += block.tokens;
            summary.longest_block = summary.longest_block.max(block.tokens);
            blocks.push(block);
        }
    }
    Ok(Chunks { blocks, summary })
}

fn make_block<C: TokenCounter + Sync>(packer: &Packer<'_, C>, s: &Span, kind: BlockKind) -> Block {
    let range = packer.range(s.first, s.last);
    let eos = packer.eos(s.last);
    Block {
        text: packer.text[range.clone()].to_owned(),
        tokens: s.text_tokens + packer.cfg.specials(eos),
        ranges: vec![range],
        kind,
        ends_at_hard_cut: packer.ends_at_hard_cut(s.last),
        bos: packer.cfg.bos,
        eos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EosPlacement, WhitespaceCounter};
    use proptest::prelude::*;

    /// A counter that is not additive: words plus one token per 16 bytes, so a joined block
    /// can count more than its parts. Exercises the re-encode-and-shrink path.
    struct Lumpy;
    impl TokenCounter for Lumpy {
        fn count(&self, text: &str) -> usize {
            text.split_whitespace().count() + text.len() / 16
        }
    }

    /// A Llama-3-like counter: one token per run of non-whitespace (punctuation-ending runs
    /// take the line breaks after them, like ` ?[^\s\p{L}\p{N}]+[\r\n]*`), per run of line
    /// breaks, and per run of other whitespace.
    struct Glue;
    impl TokenCounter for Glue {
        fn count(&self, text: &str) -> usize {
            let b = text.as_bytes();
            let (mut i, mut n) = (0, 0);
            let nl = |c: u8| c == b'\r' || c == b'\n';
            while i < b.len() {
                let start = i;
                if !b[i].is_ascii_whitespace() {
                    while i < b.len() && !b[i].is_ascii_whitespace() {
                        i += 1;
                    }
                    if !b[i - 1].is_ascii_alphanumeric() {
                        while i < b.len() && nl(b[i]) {
                            i += 1;
                        }
                    }
                } else if nl(b[i]) {
                    while i < b.len() && nl(b[i]) {
                        i += 1;
                    }
                } else {
                    while i < b.len() && b[i].is_ascii_whitespace() && !nl(b[i]) {
                        i += 1;
                    }
                }
                n += usize::from(i > start);
            }
            n
        }
        fn additivity(&self) -> crate::Additivity {
            crate::Additivity::PunctuationTakesLineBreaks
        }
    }

    fn count_as_trained(b: &Block, c: &impl TokenCounter) -> usize {
        usize::from(b.bos) + c.count(&b.text) + usize::from(b.eos)
    }

    fn markers(text: &str, hc: &str) -> Vec<usize> {
        if hc.is_empty() {
            return Vec::new();
        }
        text.match_indices(hc).map(|(i, _)| i).collect()
    }

    /// Checks every invariant of spec §7 (P1-P6, D1-D2) and "no text lost".
    fn check(
        text: &str,
        cfg: &ChunkConfig,
        counter: &(impl TokenCounter + Sync),
    ) -> Result<(), TestCaseError> {
        let out = chunk(text, cfg, counter).unwrap();
        prop_assert_eq!(
            &out,
            &chunk(text, cfg, counter).unwrap(),
            "P6: deterministic"
        );
        let hc = cfg.hard_cut();
        let marks = markers(text, hc);
        let in_marker = |i: usize| marks.iter().any(|&m| i >= m && i < m + hc.len());
        let section_of = |i: usize| marks.iter().filter(|&&m| m < i).count();
        for b in &out.blocks {
            let r = b.ranges[0].clone();
            prop_assert_eq!(b.ranges.len(), 1);
            prop_assert_eq!(&text[r.clone()], b.text.as_str());
            prop_assert!(
                !b.text.is_empty() && b.text.trim() == b.text,
                "P4: trimmed, non-empty"
            );
            prop_assert!(b.text.chars().count() > cfg.min_chars, "P4: min_chars");
            prop_assert_eq!(
                b.tokens,
                count_as_trained(b, counter),
                "tokens are exact: {:?}",
                b.text
            );
            prop_assert!(b.tokens <= cfg.cutoff(), "over cutoff: {:?}", b);
            prop_assert!(
                !marks.iter().any(|&m| m + hc.len() > r.start && m < r.end),
                "crosses a hard cut: {:?}",
                b
            );
            let ws_then_hc = marks
                .iter()
                .any(|&m| m >= r.end && text[r.end..m].trim().is_empty());
            prop_assert_eq!(b.ends_at_hard_cut, ws_then_hc);
            let want_eos = match cfg.eos {
                EosPlacement::EveryBlock => true,
                EosPlacement::HardCutOnly => b.ends_at_hard_cut,
                EosPlacement::None => false,
            };
            prop_assert_eq!(b.eos, want_eos, "P5");
            prop_assert_eq!(b.bos, cfg.bos);
        }
        let main: Vec<&Block> = out
            .blocks
            .iter()
            .filter(|b| b.kind != BlockKind::Overlap)
            .collect();
        // P1 / D1: text order, strictly increasing ends.
        for w in main.windows(2) {
            prop_assert!(w[0].ranges[0].end < w[1].ranges[0].end);
            if cfg.mode == Mode::Precise {
                prop_assert!(w[0].ranges[0].end <= w[1].ranges[0].start, "P1: disjoint");
            }
        }
        // No text lost: every non-whitespace byte outside hard-cut markers is in a main block
        // or window, except what the summary reports as dropped.
        let mut lost = 0;
        for (i, c) in text.char_indices() {
            if !c.is_whitespace() && !in_marker(i) && !main.iter().any(|b| b.ranges[0].contains(&i))
            {
                lost += 1;
            }
        }
        prop_assert!(
            lost <= out.summary.chars_dropped,
            "lost {} chars, reported {}",
            lost,
            out.summary.chars_dropped
        );
        if cfg.min_chars == 0 {
            prop_assert_eq!(out.summary.pieces_dropped, 0);
        }
        // P3: overlap blocks start strictly inside a main block, run past its end, stay in one
        // section and equal no main block.
        for o in out.blocks.iter().filter(|b| b.kind == BlockKind::Overlap) {
            let r = &o.ranges[0];
            let host = main
                .iter()
                .find(|m| m.ranges[0].start < r.start && r.start < m.ranges[0].end);
            prop_assert!(
                host.is_some(),
                "P3: overlap not inside a main block: {:?}",
                o
            );
            prop_assert!(host.unwrap().ranges[0].end < r.end);
            prop_assert_eq!(section_of(r.start), section_of(r.end));
            prop_assert!(!main.iter().any(|m| m.text == o.text));
        }
        // D2: windows are distinct (strictly increasing ends imply no proper suffix duplicates).
        let s = &out.summary;
        prop_assert_eq!(s.blocks + s.overlap_blocks, out.blocks.len());
        prop_assert_eq!(s.tokens, out.blocks.iter().map(|b| b.tokens).sum::<usize>());
        prop_assert_eq!(s.hard_cuts, marks.len());
        Ok(())
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                6 => "[A-Za-z]{1,7}",
                2 => "[A-Z][a-z]{0,6}",
                4 => Just(" ".to_owned()),
                2 => Just(". ".to_owned()),
                1 => "[.!?]",
                1 => Just("\n".to_owned()),
                1 => Just("\n\n\n".to_owned()),
                1 => Just("|".to_owned()),
                1 => "[。？é]",
                1 => Just("Mr. ".to_owned()),
                1 => Just("3.14 ".to_owned()),
                1 => "[a-z]{20,90}",
            ],
            0..250,
        )
        .prop_map(|v| v.concat())
    }

    fn cfg_strategy() -> impl Strategy<Value = ChunkConfig> {
        (
            10usize..48,
            prop_oneof![Just(""), Just("\n\n\n"), Just("|")],
            any::<bool>(),
            prop_oneof![Just(Mode::Precise), Just(Mode::Dementor)],
            prop_oneof![
                Just(EosPlacement::EveryBlock),
                Just(EosPlacement::HardCutOnly),
                Just(EosPlacement::None)
            ],
            any::<bool>(),
            prop_oneof![3 => Just(0usize), 1 => 0usize..12, 1 => 0usize..60],
        )
            .prop_map(|(cutoff, hc, overlap, mode, eos, bos, min_chars)| {
                ChunkConfig::new(cutoff)
                    .with_hard_cut(hc)
                    .with_overlap(overlap)
                    .with_mode(mode)
                    .with_eos(eos)
                    .with_bos(bos)
                    .with_min_chars(min_chars)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn invariants_additive_counter(text in text_strategy(), cfg in cfg_strategy()) {
            check(&text, &cfg, &WhitespaceCounter)?;
        }

        #[test]
        fn invariants_line_break_counter(text in text_strategy(), cfg in cfg_strategy()) {
            check(&text, &cfg, &Glue)?;
        }

        #[test]
        fn invariants_non_additive_counter(text in text_strategy(), cfg in cfg_strategy()) {
            check(&text, &cfg, &Lumpy)?;
        }
    }

    #[test]
    fn underestimated_blocks_are_shrunk_until_they_fit() {
        // Lumpy counts "Abcdefghi." as 1 token alone and with its space, but ten of them
        // joined as 10 + 109 / 16 = 16: the planned blocks are over and must shrink.
        let text = "Abcdefghi. ".repeat(40);
        let cfg = ChunkConfig::new(10)
            .with_eos(EosPlacement::None)
            .with_overlap(true);
        let out = chunk(&text, &cfg, &Lumpy).unwrap();
        assert!(out.summary.recounted_blocks > 0);
        for b in &out.blocks {
            assert_eq!(b.tokens, Lumpy.count(&b.text));
            assert!(b.tokens <= 10, "{b:?}");
        }
        let main: String = out
            .blocks
            .iter()
            .filter(|b| b.kind == BlockKind::Main)
            .map(|b| format!("{} ", b.text))
            .collect();
        assert_eq!(
            main, text,
            "the repaired blocks still cover the text in order"
        );
    }

    #[test]
    fn line_break_counter_takes_the_exact_fast_path() {
        let text = "One two. Three four.\nFive six! Seven,\nEight.\r\n\n  Nine ten. End\n";
        let cfg = ChunkConfig::new(10)
            .with_eos(EosPlacement::None)
            .with_overlap(true);
        let out = chunk(text, &cfg, &Glue).unwrap();
        assert_eq!(out.summary.recounted_blocks, 0);
        assert!(out.blocks.len() > 2);
        for b in &out.blocks {
            assert_eq!(b.tokens, Glue.count(&b.text), "{b:?}");
        }
    }

    #[test]
    fn overlap_bridges_blocks() {
        let text = "A b. C d. E f. G h. I j. K l. M n. O p.";
        let cfg = ChunkConfig::new(8)
            .with_eos(EosPlacement::None)
            .with_overlap(true);
        let out = chunk(text, &cfg, &WhitespaceCounter).unwrap();
        let texts: Vec<(&str, BlockKind)> = out
            .blocks
            .iter()
            .map(|b| (b.text.as_str(), b.kind))
            .collect();
        assert_eq!(
            texts,
            [
                ("A b. C d. E f. G h.", BlockKind::Main),
                ("I j. K l. M n. O p.", BlockKind::Main),
                // Half of 8 is 4: "A b." is the last sentence under half, so the overlap starts
                // at "C d." (the original started at "A b." and duplicated the main block).
                ("C d. E f. G h. I j.", BlockKind::Overlap),
            ]
        );
    }

    #[test]
    fn dementor_has_no_tail_oversampling() {
        let text = "A b. C d. E f. G h. I j.";
        let cfg = ChunkConfig::new(8)
            .with_eos(EosPlacement::None)
            .with_mode(Mode::Dementor);
        let out = chunk(text, &cfg, &WhitespaceCounter).unwrap();
        let texts: Vec<&str> = out.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(texts, ["A b. C d. E f. G h.", "C d. E f. G h. I j."]);
    }

    #[test]
    fn thread_count_does_not_change_output() {
        let text = "Some words here. And more words there. ".repeat(300);
        let cfg = ChunkConfig::new(24).with_overlap(true);
        let run = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
                .install(|| chunk(&text, &cfg, &Lumpy).unwrap())
        };
        assert_eq!(run(1), run(2));
    }

    #[test]
    fn cancel_flag_stops() {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cfg = ChunkConfig::new(16).with_cancel(flag);
        assert!(matches!(
            chunk("a. b.", &cfg, &WhitespaceCounter),
            Err(ChunkError::Cancelled)
        ));
    }
}
