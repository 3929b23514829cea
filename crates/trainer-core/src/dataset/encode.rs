//! Text with learned byte ranges -> one training [`Sample`]: BOS/EOS placement, labels from token offsets, and the
//! cutoff rule (truncate keeping the start, or eliminate).
//!
//! The one label-mask rule ([`LABEL_MASK_RULE`]): a token is learned when **any** of its bytes lies in a learned
//! range; it is masked only when it lies wholly in masked text. A marker such as `"### A: "` whose last
//! character the tokenizer glues to the next word (` Paris` is one token) therefore leaves that word learned.

use std::ops::Range;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::tokenizer::SpecialTokens;
use crate::train::{Sample, IGNORE_INDEX};

/// What happens to a sample longer than the cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LongSamples {
    /// Keep its first `cutoff` tokens (its EOS is then cut off).
    #[default]
    Truncate,
    /// Drop it (counted in the report).
    Eliminate,
}

/// Tokenization settings of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Maximum tokens per sample, BOS/EOS included.
    pub cutoff: usize,
    /// Start instruction samples with the model's BOS (chat samples: the template decides).
    pub bos: bool,
    /// End instruction samples with the model's EOS, always learned (chat samples: the template decides).
    pub eos: bool,
    /// Truncate or drop samples over the cutoff.
    pub long: LongSamples,
}

/// The version of the rule that turns learned byte ranges into label masks, recorded with each checkpoint so a
/// resume can tell a changed rule from changed data. 1: a token was learned when its first byte lay in a learned
/// range (it masked the first word of every answer after a marker ending in a space). 2 (now): a token is learned
/// when any of its bytes lies in a learned range.
pub const LABEL_MASK_RULE: u32 = 2;

/// A text to train on and the byte ranges of it whose tokens are learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledText {
    /// The whole text, prompt included.
    pub text: String,
    /// Byte ranges of `text`: a token is learned when any of its bytes lies in one of them (see
    /// [`LABEL_MASK_RULE`]).
    pub learn: Vec<Range<usize>>,
    /// Prepend BOS (unless the text already starts with it).
    pub add_bos: bool,
    /// Append EOS (unless the text already ends with it); the EOS is learned.
    pub add_eos: bool,
}

/// The outcome of encoding one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// A sample to train on.
    Kept {
        /// The sample.
        sample: Sample,
        /// Whether it was cut at the cutoff.
        truncated: bool,
        /// Its length before any cut.
        tokens: usize,
        /// A learned range starts inside a token (a `train_only_after` marker that ends mid-token): that token is
        /// learned, so the learned text starts with the characters before the range.
        starts_mid_token: bool,
    },
    /// Longer than the cutoff with [`LongSamples::Eliminate`].
    TooLong {
        /// Its length.
        tokens: usize,
    },
    /// No token is left to learn (an empty reply, or a prompt longer than the cutoff).
    NothingToLearn {
        /// Its length before any cut.
        tokens: usize,
    },
}

/// Whether a token with byte offsets `(start, end)` is learned: when any of its bytes lies in a non-empty range of
/// `learn`. A token with empty offsets (a tokenizer whose post-processor trims offsets, as GPT-2's `ByteLevel` with
/// `trim_offsets` does, leaves an all-whitespace token as the empty range at its end) stands for the byte just
/// before its position.
pub(super) fn is_learned(learn: &[Range<usize>], (start, end): (usize, usize)) -> bool {
    let (start, end) = if end > start {
        (start, end)
    } else {
        (start.saturating_sub(1), start)
    };
    learn
        .iter()
        .any(|r| r.start < r.end && r.start < end && start < r.end)
}

/// Whether a non-empty learned range starts strictly inside a token.
fn starts_mid_token(learn: &[Range<usize>], offsets: &[(usize, usize)]) -> bool {
    learn.iter().filter(|r| r.start < r.end).any(|r| {
        offsets
            .iter()
            .any(|&(start, end)| start < r.start && r.start < end)
    })
}

