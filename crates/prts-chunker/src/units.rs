//! Counting units: sentences with their token counts, over-long sentences split into pieces.

use std::collections::HashMap;
use std::ops::Range;

use rayon::prelude::*;
mod split;

use crate::sentences::{self, Section, Sentence};
use crate::{Additivity, ChunkConfig, ChunkError, TokenCounter};
use split::{prefix_over_budget, split_long, Split};

/// A packable unit of text: a sentence, or a piece of a sentence too long for one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unit {
    /// First byte, leading whitespace included (`start..core.start` is whitespace).
    pub start: usize,
    /// The unit without surrounding whitespace.
    pub core: Range<usize>,
    /// End of the unit: `core.end`, plus the line breaks right after it for
    /// [`Additivity::PunctuationTakesLineBreaks`] (moved from the next unit's whitespace).
    pub end: usize,
    /// Index of its hard-cut section.
    pub section: usize,
    /// Tokens of `core.start..end`: its size as the first unit of a block.
    pub c0: usize,
    /// Tokens of `start..end`: its size after a previous unit (exact when `joins`).
    pub c1: usize,
    /// For a unit with line breaks after its core: tokens of its last word with and without
    /// them. A block ending with this unit (trimmed) has `.. + tail.1 - tail.0` tokens.
    pub tail: (usize, usize),
    /// `count(prev + this) == count(prev) + c1` is guaranteed by the counter's
    /// [`Additivity`]. Otherwise blocks containing this join are re-encoded.
    pub joins: bool,
}

/// The text cut into sections and units, ready for packing.
#[derive(Debug)]
pub(crate) struct Units {
    pub sections: Vec<Section>,
    /// Unit index range of each section.
    pub section_units: Vec<Range<usize>>,
    pub units: Vec<Unit>,
    pub sentences: usize,
    pub pieces_split: usize,
    pub pieces_dropped: usize,
    pub chars_dropped: usize,
}

/// A sentence with its section and end (see [`Unit::end`]).
#[derive(Debug, Clone)]
struct Sent {
    section: usize,
    start: usize,
    core: Range<usize>,
    end: usize,
}

/// Parallel work is handed to rayon in batches of this many sentences.
const BATCH: usize = 64;

/// Splits and counts. Every sentence is encoded once (plus a few tiny encodes of its first
/// and last words on the additive paths, each distinct string once); only over-long
/// sentences are encoded more, in pieces (a long one is found over-long from a prefix with
/// additive counters, see [`prefix_over_budget`], and never encoded whole).
pub(crate) fn build(
    text: &str,
    cfg: &ChunkConfig,
    counter: &(impl TokenCounter + Sync),
) -> Result<Units, ChunkError> {
    let additivity = counter.additivity();
    let sections = sentences::sections(text, &cfg.hard_cut);
    let mut sents: Vec<Sent> = Vec::new();
    for (k, sec) in sections.iter().enumerate() {
        sents.extend(
            sentences::split(text, sec.range.clone())
                .into_iter()
                .map(|s| sent(k, s)),
        );
    }
    if additivity.moves_line_breaks() {
        // The line breaks after a sentence join its last piece (`.\n`): end it after them.
        for k in 1..sents.len() {
            if sents[k].section == sents[k - 1].section {
                let start = sents[k].start;
                let run = text[start..sents[k].core.start]
                    .bytes()
                    .take_while(|b| matches!(b, b'\r' | b'\n'))
                    .count();
                sents[k - 1].end = start + run;
                sents[k].start = start + run;
            }
        }
    }
    cfg.check_cancel()?;
    // A unit alone must fit with BOS and (at worst) EOS.
    let budget = cfg.cutoff - cfg.specials(cfg.eos != crate::EosPlacement::None);
    let over: Vec<bool> = sents
        .par_iter()
        .map(|s| prefix_over_budget(text, s, budget, counter, additivity))
        .collect();
    let counts = count_sentences(text, &sents, &over, cfg, counter, additivity);
    cfg.check_cancel()?;
    let mut pieces: Vec<Option<Split>> = sents
        .par_iter()
        .zip(&counts)
        .zip(&over)
        .map(|((s, c), &over)| {
            let alone = c.c0.saturating_add(c.tail.1).saturating_sub(c.tail.0);
            (over || alone > budget).then(|| split_long(text, s, budget, counter))
        })
        .collect();
    let mut out = Units {
        section_units: Vec::with_capacity(sections.len()),
        sections,
        units: Vec::with_capacity(sents.len()),
        sentences: sents.len(),
        pieces_split: 0,
        pieces_dropped: 0,
        chars_dropped: 0,
    };
    let mut next = 0;
    for k in 0..out.sections.len() {
        let first = out.units.len();
        while next < sents.len() && sents[next].section == k {
            let s = &sents[next];
            if let Some(split) = pieces[next].take() {
                out.pieces_split += 1;
                out.pieces_dropped += split.dropped;
                out.chars_dropped += split.chars_dropped;
                out.units.extend(split.units);
            } else {
                let c = &counts[next];
                out.units.push(Unit {
                    start: s.start,
                    core: s.core.clone(),
                    end: s.end,
                    section: k,
                    c0: c.c0,
                    c1: c.c1,
                    tail: c.tail,
                    joins: false,
                });
            }
            next += 1;
        }
        out.section_units.push(first..out.units.len());
    }
    for i in 1..out.units.len() {
        let (prev, unit) = (&out.units[i - 1], &out.units[i]);
        let joins = prev.section == unit.section
            && prev.end == unit.start
            && match (
                text[..unit.start].chars().next_back(),
                text[unit.start..].chars().next(),
            ) {
                (Some(l), Some(r)) => additivity.joins(l, r, prev.end > prev.core.end),
                _ => false,
            };
        out.units[i].joins = joins;
    }
    Ok(out)
}

