//! Instruction and chat datasets -> training [`Sample`]s with label masks.
//!
//! The pipeline: [`read_records`] (a JSON array or true JSON Lines) -> per record a [`LabeledText`] (a format-file
//! prompt with `train_only_after`, or a chat conversation, `messages` or ShareGPT `conversations` read by
//! [`messages_of`], rendered with the model's template and its assistant spans) -> [`encode_labeled`] (tokens,
//! BOS/EOS, labels, the cutoff rule) -> [`EncodedDataset`] with a [`DatasetReport`] of what was cut or dropped.
//! [`select`] holds the seeded eval split, hybrid sample and length grouping; [`dump_segments`] shows a sample as
//! trained.

mod chat;
pub mod convert;
mod encode;
mod format;
#[cfg(test)]
mod label_rule_tests;
mod records;
mod render_budget;
mod render_filters;
pub mod select;
mod sharegpt;
mod template_guard;

use std::path::Path;

use tokenizers::Tokenizer;

pub use chat::{messages_of, ChatTemplate, Message};
pub use encode::{
    encode_labeled, EncodeOptions, Encoded, LabeledText, LongSamples, LABEL_MASK_RULE,
};
pub use format::Format;
pub use records::{parse_records, read_records, Record};
pub use render_budget::RenderLimits;

use crate::error::{Error, Result};
use crate::tokenizer::SpecialTokens;
use crate::train::{Sample, IGNORE_INDEX};

/// Which tokens of a chat conversation are learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainOn {
    /// Only the assistant replies and their end-of-turn tokens.
    #[default]
    Responses,
    /// Every token of the rendered conversation.
    All,
}

impl TrainOn {
    /// Both choices, with the name [`FromStr`](std::str::FromStr) and [`Display`](std::fmt::Display) use.
    pub const ALL: [(TrainOn, &'static str); 2] =
        [(TrainOn::Responses, "responses"), (TrainOn::All, "all")];
}

impl std::fmt::Display for TrainOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = TrainOn::ALL
            .iter()
            .find(|(t, _)| t == self)
            .map_or("", |(_, n)| n);
        f.write_str(name)
    }
}

impl std::str::FromStr for TrainOn {
    type Err = Error;

    /// `responses` or `all` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        TrainOn::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(s.trim()))
            .map(|(t, _)| *t)
            .ok_or_else(|| Error::setting("train_on", format!("{s:?} is not responses or all")))
    }
}

/// How records become texts.
#[derive(Debug)]
pub enum DatasetKind {
    /// Instruction data with a format file.
    Format {
        /// The format file.
        format: Format,
        /// Learn only what follows the first occurrence of this string ("" = learn everything).
        train_only_after: String,
    },
    /// Chat data (`messages`, or ShareGPT `conversations`) with a chat template.
    Chat {
        /// The template.
        template: ChatTemplate,
        /// Which tokens are learned.
        train_on: TrainOn,
    },
}

/// What encoding a dataset did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetReport {
    /// Records read.
    pub records: usize,
    /// Samples kept.
    pub kept: usize,
    /// Kept samples cut at the cutoff.
    pub truncated: usize,
    /// Samples dropped for being longer than the cutoff (eliminate mode).
    pub eliminated: usize,
    /// Samples dropped because no token was left to learn.
    pub nothing_to_learn: usize,
    /// Format records without the `train_only_after` string (learned whole).
    pub marker_missing: usize,
    /// Kept samples whose learned text starts inside a token (the `train_only_after` marker, or the template text
    /// before a reply, ends mid-token): that token is learned, so the learned text starts with the marker's last
    /// characters.
    pub starts_mid_token: usize,
    /// Longest sample before any cut, in tokens.
    pub longest: usize,
    /// Tokens in the kept samples.
    pub tokens: usize,
    /// Learned (scored) tokens in the kept samples.
    pub learned: usize,
    /// Chat-template renders, all records together (one per conversation, plus two per learned assistant turn
    /// with `TrainOn::Responses`); 0 for instruction data.
    pub renders: usize,
    /// The most renders one record needed.
    pub most_renders: usize,
}

/// Encoded samples and the record number (1-based) each came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedDataset {
    /// The samples, in file order.
    pub samples: Vec<Sample>,
    /// `records[i]` is the record number of `samples[i]`.
    pub records: Vec<usize>,
    /// What was cut or dropped.
    pub report: DatasetReport,
}

