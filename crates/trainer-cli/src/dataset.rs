//! The samples of a run: raw-text blocks, a dataset (instruction records with a format file, or chat records
//! with a chat template), the hybrid mix of both, and the eval set. The rules live in `trainer_core::dataset`;
//! this module reads the files the settings name and wires them together.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokenizers::Tokenizer;
use trainer_core::dataset::{
    dump_segments, encode_dataset, read_records, select, ChatTemplate, DatasetKind, DatasetReport,
    EncodeOptions, Format, LongSamples, Record, Segment, TrainOn,
};
use trainer_core::{Model, Sample, IGNORE_INDEX};

use crate::fsutil::write_atomic;
use crate::settings::Settings;

/// Where a sample came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Raw-text block (0-based index in slicing order).
    Block(usize),
    /// Dataset record (1-based number in its file).
    Record(usize),
}

/// Dataset files, read (and checked) before the model loads so that a bad file fails fast.
pub struct DataFiles {
    records: Option<Vec<Record>>,
    eval_records: Option<Vec<Record>>,
    format: Option<Format>,
    template: Option<(String, PathBuf)>,
}

fn set(p: &Path) -> bool {
    !p.as_os_str().is_empty()
}

/// Reads the dataset, eval dataset, format file and chat template the settings name.
pub fn read_files(s: &Settings) -> Result<DataFiles> {
    let records = set(&s.dataset)
        .then(|| read_records(&s.dataset))
        .transpose()?;
    let eval_records = set(&s.eval_dataset)
        .then(|| read_records(&s.eval_dataset))
        .transpose()?;
    let format = set(&s.format)
        .then(|| Format::load(&s.format))
        .transpose()?;
    let template = if set(&s.chat_template) {
        let text = std::fs::read_to_string(&s.chat_template)
            .with_context(|| format!("cannot read chat template {}", s.chat_template.display()))?;
        Some((text, s.chat_template.clone()))
    } else {
        None
    };
    Ok(DataFiles {
        records,
        eval_records,
        format,
        template,
    })
}

/// Everything a run trains and evaluates on.
pub struct RunData {
    /// Training samples.
    pub samples: Vec<Sample>,
    /// Where each training sample came from.
    pub origins: Vec<Origin>,
    /// Eval samples (empty: no evaluation).
    pub eval: Vec<Sample>,
    /// Where each eval sample came from.
    pub eval_origins: Vec<Origin>,
    /// What encoding the dataset did.
    pub dataset: Option<DatasetReport>,
    /// What encoding the eval dataset did.
    pub eval_report: Option<DatasetReport>,
    /// Hybrid runs: (dataset samples used, dataset samples, text blocks used, text blocks).
    pub hybrid: Option<[usize; 4]>,
}

/// The environment variable that multiplies every chat-template render limit (docs/datasets.md, "Render
/// limits").
pub const TEMPLATE_LIMITS_VAR: &str = "TRAINER_TEMPLATE_LIMITS";

/// The factor of [`TEMPLATE_LIMITS_VAR`]: 1 when unset.
fn template_limit_scale() -> Result<u64> {
    match std::env::var(TEMPLATE_LIMITS_VAR) {
        Err(std::env::VarError::NotPresent) => Ok(1),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
            _ => bail!(
                "{TEMPLATE_LIMITS_VAR}={v:?} is not a whole number from 1 to 1000000: it multiplies every \
                 chat-template render limit (e.g. 4); unset it for the defaults"
            ),
        },
        Err(e) => bail!("{TEMPLATE_LIMITS_VAR} cannot be read: {e}"),
    }
}

fn token_string(tok: &Tokenizer, id: Option<u32>) -> String {
    id.and_then(|i| tok.id_to_token(i)).unwrap_or_default()
}