/// Tokenizes `t` (special-token strings in the text become their ids; no automatic special tokens) and builds
/// its labels: the token id where any byte of the token lies in a learned range, [`IGNORE_INDEX`] where the token
/// lies wholly outside them and on BOS. Offsets are bytes of `t.text` (the `tokenizers` crate's `encode`).
pub fn encode_labeled(
    tokenizer: &Tokenizer,
    special: SpecialTokens,
    opts: &EncodeOptions,
    t: &LabeledText,
) -> Result<Encoded> {
    let enc = tokenizer
        .encode(t.text.as_str(), false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut ids: Vec<u32> = Vec::with_capacity(enc.len() + 2);
    let mut labels: Vec<i64> = Vec::with_capacity(enc.len() + 2);
    for (&id, &offsets) in enc.get_ids().iter().zip(enc.get_offsets()) {
        let learned = is_learned(&t.learn, offsets);
        ids.push(id);
        labels.push(if learned { i64::from(id) } else { IGNORE_INDEX });
    }
    if let Some(bos) = special.bos {
        // A template that writes BOS while the text also gets one: keep one.
        if ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
            ids.remove(0);
            labels.remove(0);
        }
        if t.add_bos && ids.first() != Some(&bos) {
            ids.insert(0, bos);
            labels.insert(0, IGNORE_INDEX);
        }
        if ids.first() == Some(&bos) {
            labels[0] = IGNORE_INDEX;
        }
    }
    if let (true, Some(eos)) = (t.add_eos, special.eos) {
        if ids.last() == Some(&eos) {
            *labels.last_mut().unwrap_or(&mut 0) = i64::from(eos);
        } else {
            ids.push(eos);
            labels.push(i64::from(eos));
        }
    }
    let starts_mid_token = starts_mid_token(&t.learn, enc.get_offsets());
    let tokens = ids.len();
    let mut truncated = false;
    if tokens > opts.cutoff {
        match opts.long {
            LongSamples::Eliminate => return Ok(Encoded::TooLong { tokens }),
            LongSamples::Truncate => {
                ids.truncate(opts.cutoff);
                labels.truncate(opts.cutoff);
                truncated = true;
            }
        }
    }
    if labels.iter().skip(1).all(|&l| l == IGNORE_INDEX) {
        return Ok(Encoded::NothingToLearn { tokens });
    }
    Ok(Encoded::Kept {
        sample: Sample {
            input_ids: ids,
            labels,
        },
        truncated,
        tokens,
        starts_mid_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::model::Model;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// A byte-level tokenizer: token id = byte (offsets are exact).
    fn tok() -> &'static Tokenizer {
        static M: OnceLock<Model> = OnceLock::new();
        M.get_or_init(|| {
            let config = ModelConfig::tiny_llama(256, 8, 1, 1, 1);
            Model::random(config, 0, &candle_core::Device::Cpu).unwrap()
        })
        .tokenizer()
    }

    proptest! {
        /// Spec T1-T4 for dataset samples: labels are -100 or the token, learned exactly inside the ranges,
        /// at most the cutoff, BOS first and unlearned, EOS last and learned unless truncated.
        #[test]
        fn labels_follow_the_ranges_and_the_cutoff(
            text in "[a-z ]{0,40}", a in 0usize..41, b in 0usize..41, cutoff in 1usize..50,
            add_bos: bool, add_eos: bool, eliminate: bool,
        ) {
            let (lo, hi) = (a.min(b).min(text.len()), a.max(b).min(text.len()));
            let special = SpecialTokens { bos: Some(b'^'.into()), eos: Some(b'$'.into()), pad: None };
            let opts = EncodeOptions {
                cutoff, bos: add_bos, eos: add_eos,
                long: if eliminate { LongSamples::Eliminate } else { LongSamples::Truncate },
            };
            let t = LabeledText { text: text.clone(), learn: std::iter::once(lo..hi).collect(), add_bos, add_eos };
            let full = text.len() + usize::from(add_bos) + usize::from(add_eos);
            match encode_labeled(tok(), special, &opts, &t).unwrap() {
                Encoded::Kept { sample, truncated, tokens, starts_mid_token } => {
                    prop_assert!(!starts_mid_token, "one byte per token");
                    prop_assert_eq!(tokens, full);
                    prop_assert_eq!(truncated, full > cutoff);
                    prop_assert!(!eliminate || !truncated);
                    let n = sample.input_ids.len();
                    prop_assert_eq!(n, full.min(cutoff));
                    let shift = usize::from(add_bos);
                    for (i, (&id, &l)) in sample.input_ids.iter().zip(&sample.labels).enumerate() {
                        let learned = if add_bos && i == 0 {
                            false
                        } else if add_eos && i == full - 1 {
                            true
                        } else {
                            (lo..hi).contains(&(i - shift))
                        };
                        prop_assert_eq!(l, if learned { i64::from(id) } else { IGNORE_INDEX }, "position {}", i);
                    }
                    if add_bos { prop_assert_eq!(sample.input_ids[0], u32::from(b'^')); }
                    if add_eos && !truncated { prop_assert_eq!(sample.input_ids[n - 1], u32::from(b'$')); }
                }
                Encoded::TooLong { tokens } => prop_assert!(eliminate && tokens > cutoff),
                Encoded::NothingToLearn { .. } => {
                    // Nothing learned after the first kept position.
                    let kept = full.min(cutoff);
                    let shift = usize::from(add_bos);
                    let any = (1..kept).any(|i| (add_eos && i == full - 1) || (i >= shift && (lo..hi).contains(&(i - shift))));
                    prop_assert!(!any || (eliminate && full > cutoff));
                }
            }
        }
    }
}
