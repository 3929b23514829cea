//! Run settings: one flat set of keys shared by the TOML config file
//! (`--config run.toml`), the command-line flags (which override the file)
//! and the `training_parameters.toml` written into every output folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Declares the settings once: the serde struct (file and saved parameters),
/// the clap flags (each an `Option`, so only flags the user gave override),
/// and the merge.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr ;)*) => {
        /// Every setting of a training run. The TOML keys are the field names.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Self { $( $name: $default, )* }
            }
        }

        /// Command-line overrides of [`Settings`]; a flag given wins over the config file.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct SettingFlags {
            $( $(#[doc = $doc])* #[arg(long, help_heading = "Settings (also config-file keys)")] pub $name: Option<$ty>, )*
        }

        impl Settings {
            /// Applies the flags the user gave.
            pub fn apply(&mut self, flags: &SettingFlags) {
                $( if let Some(v) = &flags.$name { self.$name = v.clone(); } )*
            }
        }
    };
}

settings! {
    /// Model: a Hugging Face folder or a .gguf file (or the first part of a split one, NAME-00001-of-0000N.gguf).
    model: PathBuf = PathBuf::new();
    /// Base weights in memory: keep (as stored in the file: Q4_K, Q8_0, F16, BF16...; far less memory) or f32 (expanded when loading).
    base_weights: String = "keep".to_string();
    /// Raw text: a file, or a folder of .txt files (joined with the hard cut).
    text: PathBuf = PathBuf::new();
    /// Dataset: a JSON array or JSON Lines file of instruction records (with `format`) or chat records (`messages`).
    dataset: PathBuf = PathBuf::new();
    /// Format file for an instruction dataset: {"instruction,output": "... %instruction% ... %output%"}.
    format: PathBuf = PathBuf::new();
    /// Chat template (Jinja) for a chat dataset, instead of the model's own.
    chat_template: PathBuf = PathBuf::new();
    /// Chat datasets: learn the assistant replies only (responses) or every token (all).
    train_on: String = "responses".to_string();
    /// Instruction datasets: learn only what follows the first occurrence of this string ("" = everything).
    train_only_after: String = String::new();
    /// Drop dataset samples longer than the cutoff instead of truncating them (counted and reported).
    eliminate_long: bool = false;
    /// Evaluation dataset (same kind and format as the dataset), scored with the eval loss.
    eval_dataset: PathBuf = PathBuf::new();
    /// Carve this fraction of the training samples out as the eval set (seeded; 0 = off).
    eval_split: f64 = 0.0;
    /// Evaluate every N optimizer steps (0 = at the end of every epoch); the last step is always evaluated.
    eval_steps: u64 = 0;
    /// Save `checkpoint-N-best-LOSS` whenever the eval loss beats every earlier one.
    save_best_eval: bool = true;
    /// Hybrid runs (text and dataset): percent of the dataset samples used (a seeded sample).
    hybrid_data_ratio: f64 = 100.0;
    /// Hybrid runs (text and dataset): percent of the text blocks used (a seeded sample).
    hybrid_text_ratio: f64 = 100.0;
    /// Batch samples of similar length together (less padding); the batch order stays seeded.
    group_by_length: bool = false;
    /// Output folder for the adapter, checkpoints, log and graph.
    output: PathBuf = PathBuf::new();
    /// Maximum tokens per block, as trained (BOS/EOS included).
    cutoff: usize = 256;
    /// Hard-cut string (backslash escapes \n, \t); blocks never cross it; "" disables it.
    hard_cut: String = "\\n\\n\\n".to_string();
    /// Add overlap blocks between neighbouring blocks (precise mode).
    overlap: bool = true;
    /// DEMENTOR: sliding-window blocks, one sentence stride, instead of precise blocks.
    dementor: bool = false;
    /// Drop blocks of at most this many characters, leading and trailing whitespace not counted (reported).
    min_chars: usize = 0;
    /// EOS placement: every-block, hard-cut (blocks ending at a hard cut) or none.
    eos: String = "every-block".to_string();
    /// Start every block with the model's BOS token.
    bos: bool = true;
    /// LoRA rank r.
    rank: usize = 32;
    /// LoRA alpha (scale alpha/r, or alpha/sqrt(r) with rslora).
    alpha: f64 = 64.0;
    /// Rank-stabilised LoRA scaling alpha/sqrt(r).
    rslora: bool = false;
    /// LoRA dropout probability.
    dropout: f64 = 0.05;
    /// Target modules: q-v, q-k-v, q-k-v-o, k-v-down, all, all-linear, or a comma list (q_proj,v_proj).
    targets: String = "q-v".to_string();
    /// Also train lm_head and embed_tokens (PEFT modules_to_save; a large adapter).
    train_head: bool = false;
    /// Micro-batch size (blocks per forward pass).
    batch_size: usize = 4;
    /// Gradient accumulation (micro-batches per optimizer step); lowered when the data is too small.
    grad_accum: usize = 1;
    /// Epochs (fractions allowed).
    epochs: f64 = 3.0;
    /// Peak learning rate.
    learning_rate: f64 = 3e-4;
    /// LR schedule: linear, constant, constant_with_warmup, cosine, cosine_with_restarts, polynomial, inverse_sqrt, FP_low_epoch_annealing, FP_half_time_annealing, FP_raise_fall_creative, FP_3epoch_raise_hold_fall, FP_step_decay_with_warmup.
    scheduler: String = "linear".to_string();
    /// Warmup in optimizer steps (wins over warmup_ratio when > 0).
    warmup_steps: u64 = 0;
    /// Warmup as a fraction of all optimizer steps (used when warmup_steps is 0).
    warmup_ratio: f64 = 0.1;
    /// NEFTune noise alpha (0 = off).
    neftune_alpha: f64 = 0.0;
    /// AdamW weight decay.
    weight_decay: f64 = 0.0;
    /// Clip the global gradient norm to this value (0 = no clipping).
    max_grad_norm: f64 = 1.0;
    /// Recompute each layer in the backward pass (less memory for long cutoffs, one extra forward).
    gradient_checkpointing: bool = false;
    /// Seed for LoRA init, dropout, NEFTune noise and the data order.
    seed: u64 = 42;
    /// Save a checkpoint every N optimizer steps (0 = off).
    save_every: u64 = 0;
    /// Hold periodic saves back until the loss is below this value (0 = no gate).
    save_every_below_loss: f64 = 0.0;
    /// Save when the loss falls under this value, then again on each real improvement (0 = off).
    save_under_loss: f64 = 1.8;
    /// Relative loss drop that counts as an improvement for loss saves (0.1 = 10%).
    loss_improvement: f64 = 0.1;
    /// Use the original's absolute 0.09 drop instead of the relative one.
    absolute_improvement: bool = false;
    /// Save a checkpoint at the end of every epoch.
    save_each_epoch: bool = true;
    /// Stop when the loss is at or below this value (0 = off).
    stop_at_loss: f64 = 0.0;
    /// Average the loss over this many steps for stop_at_loss (1 = the raw loss).
    stop_loss_window: u32 = 1;
    /// Stop at the end of this epoch (0 = off).
    stop_at_epoch: u64 = 0;
    /// Retention: keep the newest N periodic/epoch/loss checkpoints (0 = no limit; user checkpoints are never deleted).
    keep_last: usize = 0;
    /// Retention: keep the N checkpoints with the best loss; with keep_last, a checkpoint either rule keeps stays (0 = no limit).
    keep_best: usize = 0;
}

