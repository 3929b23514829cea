//! The samples of a job: raw text sliced into blocks (`prts-chunker`), a dataset (instruction records with a
//! format file, or chat records with a chat template), the hybrid mix of both, and the eval set.
//!
//! Two stages, so that a bad file fails before the (slower) model load: [`DataFiles::read`] reads and checks
//! every file the [`DataSources`] name; [`TrainingData::build`] then slices and encodes with the model's
//! tokenizer, exactly as the samples will be trained.

use std::path::{Path, PathBuf};

use prts_chunker::{chunk, read_text, Block, ChunkConfig, Chunks, EosPlacement, Mode};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::dataset::{
    encode_dataset, read_records, select, ChatTemplate, DatasetKind, DatasetReport, EncodeOptions,
    Format, LongSamples, Record, TrainOn,
};
use crate::error::{Error, Result};
use crate::job::order::data_fingerprint;
use crate::job::text::as_text;
use crate::model::Model;
use crate::tokenizer::SpecialTokens;
use crate::train::Sample;

/// Where a job's data comes from. At least one of `text` and `dataset` is needed; both make a hybrid run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataSources {
    /// Raw text: a file, or a folder of `.txt` files (joined with the hard cut).
    pub text: Option<PathBuf>,
    /// A dataset: a JSON array or JSON Lines file of instruction records (with `format`) or chat records.
    pub dataset: Option<PathBuf>,
    /// An eval dataset of the same kind as `dataset`.
    pub eval_dataset: Option<PathBuf>,
    /// The format file of an instruction dataset.
    pub format: Option<PathBuf>,
    /// A chat template file for a chat dataset, instead of the model's own.
    pub chat_template: Option<PathBuf>,
    /// Multiplies every chat-template render limit (`None`: 1, the defaults; docs/datasets.md, "Render
    /// limits"). Only for a real template that needs more than the limits sized from its conversations allow.
    pub template_limits: Option<u64>,
}

/// How the data becomes samples. Every field is part of what a resume must keep (the samples it gives are
/// also fingerprinted); the names are the command line's setting keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataOptions {
    /// Maximum tokens per sample, as trained (BOS/EOS included).
    pub cutoff: usize,
    /// The hard-cut string (the text itself, not escaped); "" = none.
    pub hard_cut: String,
    /// Overlap blocks between neighbouring blocks (precise mode).
    pub overlap: bool,
    /// Precise blocks or the DEMENTOR sliding window.
    #[serde(with = "as_text")]
    pub mode: Mode,
    /// Which blocks end with EOS (instruction samples end with EOS unless this is `None`).
    #[serde(with = "as_text")]
    pub eos: EosPlacement,
    /// Start every block and instruction sample with BOS.
    pub bos: bool,
    /// Drop blocks of at most this many characters (outer whitespace not counted).
    pub min_chars: usize,
    /// Chat data: learn the replies only, or every token.
    #[serde(with = "as_text")]
    pub train_on: TrainOn,
    /// Instruction data: learn only what follows the first occurrence of this string ("" = everything).
    pub train_only_after: String,
    /// Drop dataset samples longer than the cutoff instead of truncating them.
    pub eliminate_long: bool,
    /// Hybrid runs: percent of the dataset samples used (a seeded sample).
    pub hybrid_data_ratio: f64,
    /// Hybrid runs: percent of the text blocks used (a seeded sample).
    pub hybrid_text_ratio: f64,
    /// Carve this fraction of the training samples out as the eval set (0 = off).
    pub eval_split: f64,
    /// Seed of the hybrid samples, the eval split and the epoch order.
    pub seed: u64,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self {
            cutoff: 256,
            hard_cut: "\n\n\n".into(),
            overlap: true,
            mode: Mode::Precise,
            eos: EosPlacement::EveryBlock,
            bos: true,
            min_chars: 0,
            train_on: TrainOn::Responses,
            train_only_after: String::new(),
            eliminate_long: false,
            hybrid_data_ratio: 100.0,
            hybrid_text_ratio: 100.0,
            eval_split: 0.0,
            seed: 42,
        }
    }
}

