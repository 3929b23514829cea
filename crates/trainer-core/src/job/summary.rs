//! The data of a job in words (the summaries `check`, `--dry-run` and a run show) and as a JSON Lines dump of
//! every sample as trained.

use std::fmt::Write as _;
use std::path::Path;

use prts_chunker::Chunks;
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::dataset::{dump_segments, select, DatasetReport, Segment};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::job::data::{Origin, TrainingData};
use crate::job::order::epoch_order;
use crate::job::plan::EvalEvery;
use crate::train::{Sample, IGNORE_INDEX};

/// The slicer's summary in words: sentences, blocks, tokens as trained, longest block, splits and drops.
pub fn slicing_summary(chunks: &Chunks, bytes: usize, cutoff: usize) -> String {
    let s = &chunks.summary;
    format!(
        "input:          {bytes} bytes, {} sentences\n\
         blocks:         {} ({} main/window + {} overlap)\n\
         tokens:         {} (as trained, BOS/EOS included)\n\
         longest block:  {} tokens (cutoff {cutoff})\n\
         pieces split:   {} (sentences longer than the cutoff)\n\
         pieces dropped: {} ({} chars, under min_chars)",
        s.sentences,
        chunks.blocks.len(),
        s.blocks,
        s.overlap_blocks,
        s.tokens,
        s.longest_block,
        s.pieces_split,
        s.pieces_dropped,
        s.chars_dropped
    )
}

/// A dataset report in words.
pub fn report_text(r: &DatasetReport, cutoff: usize) -> String {
    let mut out = format!(
        "records:        {} ({} samples kept)\n\
         tokens:         {} ({} learned, the rest masked)\n\
         longest:        {} tokens (cutoff {cutoff}); {} truncated, {} eliminated as too long\n\
         dropped:        {} with nothing left to learn",
        r.records,
        r.kept,
        r.tokens,
        r.learned,
        r.longest,
        r.truncated,
        r.eliminated,
        r.nothing_to_learn
    );
    if r.renders > 0 {
        let _ = write!(
            out,
            "\nrenders:        {} chat-template renders ({} records x up to {} each: one per conversation, \
             two more per learned assistant turn)",
            r.renders, r.records, r.most_renders
        );
    }
    if r.marker_missing > 0 {
        let _ = write!(
            out,
            "\nwarning:        {} records do not contain train_only_after; they are learned whole",
            r.marker_missing
        );
    }
    if r.starts_mid_token > 0 {
        let _ = write!(
            out,
            "\nnote:           {} samples: the learned text starts inside a token (the train_only_after marker \
             ends mid-token); that token is learned whole, so the learned text starts with the marker's last \
             characters (end the marker where the tokenizer splits, e.g. before a space that starts a word)",
            r.starts_mid_token
        );
    }
    out
}

/// Scored next-token predictions of a sample.
fn learned_tokens(s: &Sample) -> usize {
    s.labels
        .iter()
        .skip(1)
        .filter(|&&l| l != IGNORE_INDEX)
        .count()
}

impl TrainingData {
    /// The data summary in words: the text's slicing, the dataset, hybrid and eval figures; `eval` is the
    /// job's evaluation cadence, which the eval line states.
    pub fn summary_text(&self, eval: EvalEvery) -> String {
        let o = &self.options;
        let mut out = String::new();
        if let Some((chunks, bytes)) = &self.chunks {
            let _ = writeln!(out, "{}", slicing_summary(chunks, *bytes, o.cutoff));
        }
        let shown = |p: &Option<std::path::PathBuf>| {
            p.as_deref().unwrap_or(Path::new("")).display().to_string()
        };
        if let Some(r) = &self.dataset {
            let _ = writeln!(
                out,
                "# dataset {}\n{}",
                shown(&self.sources.dataset),
                report_text(r, o.cutoff)
            );
        }
        if let Some(h) = self.hybrid {
            let _ = writeln!(
                out,
                "hybrid:         {} of {} dataset samples ({}%) + {} of {} text blocks ({}%), seeded samples",
                h.dataset_used, h.dataset, o.hybrid_data_ratio, h.text_used, h.text, o.hybrid_text_ratio
            );
        }
        if let Some(r) = &self.eval_report {
            let _ = writeln!(
                out,
                "# eval dataset {}\n{}",
                shown(&self.sources.eval_dataset),
                report_text(r, o.cutoff)
            );
        }
        let learned: usize = self.samples.iter().map(learned_tokens).sum();
        let _ = write!(
            out,
            "training:       {} samples, {} learned tokens",
            self.samples.len(),
            learned
        );
        if !self.eval.is_empty() {
            let how = if o.eval_split > 0.0 {
                format!("{} of the training data, seeded", o.eval_split)
            } else {
                "eval dataset".to_string()
            };
            let when = match eval {
                EvalEvery::Steps(n) => format!("every {n} steps"),
                EvalEvery::EpochEnd => "at every epoch end".to_string(),
            };
            let _ = write!(
                out,
                "\neval:           {} samples, {} scored tokens ({how}), evaluated {when} and at the last step",
                self.eval.len(),
                self.eval.iter().map(learned_tokens).sum::<usize>()
            );
        }
        out
    }