/// The text of one record and what of it is learned. The bool is false when `train_only_after` is set but absent
/// from the record (then everything is learned).
pub fn labeled_text(
    rec: &Record,
    kind: &DatasetKind,
    opts: &EncodeOptions,
    dataset: &Path,
) -> Result<(LabeledText, bool)> {
    Ok(match kind {
        DatasetKind::Format {
            format,
            train_only_after,
        } => {
            let text = format.render(rec, dataset)?;
            let (start, found) = match (
                train_only_after.is_empty(),
                text.find(train_only_after.as_str()),
            ) {
                (true, _) => (0, true),
                (false, Some(i)) => (i + train_only_after.len(), true),
                (false, None) => (0, false),
            };
            let end = text.len();
            (
                LabeledText {
                    text,
                    learn: std::iter::once(start..end).collect(),
                    add_bos: opts.bos,
                    add_eos: opts.eos,
                },
                found,
            )
        }
        DatasetKind::Chat { template, train_on } => {
            let messages = messages_of(rec, dataset)?;
            let wrap = |e: Error| match e {
                Error::Dataset { path, message } => Error::dataset(
                    path,
                    format!("{} of {}: {message}", rec.location(), dataset.display()),
                ),
                other => other,
            };
            let (text, learn) = match train_on {
                TrainOn::Responses => template.assistant_spans(&messages).map_err(wrap)?,
                TrainOn::All => {
                    let t = template.render(&messages, false).map_err(wrap)?;
                    let n = t.len();
                    (t, std::iter::once(0..n).collect())
                }
            };
            (
                LabeledText {
                    text,
                    learn,
                    add_bos: false,
                    add_eos: false,
                },
                true,
            )
        }
    })
}

/// Encodes every record of a dataset; samples over the cutoff are truncated or dropped as `opts` says, and samples
/// with nothing to learn are dropped; both are counted in the report.
pub fn encode_dataset(
    records: &[Record],
    dataset: &Path,
    kind: &DatasetKind,
    opts: &EncodeOptions,
    tokenizer: &Tokenizer,
    special: SpecialTokens,
) -> Result<EncodedDataset> {
    let mut out = EncodedDataset {
        report: DatasetReport {
            records: records.len(),
            ..DatasetReport::default()
        },
        ..EncodedDataset::default()
    };
    let r = &mut out.report;
    let renders = || match kind {
        DatasetKind::Chat { template, .. } => template.renders(),
        DatasetKind::Format { .. } => 0,
    };
    for rec in records {
        let before = renders();
        let (text, found) = labeled_text(rec, kind, opts, dataset)?;
        let n = renders() - before;
        r.renders += n;
        r.most_renders = r.most_renders.max(n);
        if !found {
            r.marker_missing += 1;
        }
        let encoded = encode_labeled(tokenizer, special, opts, &text).map_err(|e| {
            Error::dataset(dataset, format!("{}: cannot tokenize: {e}", rec.location()))
        })?;
        match encoded {
            Encoded::Kept {
                sample,
                truncated,
                tokens,
                starts_mid_token,
            } => {
                r.longest = r.longest.max(tokens);
                r.kept += 1;
                r.starts_mid_token += usize::from(starts_mid_token);
                r.truncated += usize::from(truncated);
                r.tokens += sample.input_ids.len();
                r.learned += sample
                    .labels
                    .iter()
                    .skip(1)
                    .filter(|&&l| l != IGNORE_INDEX)
                    .count();
                out.samples.push(sample);
                out.records.push(rec.number);
            }
            Encoded::TooLong { tokens } => {
                r.longest = r.longest.max(tokens);
                r.eliminated += 1;
            }
            Encoded::NothingToLearn { tokens } => {
                r.longest = r.longest.max(tokens);
                r.nothing_to_learn += 1;
            }
        }
    }
    Ok(out)
}

/// A run of consecutive tokens of a sample that are all learned or all masked, decoded with special tokens shown.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Segment {
    /// Whether these tokens are learned (their label is not [`IGNORE_INDEX`]).
    pub learned: bool,
    /// The decoded text.
    pub text: String,
}

/// The sample as trained: its tokens decoded run by run, masked and learned runs apart.
pub fn dump_segments(tokenizer: &Tokenizer, sample: &Sample) -> Result<Vec<Segment>> {
    let mut out: Vec<Segment> = Vec::new();
    let mut start = 0;
    let n = sample.input_ids.len();
    for i in 1..=n {
        let learned = sample.labels[start] != IGNORE_INDEX;
        if i == n || (sample.labels[i] != IGNORE_INDEX) != learned {
            let text = tokenizer
                .decode(&sample.input_ids[start..i], false)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            out.push(Segment { learned, text });
            start = i;
        }
    }
    Ok(out)
}