impl DataOptions {
    /// The slicer's configuration.
    pub fn chunk_config(&self) -> ChunkConfig {
        ChunkConfig::new(self.cutoff)
            .with_hard_cut(&self.hard_cut)
            .with_overlap(self.overlap)
            .with_mode(self.mode)
            .with_eos(self.eos)
            .with_bos(self.bos)
            .with_min_chars(self.min_chars)
    }
}

/// Where a sample came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A raw-text block (0-based, in slicing order).
    Block(usize),
    /// A dataset record (1-based, in its file).
    Record(usize),
}

/// The data files, read and checked; no model needed yet.
#[derive(Debug)]
pub struct DataFiles {
    sources: DataSources,
    options: DataOptions,
    text: Option<String>,
    records: Option<Vec<Record>>,
    eval_records: Option<Vec<Record>>,
    format: Option<Format>,
    template: Option<(String, PathBuf)>,
}

impl DataFiles {
    /// Reads every file `sources` names. Errors name the file and what to do: an empty text, a dataset record
    /// that is not an object, a setting that needs a file that is not given...
    pub fn read(sources: DataSources, options: DataOptions) -> Result<Self> {
        if sources.text.is_none() && sources.dataset.is_none() {
            return Err(Error::setting(
                "text",
                "no training data: give a raw text, a dataset, or both (hybrid)",
            ));
        }
        let text = match &sources.text {
            Some(path) => {
                let text = read_text(path, &options.hard_cut)?;
                if text.trim().is_empty() {
                    return Err(Error::setting(
                        "text",
                        format!(
                            "{} holds no text (it is empty or only whitespace and hard cuts): give a file or \
                             folder with training text",
                            path.display()
                        ),
                    ));
                }
                Some(text)
            }
            None => None,
        };
        let records = sources.dataset.as_deref().map(read_records).transpose()?;
        let eval_records = sources
            .eval_dataset
            .as_deref()
            .map(read_records)
            .transpose()?;
        let format = sources.format.as_deref().map(Format::load).transpose()?;
        let template = match &sources.chat_template {
            Some(path) => Some((
                std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?,
                path.clone(),
            )),
            None => None,
        };
        Ok(Self {
            sources,
            options,
            text,
            records,
            eval_records,
            format,
            template,
        })
    }
}

/// Hybrid runs: how many samples of each kind were used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hybrid {
    /// Dataset samples used.
    pub dataset_used: usize,
    /// Dataset samples encoded.
    pub dataset: usize,
    /// Text blocks used.
    pub text_used: usize,
    /// Text blocks sliced.
    pub text: usize,
}

/// Something about the data the user should know that is not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataNote {
    /// BOS was asked for but the model has none: samples start without one.
    NoBos,
    /// EOS was asked for but the model has none: samples end without one.
    NoEos,
}

impl std::fmt::Display for DataNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DataNote::NoBos => "the model has no BOS token; blocks start without one",
            DataNote::NoEos => "the model has no EOS token; blocks end without one",
        })
    }
}

/// Everything a job trains and evaluates on, exactly as trained, with what was done to get there.
#[derive(Debug, Clone)]
pub struct TrainingData {
    /// Training samples.
    pub samples: Vec<Sample>,
    /// Where each training sample came from.
    pub origins: Vec<Origin>,
    /// Eval samples (empty: no evaluation).
    pub eval: Vec<Sample>,
    /// Where each eval sample came from.
    pub eval_origins: Vec<Origin>,
    /// The raw text as sliced, and its size in bytes.
    pub chunks: Option<(Chunks, usize)>,
    /// What encoding the dataset did.
    pub dataset: Option<DatasetReport>,
    /// What encoding the eval dataset did.
    pub eval_report: Option<DatasetReport>,
    /// Hybrid runs: the counts of each kind.
    pub hybrid: Option<Hybrid>,
    /// Notes for the user.
    pub notes: Vec<DataNote>,
    /// The files it was read from.
    pub sources: DataSources,
    /// The options it was built with.
    pub options: DataOptions,
}

impl TrainingData {
    /// Samples given directly (already tokenized), with an optional eval set: for callers with their own
    /// pipeline. `options` still describes them for a resume (`cutoff`, `seed` for the epoch order...).
    pub fn from_samples(samples: Vec<Sample>, eval: Vec<Sample>, options: DataOptions) -> Self {
        Self {
            origins: (1..=samples.len()).map(Origin::Record).collect(),
            eval_origins: (1..=eval.len()).map(Origin::Record).collect(),
            samples,
            eval,
            chunks: None,
            dataset: None,
            eval_report: None,
            hybrid: None,
            notes: Vec::new(),
            sources: DataSources::default(),
            options,
        }
    }

