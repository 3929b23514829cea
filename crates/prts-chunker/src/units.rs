//! Counting units: sentences with their token counts, over-long sentences split into pieces.

use std::collections::HashMap;
use std::ops::Range;

use rayon::prelude::*;
use unicode_segmentation::UnicodeSegmentation;

use crate::sentences::{self, Section, Sentence};
use crate::{ChunkConfig, ChunkError, TokenCounter};

/// A packable unit of text: a sentence, or a piece of a sentence too long for one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unit {
    /// First byte, leading whitespace included (`start..core.start` is whitespace).
    pub start: usize,
    /// The unit without surrounding whitespace.
    pub core: Range<usize>,
    /// Index of its hard-cut section.
    pub section: usize,
    /// Tokens of `core` alone: its size as the first unit of a block (exact).
    pub c0: usize,
    /// Tokens of `start..core.end`: its size after a previous unit (exact when `joins`).
    pub c1: usize,
    /// `count(prev + this) == count(prev) + c1` is guaranteed (additive counter and a
    /// whitespace boundary). Otherwise blocks containing this join are re-encoded.
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

/// Parallel work is handed to rayon in batches of this many sentences.
const BATCH: usize = 64;

/// Splits and counts. Every sentence is encoded once (plus two tiny encodes of its first word
/// on the additive path, memoised); only over-long sentences are encoded more.
pub(crate) fn build(
    text: &str,
    cfg: &ChunkConfig,
    counter: &(impl TokenCounter + Sync),
) -> Result<Units, ChunkError> {
    let sections = sentences::sections(text, &cfg.hard_cut);
    let mut sents: Vec<(usize, Sentence)> = Vec::new();
    for (k, sec) in sections.iter().enumerate() {
        sents.extend(
            sentences::split(text, sec.range.clone())
                .into_iter()
                .map(|s| (k, s)),
        );
    }
    cfg.check_cancel()?;
    let additive = counter.additive_at_whitespace();
    let counts: Vec<Option<(usize, usize)>> = sents
        .par_iter()
        .with_min_len(BATCH)
        .map_init(HashMap::new, |cache, (_, s)| {
            if cfg.check_cancel().is_err() {
                return None;
            }
            Some(count_pair(text, s, counter, additive, cache))
        })
        .collect();
    cfg.check_cancel()?;
    // A unit alone must fit with BOS and (at worst) EOS.
    let budget = cfg.cutoff - cfg.specials(cfg.eos != crate::EosPlacement::None);
    let mut pieces: Vec<Option<Split>> = sents
        .par_iter()
        .zip(&counts)
        .map(|((_, s), c)| {
            let (c0, _) = c.unwrap_or_default();
            (c0 > budget).then(|| split_long(text, s, budget, counter, additive))
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
        while next < sents.len() && sents[next].0 == k {
            let s = &sents[next].1;
            if let Some(split) = pieces[next].take() {
                out.pieces_split += 1;
                out.pieces_dropped += split.dropped;
                out.chars_dropped += split.chars_dropped;
                out.units
                    .extend(split.units.into_iter().map(|u| Unit { section: k, ..u }));
            } else {
                let (c0, c1) = counts[next].unwrap_or_default();
                out.units.push(Unit {
                    start: s.start,
                    core: s.core.clone(),
                    section: k,
                    c0,
                    c1,
                    joins: additive && s.start < s.core.start,
                });
            }
            next += 1;
        }
        out.section_units.push(first..out.units.len());
    }
    Ok(out)
}

/// `(c0, c1)` of a sentence: tokens of its core alone, and with its leading whitespace.
fn count_pair<'t>(
    text: &'t str,
    s: &Sentence,
    counter: &impl TokenCounter,
    additive: bool,
    cache: &mut HashMap<&'t str, usize>,
) -> (usize, usize) {
    let core = &text[s.core.clone()];
    if s.start == s.core.start {
        let c = counter.count(core);
        return (c, c);
    }
    let c1 = counter.count(&text[s.start..s.core.end]);
    let word_end = core.find(char::is_whitespace).unwrap_or(core.len());
    if !additive || word_end == core.len() {
        return (counter.count(core), c1);
    }
    // count(lead + w1 + rest) = count(lead + w1) + count(rest) and
    // count(w1 + rest) = count(w1) + count(rest), as `rest` starts with whitespace.
    let mut memo = |t: &'t str| *cache.entry(t).or_insert_with(|| counter.count(t));
    let with_lead = memo(&text[s.start..s.core.start + word_end]);
    let alone = memo(&core[..word_end]);
    let c0 = (c1.saturating_add(alone))
        .checked_sub(with_lead)
        .unwrap_or_else(|| counter.count(core));
    (c0, c1)
}

