//! Packing units into blocks: PRTS main and overlap blocks, DEMENTOR windows.
//!
//! Sizes come from prefix sums of unit counts. A span's size is exact when every join inside
//! it is additive ([`Unit::joins`]); otherwise the span is re-encoded whole ("settled") and
//! shrunk until it fits.

use rayon::prelude::*;

use crate::units::{Unit, Units};
use crate::{ChunkConfig, TokenCounter};

/// A block before materialisation: units `first..=last` and their text tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub first: usize,
    pub last: usize,
    /// Tokens of the text alone (no BOS/EOS).
    pub text_tokens: usize,
    /// Whether the size was re-encoded whole.
    pub recounted: bool,
}

pub(crate) struct Packer<'a, C> {
    pub text: &'a str,
    pub units: &'a Units,
    pub cfg: &'a ChunkConfig,
    pub counter: &'a C,
    /// `c1_sum[k]` = sum of `c1` of units `0..k`.
    c1_sum: Vec<usize>,
    /// `breaks[k]` = number of non-joining units among `0..k`.
    breaks: Vec<usize>,
}

impl<'a, C: TokenCounter + Sync> Packer<'a, C> {
    pub fn new(text: &'a str, units: &'a Units, cfg: &'a ChunkConfig, counter: &'a C) -> Self {
        let mut c1_sum = Vec::with_capacity(units.units.len() + 1);
        let mut breaks = Vec::with_capacity(units.units.len() + 1);
        let (mut s, mut b) = (0usize, 0usize);
        c1_sum.push(0);
        breaks.push(0);
        for u in &units.units {
            s = s.saturating_add(u.c1);
            b += usize::from(!u.joins);
            c1_sum.push(s);
            breaks.push(b);
        }
        Self {
            text,
            units,
            cfg,
            counter,
            c1_sum,
            breaks,
        }
    }

    fn unit(&self, i: usize) -> &Unit {
        &self.units.units[i]
    }

    /// One past the last unit of `i`'s section.
    pub fn section_end(&self, i: usize) -> usize {
        self.units.section_units[self.unit(i).section].end
    }

    /// Whether a block ending with unit `j` ends at a hard cut.
    pub fn ends_at_hard_cut(&self, j: usize) -> bool {
        let sec = self.unit(j).section;
        self.units.sections[sec].hard_cut_after && j + 1 == self.units.section_units[sec].end
    }

    /// Whether a block ending with unit `j` gets EOS.
    pub fn eos(&self, j: usize) -> bool {
        self.cfg.eos_for(self.ends_at_hard_cut(j))
    }

    /// Text tokens allowed in a block ending with unit `j`.
    fn limit(&self, j: usize) -> usize {
        self.cfg.cutoff - self.cfg.specials(self.eos(j))
    }

    /// Estimated text tokens of units `i..=j` (exact when [`Self::exact`]).
    fn estimate(&self, i: usize, j: usize) -> usize {
        let (with_tail, without) = self.unit(j).tail;
        self.unit(i)
            .c0
            .saturating_add(self.c1_sum[j + 1].saturating_sub(self.c1_sum[i + 1]))
            .saturating_add(without)
            .saturating_sub(with_tail)
    }

    fn exact(&self, i: usize, j: usize) -> bool {
        self.breaks[j + 1] == self.breaks[i + 1]
    }

    /// The block's byte range in the text.
    pub fn range(&self, i: usize, j: usize) -> std::ops::Range<usize> {
        self.unit(i).core.start..self.unit(j).core.end
    }

    /// The last unit of the longest block starting at `i` (by estimate), capped at `cap`.
    fn greedy(&self, i: usize, cap: usize) -> usize {
        let end = self.section_end(i).min(cap + 1);
        let mut j = i;
        while j + 1 < end && self.estimate(i, j + 1) <= self.limit(j + 1) {
            j += 1;
        }
        j
    }

