//! Cutting an over-long sentence into pieces that fit, and finding it over-long cheaply.

use unicode_segmentation::UnicodeSegmentation;

use super::{Sent, Unit};
use crate::{Additivity, TokenCounter};

/// An over-long sentence cut into pieces that fit.
#[derive(Debug)]
pub(super) struct Split {
    pub units: Vec<Unit>,
    pub dropped: usize,
    pub chars_dropped: usize,
}

/// Cuts a sentence whose core exceeds `budget` tokens: at word boundaries where possible,
/// else at grapheme boundaries; a single grapheme over budget is dropped and counted.
///
/// Candidate ends are searched within a window of `budget * WINDOW_BYTES_PER_TOKEN` bytes, so
/// the cost grows with the piece, not with the sentence. The search starts at the candidate
/// nearest the previous piece's byte length (pieces of one sentence tend to be alike) and
/// gallops up or down from there: usually two or three counts of piece-sized prefixes.
pub(super) fn split_long(
    text: &str,
    s: &Sent,
    budget: usize,
    counter: &impl TokenCounter,
) -> Split {
    let mut out = Split {
        units: Vec::new(),
        dropped: 0,
        chars_dropped: 0,
    };
    let end = s.core.end;
    let mut lead = s.start; // start of the next piece (its leading whitespace)
    let mut cur = s.core.start; // start of the next piece's core
    let mut hint = 0; // byte length of the previous word-cut piece (0: none yet)
    while cur < end {
        let window = floor_char_boundary(
            text,
            cur.saturating_add(budget.saturating_mul(WINDOW_BYTES_PER_TOKEN))
                .min(end),
        );
        let words = word_ends(text, cur, window, end);
        let count = |e: usize| counter.count(&text[cur..e]);
        let from = words
            .partition_point(|&e| e <= cur.saturating_add(hint))
            .saturating_sub(1);
        let (piece_end, piece_count) = match largest_fitting(&words, from, budget, count) {
            Some(found) => {
                hint = found.0 - cur;
                found
            }
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
                if let Some(found) = largest_fitting(&graphemes, 0, budget, count) {
                    found
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
        // The last piece keeps the sentence's line breaks (see `Unit::end`).
        let unit_end = if piece_end == end { s.end } else { piece_end };
        let c0 = if unit_end == piece_end {
            piece_count
        } else {
            counter.count(&text[cur..unit_end])
        };
        let c1 = if lead < cur {
            counter.count(&text[lead..unit_end])
        } else {
            c0
        };
        let tail = if unit_end > piece_end {
            (c0, piece_count)
        } else {
            (0, 0)
        };
        out.units.push(Unit {
            start: lead,
            core: cur..piece_end,
            end: unit_end,
            section: s.section,
            c0,
            c1,
            tail,
            joins: false,
        });
        lead = piece_end;
        cur = text[piece_end..end]
            .find(|c: char| !c.is_whitespace())
            .map_or(end, |i| piece_end + i);
    }
    out
}

/// Bytes per token assumed when bounding the search for a piece's end.
pub(super) const WINDOW_BYTES_PER_TOKEN: usize = 64;

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

/// The largest candidate whose `count` is at most `budget`, with that count; `None` if even
/// the first is over. Counts are assumed to grow with the candidate (candidates ascending);
/// whatever is returned was counted. The search starts at index `from` and gallops up
/// (if it fits) or down (if not), then bisects: few counts when `from` is near the answer.
fn largest_fitting(
    cands: &[usize],
    from: usize,
    budget: usize,
    count: impl Fn(usize) -> usize,
) -> Option<(usize, usize)> {
    let from = from.min(cands.len().checked_sub(1)?);
    let fit = |i: usize| Some(count(cands[i])).filter(|&c| c <= budget);
    // Invariant: `cands[lo]` fits with count `best`; `cands[hi..]` do not fit (or are unknown
    // past the end).
    let (mut lo, mut best, mut hi);
    if let Some(c) = fit(from) {
        (lo, best, hi) = (from, c, cands.len());
        let mut step = 1;
        while lo + step < hi {
            match fit(lo + step) {
                Some(c) => {
                    (lo, best) = (lo + step, c);
                    step *= 2;
                }
                None => hi = lo + step,
            }
        }
    } else {
        hi = from;
        let mut step = 1;
        loop {
            if hi == 0 {
                return None;
            }
            let j = hi.saturating_sub(step);
            if let Some(c) = fit(j) {
                (lo, best) = (j, c);
                break;
            }
            hi = j;
            step *= 2;
        }
    }
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        match fit(mid) {
            Some(c) => (lo, best) = (mid, c),
            None => hi = mid,
        }
    }
    Some((cands[lo], best))
}

/// Whether a long sentence's core is over `budget` tokens by a count of a prefix alone, for
/// additive counters: at a join that keeps counts additive,
/// `count(core) == count(prefix) + count(rest) >= count(prefix)`. This spares encoding a huge
/// sentence whole (time, and memory in proportion to its length) only to learn that it must be
/// split; the pieces are counted exactly anyway. Sentences shorter than the search window of
/// [`split_long`] are left to the ordinary count.
pub(super) fn prefix_over_budget(
    text: &str,
    s: &Sent,
    budget: usize,
    counter: &impl TokenCounter,
    additivity: Additivity,
) -> bool {
    let long = budget.saturating_mul(WINDOW_BYTES_PER_TOKEN);
    if additivity == Additivity::None || s.core.len() <= long {
        return false;
    }
    // A prefix of about `PREFIX_BYTES_PER_TOKEN` bytes per token of the budget.
    let from = floor_char_boundary(
        text,
        s.core.start + budget.saturating_mul(PREFIX_BYTES_PER_TOKEN),
    );
    let core = &text[s.core.start..s.core.end];
    let rel = from - s.core.start;
    let cut = core[rel..].char_indices().find_map(|(i, r)| {
        let at = rel + i;
        let l = core[..at].chars().next_back()?;
        additivity.joins(l, r, false).then_some(at)
    });
    match cut {
        Some(at) if at < long => counter.count(&core[..at]) > budget,
        _ => false,
    }
}

/// Bytes per token of the budget in the prefix counted by [`prefix_over_budget`]: more than
/// most text needs per token, so that the prefix is usually already over the budget.
const PREFIX_BYTES_PER_TOKEN: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Wherever the search starts, it finds the largest candidate within budget (counts
        /// growing with the candidate), with its count, or `None` if the first is over.
        #[test]
        fn largest_fitting_is_exact_from_any_start(
            steps in proptest::collection::vec(0usize..4, 1..60),
            from in 0usize..80,
            budget in 0usize..120,
        ) {
            let cands: Vec<usize> = (0..steps.len()).collect();
            let counts: Vec<usize> = steps
                .iter()
                .scan(0, |acc, s| {
                    *acc += s;
                    Some(*acc)
                })
                .collect();
            let expected = cands.iter().rev().find(|&&i| counts[i] <= budget).map(|&i| (i, counts[i]));
            prop_assert_eq!(largest_fitting(&cands, from, budget, |i| counts[i]), expected);
        }
    }
}
