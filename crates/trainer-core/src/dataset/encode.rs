//! Text with learned byte ranges -> one training [`Sample`]: BOS/EOS placement, labels from token offsets, and the
//! cutoff rule (truncate keeping the start, or eliminate).

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

/// A text to train on and the byte ranges of it whose tokens are learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledText {
    /// The whole text, prompt included.
    pub text: String,
    /// Byte ranges of `text`: a token is learned when its first byte lies in one of them.
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

/// Tokenizes `t` (special-token strings in the text become their ids; no automatic special tokens) and builds
/// its labels: [`IGNORE_INDEX`] outside the learned ranges and on BOS, the token id elsewhere.
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
    for (&id, &(start, _)) in enc.get_ids().iter().zip(enc.get_offsets()) {
        let learned = t.learn.iter().any(|r| r.contains(&start));
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
                Encoded::Kept { sample, truncated, tokens } => {
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