/// An over-long sentence cut into pieces that fit.
#[derive(Debug)]
struct Split {
    units: Vec<Unit>,
    dropped: usize,
    chars_dropped: usize,
}

/// Cuts a sentence whose core exceeds `budget` tokens: at word boundaries where possible,
/// else at grapheme boundaries; a single grapheme over budget is dropped and counted.
///
/// Candidate ends are searched by galloping within a window of `budget * WINDOW_BYTES_PER_TOKEN`
/// bytes, so the cost grows with the piece, not with the sentence.
fn split_long(
    text: &str,
    s: &Sentence,
    budget: usize,
    counter: &impl TokenCounter,
    additive: bool,
) -> Split {
    let mut out = Split {
        units: Vec::new(),
        dropped: 0,
        chars_dropped: 0,
    };
    let end = s.core.end;
    let mut lead = s.start; // start of the next piece (its leading whitespace)
    let mut cur = s.core.start; // start of the next piece's core
    while cur < end {
        let window = floor_char_boundary(
            text,
            cur.saturating_add(budget.saturating_mul(WINDOW_BYTES_PER_TOKEN))
                .min(end),
        );
        let words = word_ends(text, cur, window, end);
        let fits = |e: usize| counter.count(&text[cur..e]) <= budget;
        let piece_end = match largest_fitting(&words, fits) {
            Some(e) => e,
            None => {
                let graphemes: Vec<usize> = text[cur..words[0].min(window)]
                    .grapheme_indices(true)
                    .map(|(i, g)| cur + i + g.len())
                    .collect();
                let graphemes = if graphemes.is_empty() {
                    // The window ended inside the first grapheme: take that grapheme whole.
                    text[cur..]
                        .graphemes(true)
                        .next()
                        .map(|g| vec![cur + g.len()])
                        .unwrap_or_default()
                } else {
                    graphemes
                };
                if let Some(e) = largest_fitting(&graphemes, fits) {
                    e
                } else {
                    let g = graphemes.first().copied().unwrap_or(end).min(end);
                    out.dropped += 1;
                    out.chars_dropped += text[cur..g].chars().count();
                    cur = g;
                    lead = g;
                    continue;
                }
            }
        };
        let c0 = counter.count(&text[cur..piece_end]);
        let c1 = if lead < cur {
            counter.count(&text[lead..piece_end])
        } else {
            c0
        };
        out.units.push(Unit {
            start: lead,
            core: cur..piece_end,
            section: 0,
            c0,
            c1,
            joins: additive && lead < cur,
        });
        lead = piece_end;
        cur = text[piece_end..end]
            .find(|c: char| !c.is_whitespace())
            .map_or(end, |i| piece_end + i);
    }
    out
}

/// Bytes per token assumed when bounding the search for a piece's end.
const WINDOW_BYTES_PER_TOKEN: usize = 64;

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Ends of the words (non-whitespace to whitespace transitions) in `from..window`, then
/// `end` if it lies in the window; at least the first word's end.
fn word_ends(text: &str, from: usize, window: usize, end: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut prev_ws = false;
    for (i, c) in text[from..end].char_indices() {
        let ws = c.is_whitespace();
        if ws && !prev_ws && i > 0 {
            v.push(from + i);
            if from + i >= window {
                return v;
            }
        }
        prev_ws = ws;
    }
    v.push(end);
    v
}

/// The largest candidate accepted by `fits`: galloping, then binary search (candidates
/// ascending, `fits` assumed monotone; whatever is returned was checked).
fn largest_fitting(cands: &[usize], fits: impl Fn(usize) -> bool) -> Option<usize> {
    if !fits(*cands.first()?) {
        return None;
    }
    let (mut lo, mut hi) = (0, cands.len()); // cands[lo] fits; cands[hi..] unknown or not
    let mut step = 1;
    while lo + step < hi {
        if fits(cands[lo + step]) {
            lo += step;
            step *= 2;
        } else {
            hi = lo + step;
            break;
        }
    }
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        if fits(cands[mid]) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(cands[lo])
}

#[cfg(test)]
mod tests {
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
            let text = words.join(" ");
            let cfg = ChunkConfig::new(cutoff).with_eos(crate::EosPlacement::None);
            let u = build(&text, &cfg, &WhitespaceCounter).unwrap();
            let mut pos = 0;
            for unit in &u.units {
                prop_assert!(unit.c0 <= cutoff);
                prop_assert_eq!(unit.c0, WhitespaceCounter.count(&text[unit.core.clone()]));
                prop_assert_eq!(unit.c1, WhitespaceCounter.count(&text[unit.start..unit.core.end]));
                prop_assert!(text[pos..unit.core.start].trim().is_empty());
                pos = unit.core.end;
            }
            prop_assert!(text[pos..].trim().is_empty());
            prop_assert_eq!(u.pieces_dropped, 0);
        }
    }
}