    /// Slices the text, encodes the dataset(s) with `model`'s tokenizer and template, mixes the two (hybrid)
    /// and sets the eval set aside (eval dataset or seeded split).
    pub fn build(files: DataFiles, model: &Model) -> Result<Self> {
        let DataFiles {
            sources,
            options: o,
            text,
            records,
            eval_records,
            format,
            template,
        } = files;
        let context = model.config().max_position_embeddings;
        if o.cutoff > context {
            return Err(Error::setting(
                "cutoff",
                format!(
                    "{} tokens is more than the model takes: its context is {context} tokens \
                     (max_position_embeddings); give a cutoff of at most {context}",
                    o.cutoff
                ),
            ));
        }
        let tok = model.tokenizer();
        let special = model.special_tokens();
        let mut notes = Vec::new();
        let mut cfg = o.chunk_config();
        if o.bos && special.bos.is_none() {
            notes.push(DataNote::NoBos);
            cfg = cfg.with_bos(false);
        }
        if o.eos != EosPlacement::None && special.eos.is_none() {
            notes.push(DataNote::NoEos);
            cfg = cfg.with_eos(EosPlacement::None);
        }
        let mut chunks = None;
        let mut text_samples = Vec::new();
        if let (Some(text), Some(path)) = (text, &sources.text) {
            let sliced = chunk(&text, &cfg, tok)?;
            if sliced.blocks.is_empty() {
                return Err(Error::dataset(
                    path,
                    format!(
                        "no training blocks after slicing (min_chars = {}): give more text or a lower min_chars",
                        o.min_chars
                    ),
                ));
            }
            text_samples = encode_blocks(&sliced.blocks, tok, special)?
                .into_iter()
                .map(Sample::causal)
                .collect();
            chunks = Some((sliced, text.len()));
        }
        let kind = match (&records, format) {
            (None, _) => None,
            (Some(_), Some(format)) => Some(DatasetKind::Format {
                format,
                train_only_after: o.train_only_after.clone(),
            }),
            (Some(_), None) => {
                let (src, origin) = match template {
                    Some(t) => t,
                    None => match model.chat_template() {
                        Some(t) => (t.to_string(), model.source().to_path_buf()),
                        None => {
                            return Err(Error::setting(
                                "format",
                                format!(
                                    "{} holds no format and the model {} has no chat template: give a format \
                                     file for instruction data or a chat template for chat data",
                                    sources.dataset.as_deref().unwrap_or(Path::new("")).display(),
                                    model.source().display()
                                ),
                            ))
                        }
                    },
                };
                let name =
                    |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
                let mut template =
                    ChatTemplate::new(&src, &origin, &name(special.bos), &name(special.eos))?;
                if let Some(factor) = sources.template_limits {
                    template.scale_limits(factor);
                }
                Some(DatasetKind::Chat {
                    template,
                    train_on: o.train_on,
                })
            }
        };
        let opts = EncodeOptions {
            cutoff: o.cutoff,
            bos: o.bos && special.bos.is_some(),
            eos: o.eos != EosPlacement::None && special.eos.is_some(),
            long: if o.eliminate_long {
                LongSamples::Eliminate
            } else {
                LongSamples::Truncate
            },
        };
        let encode = |records: &[Record], path: &Path| match &kind {
            Some(kind) => encode_dataset(records, path, kind, &opts, tok, special),
            None => Err(Error::setting(
                "eval_dataset",
                "an eval dataset needs a training dataset to say how to read it",
            )),
        };
        let mut data = Self::from_samples(Vec::new(), Vec::new(), o.clone());
        data.notes = notes;
        let mut ds_samples = Vec::new();
        let mut ds_origins = Vec::new();
        if let (Some(records), Some(path)) = (&records, &sources.dataset) {
            let d = encode(records, path)?;
            if d.samples.is_empty() {
                return Err(Error::dataset(
                    path,
                    format!(
                        "no sample is left ({}): raise the cutoff, or check train_only_after / train_on",
                        crate::job::summary::report_text(&d.report, o.cutoff)
                            .trim()
                            .replace('\n', "; ")
                    ),
                ));
            }
            ds_origins = d.records.iter().map(|&r| Origin::Record(r)).collect();
            ds_samples = d.samples;
            data.dataset = Some(d.report);
        }
        let mut text_origins: Vec<Origin> = (0..text_samples.len()).map(Origin::Block).collect();
        if !ds_samples.is_empty() && !text_samples.is_empty() {
            let (nd, nt) = (ds_samples.len(), text_samples.len());
            let kd = select::sample_indices(
                nd,
                select::keep_count(nd, o.hybrid_data_ratio),
                o.seed ^ 0x6879_6264,
            );
            let kt = select::sample_indices(
                nt,
                select::keep_count(nt, o.hybrid_text_ratio),
                o.seed ^ 0x6879_7474,
            );
            data.hybrid = Some(Hybrid {
                dataset_used: kd.len(),
                dataset: nd,
                text_used: kt.len(),
                text: nt,
            });
            (ds_samples, ds_origins) = pick(&ds_samples, &ds_origins, &kd);
            (text_samples, text_origins) = pick(&text_samples, &text_origins, &kt);
        }
        if let (Some(records), Some(path)) = (&eval_records, &sources.eval_dataset) {
            let d = encode(records, path)?;
            if d.samples.is_empty() {
                return Err(Error::dataset(
                    path,
                    "no eval sample is left: raise the cutoff, or check train_only_after / train_on",
                ));
            }
            data.eval_origins = d.records.iter().map(|&r| Origin::Record(r)).collect();
            data.eval = d.samples;
            data.eval_report = Some(d.report);
        }
        data.samples = ds_samples.into_iter().chain(text_samples).collect();
        data.origins = ds_origins.into_iter().chain(text_origins).collect();
        if o.eval_split > 0.0 {
            let n = data.samples.len();
            let Some((train, eval)) = select::split_indices(n, o.eval_split, o.seed) else {
                return Err(Error::setting(
                    "eval_split",
                    format!(
                        "{} of {n} samples leaves an empty training or eval set: give more data or another fraction",
                        o.eval_split
                    ),
                ));
            };
            (data.eval, data.eval_origins) = pick(&data.samples, &data.origins, &eval);
            (data.samples, data.origins) = pick(&data.samples, &data.origins, &train);
        }
        if data.samples.is_empty() {
            return Err(Error::setting(
                "hybrid_data_ratio",
                "no training samples are left: give more data, or higher hybrid ratios",
            ));
        }
        data.chunks = chunks;
        data.sources = sources;
        Ok(data)
    }