impl Settings {
    /// Reads a TOML config file; an unknown key is an error naming it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("config {}", path.display()))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim().replace('\n', " ")))
    }

    /// The TOML text of these settings (what `training_parameters.toml` holds).
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }

    /// Checks ranges the libraries do not check themselves; every error names the key.
    pub fn validate(&self) -> Result<()> {
        let finite = [
            ("alpha", self.alpha),
            ("dropout", self.dropout),
            ("epochs", self.epochs),
            ("learning_rate", self.learning_rate),
            ("warmup_ratio", self.warmup_ratio),
            ("neftune_alpha", self.neftune_alpha),
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
            ("save_every_below_loss", self.save_every_below_loss),
            ("save_under_loss", self.save_under_loss),
            ("loss_improvement", self.loss_improvement),
            ("stop_at_loss", self.stop_at_loss),
            ("eval_split", self.eval_split),
            ("hybrid_data_ratio", self.hybrid_data_ratio),
            ("hybrid_text_ratio", self.hybrid_text_ratio),
        ];
        for (key, v) in finite {
            if !v.is_finite() {
                bail!("setting `{key}` is {v}: give a finite number");
            }
            if v < 0.0 {
                bail!("setting `{key}` is {v}: give a value >= 0");
            }
        }
        if self.rank == 0 {
            bail!("setting `rank` is 0: give a LoRA rank >= 1 (e.g. 8, 16, 32)");
        }
        if self.alpha == 0.0 {
            bail!("setting `alpha` is 0: the adapter would have no effect; give alpha > 0 (e.g. 2 x rank)");
        }
        if self.learning_rate == 0.0 {
            bail!("setting `learning_rate` is 0: give a learning rate > 0 (e.g. 3e-4)");
        }
        if self.epochs == 0.0 {
            bail!("setting `epochs` is 0: give epochs > 0 (fractions allowed)");
        }
        if self.batch_size == 0 {
            bail!("setting `batch_size` is 0: give a micro-batch size >= 1");
        }
        if self.grad_accum == 0 {
            bail!("setting `grad_accum` is 0: give a gradient accumulation >= 1");
        }
        if self.dropout >= 1.0 {
            bail!(
                "setting `dropout` is {}: give a probability in [0, 1)",
                self.dropout
            );
        }
        if self.eval_split >= 1.0 {
            bail!(
                "setting `eval_split` is {}: give a fraction of the training samples in [0, 1), e.g. 0.1",
                self.eval_split
            );
        }
        for (key, v) in [
            ("hybrid_data_ratio", self.hybrid_data_ratio),
            ("hybrid_text_ratio", self.hybrid_text_ratio),
        ] {
            if v > 100.0 {
                bail!("setting `{key}` is {v}: give a percentage in [0, 100]");
            }
        }
        if self.eval_split > 0.0 && !self.eval_dataset.as_os_str().is_empty() {
            bail!("settings `eval_split` and `eval_dataset` are both set: give one of them");
        }
        if !matches!(self.train_on.as_str(), "responses" | "all") {
            bail!(
                "setting `train_on` is {:?}: give responses or all",
                self.train_on
            );
        }
        let has = |p: &PathBuf| !p.as_os_str().is_empty();
        if self.dataset.as_os_str().is_empty() {
            for (key, set) in [
                ("format", has(&self.format)),
                ("chat_template", has(&self.chat_template)),
                ("eval_dataset", has(&self.eval_dataset)),
                ("train_only_after", !self.train_only_after.is_empty()),
            ] {
                if set {
                    bail!("setting `{key}` needs a dataset: give --dataset FILE");
                }
            }
        } else if has(&self.format) && has(&self.chat_template) {
            bail!("settings `format` and `chat_template` are both set: a dataset is either instruction data (format) or chat data (chat template)");
        } else if !has(&self.format) && !self.train_only_after.is_empty() {
            bail!("setting `train_only_after` applies to instruction datasets (with --format); for chat data use --train-on responses");
        }
        if !matches!(self.eos.as_str(), "every-block" | "hard-cut" | "none") {
            bail!(
                "setting `eos` is {:?}: give every-block, hard-cut or none",
                self.eos
            );
        }
        self.check_recordable()
    }

    /// Checks that `training_parameters.toml` can record these settings
    /// exactly (a flag can give what TOML cannot hold), so a run never
    /// fails on it after the model loaded and the old run was replaced.
    fn check_recordable(&self) -> Result<()> {
        for (key, path) in [
            ("model", &self.model),
            ("text", &self.text),
            ("output", &self.output),
        ] {
            if path.to_str().is_none() {
                bail!(
                    "setting `{key}`: the path {path:?} is not valid UTF-8; rename it \
                     (training_parameters.toml records paths as text)"
                );
            }
        }
        if let Ok(serde_json::Value::Object(values)) = serde_json::to_value(self) {
            for (key, v) in values {
                if let Some(n) = v.as_u64().filter(|&n| i64::try_from(n).is_err()) {
                    bail!("setting `{key}` is {n}: give at most {}", i64::MAX);
                }
            }
        }
        let text = self
            .to_toml()
            .context("these settings cannot be written to training_parameters.toml")?;
        if Self::from_toml(&text).ok().as_ref() != Some(self) {
            bail!("these settings do not read back from training_parameters.toml unchanged");
        }
        Ok(())
    }
}