fn sent(section: usize, s: Sentence) -> Sent {
    Sent {
        section,
        start: s.start,
        end: s.core.end,
        core: s.core,
    }
}

/// Token counts of one sentence (see [`Unit`]).
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    c0: usize,
    c1: usize,
    tail: (usize, usize),
}

/// How `c0` of a sentence is obtained on the additive path.
#[derive(Debug, Clone, Copy)]
enum C0 {
    /// No leading whitespace: `c0 == c1`.
    SameAsC1,
    /// `c1 - count(lead + w1) + count(w1)` (indices into the short strings).
    FirstWord(usize, usize),
    /// Counted directly (index into the short strings).
    Direct(usize),
}

/// Counts of every sentence.
///
/// Additive counters: `c1` needs one encode per sentence, and
/// `c0 = c1 - count(lead + w1) + count(w1)` where `w1` is the first word, because
/// `count(lead + w1 + rest) = count(lead + w1) + count(rest)` and
/// `count(w1 + rest) = count(w1) + count(rest)` when the join before `rest` is additive. The
/// tail correction likewise only encodes the last word with and without its line breaks.
/// These short strings repeat a lot ("And", " The"), so each distinct one is encoded once.
/// Other counters: two encodes per sentence. Sentences marked `over` (see
/// [`prefix_over_budget`]) are not encoded and get zero counts.
fn count_sentences(
    text: &str,
    sents: &[Sent],
    over: &[bool],
    cfg: &ChunkConfig,
    counter: &(impl TokenCounter + Sync),
    additivity: Additivity,
) -> Vec<Counts> {
    let count = |t: &str| {
        if cfg.check_cancel().is_err() {
            0 // the caller checks the flag again and returns `Cancelled`
        } else {
            counter.count(t)
        }
    };
    debug_assert!(additivity != Additivity::None || !over.contains(&true));
    if additivity == Additivity::None {
        return sents
            .par_iter()
            .with_min_len(BATCH)
            .map(|s| {
                let c0 = count(&text[s.core.clone()]);
                let c1 = if s.start < s.core.start {
                    count(&text[s.start..s.end])
                } else {
                    c0
                };
                Counts {
                    c0,
                    c1,
                    tail: (0, 0),
                }
            })
            .collect();
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut small: Vec<&str> = Vec::new();
    let mut keys: Vec<(C0, Option<(usize, usize)>)> = Vec::with_capacity(sents.len());
    let joins_at = |s: &str, at: usize| match (s[..at].chars().next_back(), s[at..].chars().next())
    {
        (Some(l), Some(r)) => additivity.joins(l, r, false),
        _ => false,
    };
    for s in sents {
        let core = &text[s.core.clone()];
        let mut intern = |t| {
            *index.entry(t).or_insert_with(|| {
                small.push(t);
                small.len() - 1
            })
        };
        let c0 = match core.find(char::is_whitespace) {
            _ if s.start == s.core.start => C0::SameAsC1,
            Some(w) if joins_at(core, w) => {
                C0::FirstWord(intern(&text[s.start..s.core.start + w]), intern(&core[..w]))
            }
            _ => C0::Direct(intern(&text[s.core.start..s.end])),
        };
        let tail = (s.end > s.core.end).then(|| {
            // The last word with its line breaks, from the whitespace before it.
            let before = core
                .trim_end_matches(|c: char| !c.is_whitespace())
                .trim_end()
                .len();
            let from = if before > 0 && joins_at(core, before) {
                s.core.start + before
            } else {
                s.core.start
            };
            (intern(&text[from..s.end]), intern(&text[from..s.core.end]))
        });
        keys.push((c0, tail));
    }
    let full: Vec<usize> = sents
        .par_iter()
        .zip(over)
        .with_min_len(BATCH)
        .map(|(s, &over)| {
            if over {
                0
            } else {
                count(&text[s.start..s.end])
            }
        })
        .collect();
    let small: Vec<usize> = small
        .par_iter()
        .with_min_len(BATCH)
        .map(|t| count(t))
        .collect();
    sents
        .iter()
        .zip(full)
        .zip(keys)
        .zip(over)
        .map(|(((s, c1), (c0, tail)), &over)| {
            if over {
                // Split by the caller, which counts the pieces.
                return Counts::default();
            }
            let c0 = match c0 {
                C0::SameAsC1 => c1,
                C0::Direct(i) => small[i],
                C0::FirstWord(with_lead, alone) => (c1.saturating_add(small[alone]))
                    .checked_sub(small[with_lead])
                    .unwrap_or_else(|| count(&text[s.core.start..s.end])),
            };
            let tail = tail.map_or((0, 0), |(with, without)| (small[with], small[without]));
            Counts { c0, c1, tail }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::split::WINDOW_BYTES_PER_TOKEN;
    use super::*;
    use crate::WhitespaceCounter;
    use proptest::prelude::*;

    #[test]
    fn long_sentences_are_split_at_words() {
        let text = "one two three four five six seven eight nine ten eleven. Short one.";
        let cfg = ChunkConfig::new(8).with_eos(crate::EosPlacement::None);
        let u = build(text, &cfg, &WhitespaceCounter).unwrap();
        assert_eq!(u.sentences, 2);
        assert_eq!(u.pieces_split, 1);
        let cores: Vec<&str> = u.units.iter().map(|u| &text[u.core.clone()]).collect();
        assert_eq!(
            cores,
            [
                "one two three four five six seven eight",
                "nine ten eleven.",
                "Short one."
            ]
        );
        assert!(u.units.iter().all(|u| u.c0 <= 8));
    }

    proptest! {
        /// S2 and "no text lost": units fit alone, cover every non-whitespace byte in order,
        /// and their counts are the counter's.
        #[test]
        fn units_fit_and_cover(words in proptest::collection::vec("[a-z]{1,4}[.]?", 0..80), cutoff in 8usize..20) {
            fit_and_cover(&words.join(" "), cutoff)?;
        }

        /// The same for sentences long enough to be found over-long from a prefix.
        #[test]
        fn long_sentences_fit_and_cover(words in proptest::collection::vec("[a-z]{1,6}[.]?", 0..600), cutoff in 2usize..6) {
            let words: Vec<String> = words
                .into_iter()
                .enumerate()
                .map(|(i, w)| if i % 97 == 0 { w } else { w.replace('.', "") })
                .collect();
            fit_and_cover(&words.join(" "), cutoff)?;
        }
    }

    fn fit_and_cover(text: &str, cutoff: usize) -> Result<(), TestCaseError> {
        let cfg = ChunkConfig::new(cutoff).with_eos(crate::EosPlacement::None);
        let u = build(text, &cfg, &WhitespaceCounter).unwrap();
        let mut pos = 0;
        for unit in &u.units {
            prop_assert!(unit.c0 <= cutoff);
            prop_assert_eq!(unit.c0, WhitespaceCounter.count(&text[unit.core.clone()]));
            prop_assert_eq!(
                unit.c1,
                WhitespaceCounter.count(&text[unit.start..unit.end])
            );
            prop_assert!(text[pos..unit.core.start].trim().is_empty());
            pos = unit.core.end;
        }
        prop_assert!(text[pos..].trim().is_empty());
        prop_assert_eq!(u.pieces_dropped, 0);
        Ok(())
    }

    /// Counts words like [`WhitespaceCounter`] and records the longest text it was given.
    #[derive(Default)]
    struct Longest(std::sync::atomic::AtomicUsize);

    impl TokenCounter for Longest {
        fn count(&self, text: &str) -> usize {
            self.0
                .fetch_max(text.len(), std::sync::atomic::Ordering::Relaxed);
            WhitespaceCounter.count(text)
        }
        fn additivity(&self) -> Additivity {
            Additivity::AtWhitespace
        }
    }

    /// Word counts without the additivity promise.
    struct NonAdditive;

    impl TokenCounter for NonAdditive {
        fn count(&self, text: &str) -> usize {
            WhitespaceCounter.count(text)
        }
    }

    #[test]
    fn a_huge_sentence_is_never_encoded_whole() {
        let text = "lorem ipsum dolor ".repeat(2000) + "end. Short one.";
        let cfg = ChunkConfig::new(64).with_eos(crate::EosPlacement::None);
        let counter = Longest::default();
        let u = build(&text, &cfg, &counter).unwrap();
        // A counter without additivity encodes every sentence whole.
        let whole = build(&text, &cfg, &NonAdditive).unwrap();
        let key = |u: &Unit| (u.start, u.core.clone(), u.end, u.c0, u.c1);
        assert_eq!(
            u.units.iter().map(key).collect::<Vec<_>>(),
            whole.units.iter().map(key).collect::<Vec<_>>()
        );
        assert_eq!(u.pieces_split, 1);
        let longest = counter.0.into_inner();
        assert!(
            longest < 64 * WINDOW_BYTES_PER_TOKEN,
            "{longest} bytes encoded at once"
        );
        assert!(u.units.iter().all(|u| u.c0 <= 64));
        assert_eq!(&text[u.units.last().unwrap().core.clone()], "Short one.");
    }
}