    /// The fingerprint a resume checks: the training samples as token ids (with their labels and the eval set
    /// when any label is masked or an eval set exists). Stable across platforms and versions.
    pub fn fingerprint(&self) -> u64 {
        data_fingerprint(&self.samples, &self.eval)
    }
}

fn pick(samples: &[Sample], origins: &[Origin], idx: &[usize]) -> (Vec<Sample>, Vec<Origin>) {
    (
        idx.iter().map(|&i| samples[i].clone()).collect(),
        idx.iter().map(|&i| origins[i]).collect(),
    )
}

/// Encodes each block as `[BOS] + text + [EOS]` (as the block's flags say), checking that the length is what
/// the slicer measured.
pub fn encode_blocks(
    blocks: &[Block],
    tokenizer: &Tokenizer,
    special: SpecialTokens,
) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::with_capacity(blocks.len());
    for (i, b) in blocks.iter().enumerate() {
        let enc = tokenizer
            .encode(b.text.as_str(), false)
            .map_err(|e| Error::Tokenizer(format!("cannot tokenize block {i}: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if b.bos {
            ids.push(special.bos.ok_or_else(|| {
                Error::setting("bos", "the model has no BOS token: set bos to false")
            })?);
        }
        ids.extend_from_slice(enc.get_ids());
        if b.eos {
            ids.push(special.eos.ok_or_else(|| {
                Error::setting("eos", "the model has no EOS token: set eos to none")
            })?);
        }
        if ids.len() != b.tokens {
            return Err(Error::Tokenizer(format!(
                "block {i} encodes to {} tokens but the slicer counted {}; this is a bug, please report it",
                ids.len(),
                b.tokens
            )));
        }
        out.push(ids);
    }
    Ok(out)
}