/// Settings a resumed run may change: the length and learning-rate plan of
/// the rest of the run, the ones that only steer checkpoints and stopping,
/// and where the text, dataset, format, template and eval set are read from (what they produce, the samples
/// as token ids and labels, is checked by the data fingerprint).
const RESUME_MAY_CHANGE: &[&str] = &[
    "text",
    "dataset",
    "format",
    "chat_template",
    "eval_dataset",
    "eval_steps",
    "save_best_eval",
    "output",
    "epochs",
    "learning_rate",
    "scheduler",
    "warmup_steps",
    "warmup_ratio",
    "save_every",
    "save_every_below_loss",
    "save_under_loss",
    "loss_improvement",
    "absolute_improvement",
    "save_each_epoch",
    "stop_at_loss",
    "stop_loss_window",
    "stop_at_epoch",
    "keep_last",
    "keep_best",
];

impl Settings {
    /// The keys whose values differ between `self` (what a checkpoint was
    /// trained with) and `now`, other than those a resume may change.
    pub fn resume_conflicts(&self, now: &Settings) -> Vec<String> {
        let table = |s: &Settings| toml::Table::try_from(s).unwrap_or_default();
        let (a, b) = (table(self), table(now));
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| !RESUME_MAY_CHANGE.contains(&k.as_str()) && a.get(*k) != b.get(*k))
            .map(|k| {
                let show =
                    |v: Option<&toml::Value>| v.map_or("unset".to_string(), ToString::to_string);
                format!("{k} ({} -> {})", show(a.get(k)), show(b.get(k)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = Settings::from_toml("rank = 8\nlerning_rate = 1e-4\n").unwrap_err();
        assert!(err.to_string().contains("lerning_rate"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let mut s = Settings::from_toml("rank = 8\nalpha = 16.0\n").unwrap();
        let flags = SettingFlags {
            rank: Some(4),
            ..SettingFlags::default()
        };
        s.apply(&flags);
        assert_eq!((s.rank, s.alpha), (4, 16.0));
    }

    #[test]
    fn resume_conflicts_name_the_keys_that_matter() {
        let saved = Settings::default();
        let mut now = saved.clone();
        now.stop_at_loss = 1.2;
        now.text = "moved.txt".into();
        assert!(saved.resume_conflicts(&now).is_empty());
        now.seed = 7;
        now.alpha = 16.0;
        let c = saved.resume_conflicts(&now);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(
            c[0].starts_with("alpha") && c[1].starts_with("seed"),
            "{c:?}"
        );
    }

    #[test]
    fn toml_round_trip() {
        let s = Settings {
            model: "m.gguf".into(),
            hard_cut: "\\n\\n".into(),
            ..Settings::default()
        };
        let back = Settings::from_toml(&s.to_toml().unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn what_toml_cannot_record_is_rejected_with_the_key() {
        let mut s = Settings {
            seed: u64::MAX,
            ..Settings::default()
        };
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("`seed`"), "{err}");
        s.seed = i64::MAX as u64;
        s.validate().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            s.text = PathBuf::from(std::ffi::OsStr::from_bytes(b"t\xffx.txt"));
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains("`text`"), "{err}");
        }
    }

    #[test]
    fn bad_numbers_are_rejected_with_the_key() {
        for (toml, key) in [
            ("rank = 0", "rank"),
            ("alpha = 0.0", "alpha"),
            ("learning_rate = -1.0", "learning_rate"),
            ("epochs = nan", "epochs"),
            ("dropout = 1.5", "dropout"),
            ("eos = \"sometimes\"", "eos"),
            ("train_on = \"prompts\"", "train_on"),
            ("eval_split = 1.0", "eval_split"),
            ("hybrid_text_ratio = 101.0", "hybrid_text_ratio"),
            ("format = \"f.json\"", "format"),
            (
                "dataset = \"d.json\"\ntrain_only_after = \"x\"",
                "train_only_after",
            ),
            (
                "dataset = \"d.json\"\neval_dataset = \"e.json\"\neval_split = 0.1",
                "eval_split",
            ),
        ] {
            let s = Settings::from_toml(toml).unwrap();
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }
}