/// Encodes the dataset(s), mixes in the text blocks (`blocks`, already encoded), and sets the eval set aside.
pub fn build(
    s: &Settings,
    files: DataFiles,
    model: &Model,
    blocks: Vec<Vec<u32>>,
) -> Result<RunData> {
    let tok = model.tokenizer();
    let special = model.special_tokens();
    let opts = EncodeOptions {
        cutoff: s.cutoff,
        bos: s.bos && special.bos.is_some(),
        eos: s.eos != "none" && special.eos.is_some(),
        long: if s.eliminate_long {
            LongSamples::Eliminate
        } else {
            LongSamples::Truncate
        },
    };
    let kind = match (&files.records, files.format) {
        (None, _) => None,
        (Some(_), Some(format)) => Some(DatasetKind::Format {
            format,
            train_only_after: prts_chunker::unescape_hard_cut(&s.train_only_after),
        }),
        (Some(_), None) => {
            let (src, origin) = match files.template {
                Some(t) => t,
                None => match model.chat_template() {
                    Some(t) => (t.to_string(), model.source().to_path_buf()),
                    None => bail!(
                        "{} holds no format and the model {} has no chat template: give --format FILE for \
                         instruction data or --chat-template FILE for chat data",
                        s.dataset.display(),
                        model.source().display()
                    ),
                },
            };
            let mut template = ChatTemplate::new(
                &src,
                &origin,
                &token_string(tok, special.bos),
                &token_string(tok, special.eos),
            )?;
            template.scale_limits(template_limit_scale()?);
            Some(DatasetKind::Chat {
                template,
                train_on: if s.train_on == "all" {
                    TrainOn::All
                } else {
                    TrainOn::Responses
                },
            })
        }
    };
    let encode = |records: &[Record], path: &Path| -> Result<_> {
        let kind = kind.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "{} is a dataset, but no --dataset was given to say how to read it",
                path.display()
            )
        })?;
        Ok(encode_dataset(records, path, kind, &opts, tok, special)?)
    };
    let mut data = RunData {
        samples: Vec::new(),
        origins: Vec::new(),
        eval: Vec::new(),
        eval_origins: Vec::new(),
        dataset: None,
        eval_report: None,
        hybrid: None,
    };
    let mut ds_samples = Vec::new();
    let mut ds_origins = Vec::new();
    if let Some(records) = &files.records {
        let d = encode(records, &s.dataset)?;
        if d.samples.is_empty() {
            bail!(
                "{}: no sample is left ({}): raise --cutoff, or check --train-only-after / --train-on",
                s.dataset.display(),
                report_text(&d.report, s.cutoff).trim().replace('\n', "; ")
            );
        }
        ds_origins = d.records.iter().map(|&r| Origin::Record(r)).collect();
        ds_samples = d.samples;
        data.dataset = Some(d.report);
    }
    let mut text_samples: Vec<Sample> = blocks.into_iter().map(Sample::causal).collect();
    let mut text_origins: Vec<Origin> = (0..text_samples.len()).map(Origin::Block).collect();
    if !ds_samples.is_empty() && !text_samples.is_empty() {
        let (nd, nt) = (ds_samples.len(), text_samples.len());
        let kd = select::sample_indices(
            nd,
            select::keep_count(nd, s.hybrid_data_ratio),
            s.seed ^ 0x6879_6264,
        );
        let kt = select::sample_indices(
            nt,
            select::keep_count(nt, s.hybrid_text_ratio),
            s.seed ^ 0x6879_7474,
        );
        data.hybrid = Some([kd.len(), nd, kt.len(), nt]);
        (ds_samples, ds_origins) = pick(&ds_samples, &ds_origins, &kd);
        (text_samples, text_origins) = pick(&text_samples, &text_origins, &kt);
    }
    if let Some(records) = &files.eval_records {
        let d = encode(records, &s.eval_dataset)?;
        if d.samples.is_empty() {
            bail!(
                "{}: no eval sample is left: raise --cutoff, or check --train-only-after / --train-on",
                s.eval_dataset.display()
            );
        }
        data.eval_origins = d.records.iter().map(|&r| Origin::Record(r)).collect();
        data.eval = d.samples;
        data.eval_report = Some(d.report);
    }
    data.samples = ds_samples.into_iter().chain(text_samples).collect();
    data.origins = ds_origins.into_iter().chain(text_origins).collect();
    if s.eval_split > 0.0 {
        let n = data.samples.len();
        let Some((train, eval)) = select::split_indices(n, s.eval_split, s.seed) else {
            bail!(
                "setting `eval_split` = {} of {n} samples leaves an empty training or eval set: give more data or another fraction",
                s.eval_split
            );
        };
        (data.eval, data.eval_origins) = pick(&data.samples, &data.origins, &eval);
        (data.samples, data.origins) = pick(&data.samples, &data.origins, &train);
    }
    if data.samples.is_empty() {
        bail!("no training samples: give --text, --dataset, or higher hybrid ratios");
    }
    Ok(data)
}