    /// The exact size of `i..=j`, shrinking `j` until the block fits.
    fn settle(&self, i: usize, mut j: usize) -> Span {
        let mut recounted = false;
        loop {
            let tokens = if self.exact(i, j) {
                self.estimate(i, j)
            } else {
                recounted = true;
                self.counter.count(&self.text[self.range(i, j)])
            };
            // A unit alone always fits (its size is exact and within the smallest limit).
            if tokens <= self.limit(j) || j == i {
                return Span {
                    first: i,
                    last: j,
                    text_tokens: tokens,
                    recounted,
                };
            }
            j -= 1;
        }
    }

    /// PRTS main blocks: greedy packing per section, settled in parallel, repaired in order.
    pub fn main_blocks(&self) -> Vec<Span> {
        let mut planned = Vec::new();
        for sec in &self.units.section_units {
            let mut i = sec.start;
            while i < sec.end {
                let j = self.greedy(i, usize::MAX - 1);
                planned.push((i, j));
                i = j + 1;
            }
        }
        let settled: Vec<Span> = planned
            .par_iter()
            .map(|&(i, j)| self.settle(i, j))
            .collect();
        let mut out = Vec::with_capacity(settled.len());
        for (span, &(_, planned_last)) in settled.into_iter().zip(&planned) {
            let mut next = span.last + 1;
            out.push(span);
            // The planned block did not fit: pack the units it gave up before the next block.
            while next <= planned_last {
                let span = self.settle(next, self.greedy(next, planned_last));
                next = span.last + 1;
                out.push(span);
            }
        }
        out
    }

    /// PRTS overlap blocks: for each main block that does not end its section, a block
    /// starting right after its half-way sentence and filled greedily. Kept only if it
    /// reaches past the main block's end (so it is never a main block nor inside one).
    pub fn overlap_blocks(&self, main: &[Span]) -> Vec<Span> {
        let half = self.cfg.cutoff / 2;
        let starts: Vec<(usize, usize)> = main
            .iter()
            .filter(|m| m.last > m.first && m.last + 1 < self.section_end(m.first))
            .filter_map(|m| {
                // The half-way sentence: the last whose running size stays under half.
                let mut h = m.first;
                while h < m.last && self.estimate(m.first, h + 1) < half {
                    h += 1;
                }
                (h < m.last).then_some((h + 1, m.last))
            })
            .collect();
        starts
            .par_iter()
            .map(|&(s, main_last)| (self.settle(s, self.greedy(s, usize::MAX - 1)), main_last))
            .filter(|(span, main_last)| span.last > *main_last)
            .map(|(span, _)| span)
            .collect()
    }

    /// DEMENTOR windows: one per start sentence, kept when it ends further than the last kept
    /// window of its section (positional de-duplication; no tail over-sampling).
    pub fn windows(&self) -> Vec<Span> {
        let n = self.units.units.len();
        let est_end: Vec<usize> = (0..n)
            .into_par_iter()
            .with_min_len(256)
            .map(|i| self.greedy(i, usize::MAX - 1))
            .collect();
        let candidate = |i: usize| {
            i == 0
                || self.unit(i - 1).section != self.unit(i).section
                || est_end[i] > est_end[i - 1]
        };
        let pre: Vec<Option<Span>> = (0..n)
            .into_par_iter()
            .with_min_len(64)
            .map(|i| candidate(i).then(|| self.settle(i, est_end[i])))
            .collect();
        let mut out = Vec::new();
        let mut prev: Option<(usize, usize)> = None; // (section, last)
        for (i, settled) in pre.into_iter().enumerate() {
            let sec = self.unit(i).section;
            let bound = prev.filter(|&(s, _)| s == sec).map(|(_, l)| l);
            if bound.is_some_and(|l| est_end[i] <= l) {
                continue;
            }
            let span = settled.unwrap_or_else(|| self.settle(i, est_end[i]));
            if bound.is_none_or(|l| span.last > l) {
                prev = Some((sec, span.last));
                out.push(span);
            }
        }
        out
    }
}