    /// Token positions one epoch computes with dynamic padding in micro-batches of `batch_size`, in the seeded
    /// order and with length grouping: the figure behind `group_by_length`.
    pub fn padding_text(&self, batch_size: usize) -> String {
        let lengths: Vec<usize> = self.samples.iter().map(|s| s.input_ids.len()).collect();
        let real: usize = lengths.iter().sum();
        let order = epoch_order(lengths.len(), self.options.seed, 0);
        let plain = select::padded_tokens(&order, &lengths, batch_size);
        let grouped_order = select::group_by_length(&order, &lengths, batch_size);
        let grouped = select::padded_tokens(&grouped_order, &lengths, batch_size);
        format!(
            "padding:        {real} real tokens per epoch; {plain} positions computed in micro-batches of \
             {batch_size} ({:.2}x), {grouped} with group_by_length ({:.2}x)",
            plain as f64 / real.max(1) as f64,
            grouped as f64 / real.max(1) as f64
        )
    }

    /// Writes every sample as trained to `path` (atomically), one JSON object per line: its set, its source
    /// (record number or block index), the decoded text with special tokens, and the text cut into learned and
    /// masked segments. Returns the number of samples written.
    pub fn dump(&self, path: &Path, tokenizer: &Tokenizer) -> Result<usize> {
        #[derive(Serialize)]
        struct DumpLine<'a> {
            set: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            record: Option<usize>,
            #[serde(skip_serializing_if = "Option::is_none")]
            block: Option<usize>,
            tokens: usize,
            learned: usize,
            text: String,
            segments: &'a [Segment],
        }
        let mut out = String::new();
        let mut n = 0;
        for (set, samples, origins) in [
            ("train", &self.samples, &self.origins),
            ("eval", &self.eval, &self.eval_origins),
        ] {
            for (sample, origin) in samples.iter().zip(origins) {
                let segments = dump_segments(tokenizer, sample)?;
                let line = DumpLine {
                    set,
                    record: match origin {
                        Origin::Record(r) => Some(*r),
                        Origin::Block(_) => None,
                    },
                    block: match origin {
                        Origin::Block(b) => Some(*b),
                        Origin::Record(_) => None,
                    },
                    tokens: sample.input_ids.len(),
                    learned: learned_tokens(sample),
                    text: segments.iter().map(|s| s.text.as_str()).collect(),
                    segments: &segments,
                };
                out.push_str(&serde_json::to_string(&line).map_err(|e| Error::io(path, e.into()))?);
                out.push('\n');
                n += 1;
            }
        }
        write_atomic(path, out.as_bytes())?;
        Ok(n)
    }

    /// Sample `i` as trained, in words: its source, its length and its text, with the masked spans shown as
    /// `[[masked: ...]]` (what `--dry-run` prints).
    pub fn sample_text(&self, i: usize, tokenizer: &Tokenizer) -> Result<String> {
        let sample = &self.samples[i];
        let segments = dump_segments(tokenizer, sample)?;
        let masked = sample.labels.iter().skip(1).any(|&l| l == IGNORE_INDEX);
        let text: String = segments
            .iter()
            .map(|s| {
                if s.learned || !masked {
                    s.text.clone()
                } else {
                    format!("[[masked: {}]]", s.text)
                }
            })
            .collect();
        let what = match self.origins[i] {
            Origin::Block(b) => format!("text block {b}"),
            Origin::Record(r) => format!("dataset record {r}"),
        };
        Ok(format!(
            "# sample {i}: {what} ({} tokens, as trained{})\n{text}",
            sample.input_ids.len(),
            if masked {
                "; [[masked: ...]] is not learned"
            } else {
                ""
            }
        ))
    }
}