fn pick(samples: &[Sample], origins: &[Origin], idx: &[usize]) -> (Vec<Sample>, Vec<Origin>) {
    (
        idx.iter().map(|&i| samples[i].clone()).collect(),
        idx.iter().map(|&i| origins[i]).collect(),
    )
}

/// A dataset report in words.
pub fn report_text(r: &DatasetReport, cutoff: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "records:        {} ({} samples kept)",
        r.records, r.kept
    );
    let _ = writeln!(
        out,
        "tokens:         {} ({} learned, the rest masked)",
        r.tokens, r.learned
    );
    let _ = writeln!(
        out,
        "longest:        {} tokens (cutoff {cutoff}); {} truncated, {} eliminated as too long",
        r.longest, r.truncated, r.eliminated
    );
    let _ = write!(
        out,
        "dropped:        {} with nothing left to learn",
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
    out
}

/// The data summary of a run in words (the text summary is printed separately).
pub fn summary_text(d: &RunData, s: &Settings) -> String {
    let mut out = String::new();
    if let Some(r) = &d.dataset {
        let _ = writeln!(
            out,
            "# dataset {}\n{}",
            s.dataset.display(),
            report_text(r, s.cutoff)
        );
    }
    if let Some([kd, nd, kt, nt]) = d.hybrid {
        let _ = writeln!(
            out,
            "hybrid:         {kd} of {nd} dataset samples ({}%) + {kt} of {nt} text blocks ({}%), seeded samples",
            s.hybrid_data_ratio, s.hybrid_text_ratio
        );
    }
    if let Some(r) = &d.eval_report {
        let _ = writeln!(
            out,
            "# eval dataset {}\n{}",
            s.eval_dataset.display(),
            report_text(r, s.cutoff)
        );
    }
    let learned: usize = d.samples.iter().map(learned_tokens).sum();
    let _ = write!(
        out,
        "training:       {} samples, {} learned tokens",
        d.samples.len(),
        learned
    );
    if !d.eval.is_empty() {
        let how = if s.eval_split > 0.0 {
            format!("{} of the training data, seeded", s.eval_split)
        } else {
            "eval dataset".to_string()
        };
        let when = if s.eval_steps > 0 {
            format!("every {} steps", s.eval_steps)
        } else {
            "at every epoch end".to_string()
        };
        let _ = write!(
            out,
            "\neval:           {} samples, {} scored tokens ({how}), evaluated {when} and at the last step",
            d.eval.len(),
            d.eval.iter().map(learned_tokens).sum::<usize>()
        );
    }
    out
}

fn learned_tokens(s: &Sample) -> usize {
    s.labels
        .iter()
        .skip(1)
        .filter(|&&l| l != IGNORE_INDEX)
        .count()
}

#[derive(Serialize)]
struct DumpLine {
    set: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    block: Option<usize>,
    tokens: usize,
    learned: usize,
    text: String,
    segments: Vec<Segment>,
}

/// Writes every sample as trained, one JSON object per line: its source, the decoded text with special tokens,
/// and the text cut into learned and masked segments.
pub fn dump(path: &Path, d: &RunData, tok: &Tokenizer) -> Result<usize> {
    let mut out = String::new();
    let sets = [
        ("train", &d.samples, &d.origins),
        ("eval", &d.eval, &d.eval_origins),
    ];
    let mut n = 0;
    for (set, samples, origins) in sets {
        for (sample, origin) in samples.iter().zip(origins.iter()) {
            let segments = dump_segments(tok, sample)?;
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
                segments,
            };
            out.push_str(&serde_json::to_string(&line)?);
            out.push('\n');
            n += 1;
        }
    }
    write_atomic(path, out.as_bytes())?;
    Ok(n)
}
