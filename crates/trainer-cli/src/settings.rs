//! Run settings: one flat set of keys shared by the TOML config file (`--config run.toml`), the
//! command-line flags (which override the file) and the `training_parameters.toml` written into every
//! output folder. The slicing settings are declared once for `train`, `check` and `chunk`. Enumerated
//! settings are parsed into the libraries' types when read; [`Settings::validate`] returns every error
//! with the key it belongs to; the `to_*` methods build the library objects of a job.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result};
use checkpoint_policy::{Improvement, LossSave};
use lora_targets::{Arch, LoraSettings, Preset, Targets};
use prts_chunker::{unescape_hard_cut, EosPlacement, Mode};
use schedulers::{Schedule, StepPlan, Warmup};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use trainer_core::dataset::TrainOn;
use trainer_core::job::{
    AdapterFormats, DataOptions, DataSources, EvalEvery, PlanSettings, ReportTo,
};
use trainer_core::{AdamWParams, BaseWeights, LoadOptions, Model, Optimizer, TrainConfig};

/// A library enum as a setting: written and read (TOML and flags) as the name users type, parsed into the
/// library's type at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Named<T>(pub T);

impl<T: FromStr> FromStr for Named<T>
where
    T::Err: fmt::Display,
{
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        T::from_str(s).map(Named).map_err(|e| e.to_string())
    }
}

impl<T: fmt::Display> fmt::Display for Named<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: fmt::Display> Serialize for Named<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de, T: FromStr> Deserialize<'de> for Named<T>
where
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Declares the settings once: the serde struct (file and saved parameters), one clap flag group per
/// heading (each flag an `Option`, so only flags the user gave override), and the merge.
macro_rules! settings {
    ($( $(#[doc = $gdoc:literal])* $flags:ident ($heading:literal) {
        $( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr ;)*
    } )*) => {
        /// Every setting of a training run. The TOML keys are the field names.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Settings {
            $($( $(#[doc = $doc])* pub $name: $ty, )*)*
        }

        impl Default for Settings {
            fn default() -> Self {
                Self { $($( $name: $default, )*)* }
            }
        }

        $(
            $(#[doc = $gdoc])*
            #[derive(Debug, Clone, Default, clap::Args)]
            pub struct $flags {
                $( $(#[doc = $doc])* #[arg(long, help_heading = $heading)] pub $name: Option<$ty>, )*
            }

            impl $flags {
                /// Writes the flags the user gave into `s`.
                pub fn apply_to(&self, s: &mut Settings) {
                    $( if let Some(v) = &self.$name { s.$name = v.clone(); } )*
                }

                /// The keys of the flags the user gave.
                pub fn given(&self) -> Vec<&'static str> {
                    let mut keys = Vec::new();
                    $( if self.$name.is_some() { keys.push(stringify!($name)); } )*
                    keys
                }
            }
        )*
    };
}

settings! {
    /// The slicing settings, shared by `train`, `check` and `chunk`.
    SliceFlags("Slicing settings (also config-file keys)") {
        /// Maximum tokens per block, as trained (BOS/EOS included).
        cutoff: usize = 256;
        /// Hard-cut string (backslash escapes \n, \t); blocks never cross it; "" disables it.
        hard_cut: String = "\\n\\n\\n".to_string();
        /// Add overlap blocks between neighbouring blocks (precise mode).
        overlap: bool = true;
        /// Slicing mode: precise (PRTS blocks, optional overlap) or dementor (sliding window, one sentence stride).
        mode: Named<Mode> = Named(Mode::Precise);
        /// Drop blocks of at most this many characters, leading and trailing whitespace not counted (reported).
        min_chars: usize = 0;
        /// EOS placement: every-block, hard-cut (blocks ending at a hard cut) or none.
        eos: Named<EosPlacement> = Named(EosPlacement::EveryBlock);
        /// Start every block with the model's BOS token.
        bos: bool = true;
    }
    /// The other settings of a training run.
    RunFlags("Settings (also config-file keys)") {
        /// Model: a Hugging Face folder or a .gguf file (or the first part of a split one, NAME-00001-of-0000N.gguf).
        model: PathBuf = PathBuf::new();
        /// Base weights in memory: keep (as stored in the file: Q4_K, Q8_0, F16, BF16...; far less memory) or f32 (expanded when loading).
        base_weights: Named<BaseWeights> = Named(BaseWeights::Keep);
        /// Raw text: a file, or a folder of .txt files (joined with the hard cut).
        text: PathBuf = PathBuf::new();
        /// Dataset: a JSON array or JSON Lines file of instruction records (with `format`) or chat records (`messages`).
        dataset: PathBuf = PathBuf::new();
        /// Format file for an instruction dataset: {"instruction,output": "... %instruction% ... %output%"}.
        format: PathBuf = PathBuf::new();
        /// Chat template (Jinja) for a chat dataset, instead of the model's own.
        chat_template: PathBuf = PathBuf::new();
        /// Chat datasets: learn the assistant replies only (responses) or every token (all).
        train_on: Named<TrainOn> = Named(TrainOn::Responses);
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
        /// LoRA rank r.
        rank: usize = 32;
        /// LoRA alpha (scale alpha/r, or alpha/sqrt(r) with rslora).
        alpha: f64 = 64.0;
        /// Rank-stabilised LoRA scaling alpha/sqrt(r).
        rslora: bool = false;
        /// LoRA dropout probability.
        dropout: f64 = 0.05;
        /// Target modules: q-v, q-k-v, q-k-v-o, k-v-down, all, all-linear, or a comma list (q_proj,v_proj).
        targets: Named<Targets> = Named(Targets::Preset(Preset::QV));
        /// Also train lm_head and embed_tokens (PEFT modules_to_save; a large adapter).
        train_head: bool = false;
        /// Adapter formats of every checkpoint and the final adapter: auto (peft,gguf for a .gguf base, peft otherwise), peft, or peft,gguf (adds adapter_model.gguf for llama.cpp).
        adapter_formats: Named<AdapterFormats> = Named(AdapterFormats::Auto);
        /// Report to: tensorboard (event files in OUTPUT/runs/ for `tensorboard --logdir`) or none; a comma list, or a list in a settings file.
        report_to: String = String::new();
        /// Start from this adapter's weights (a PEFT folder or a .gguf adapter; fresh optimizer, step 0); rank, alpha, rslora, targets and train_head are taken from it.
        init_adapter: PathBuf = PathBuf::new();
        /// Micro-batch size (blocks per forward pass).
        batch_size: usize = 4;
        /// Gradient accumulation (micro-batches per optimizer step); lowered when the data is too small.
        grad_accum: usize = 1;
        /// Epochs (fractions allowed).
        epochs: f64 = 3.0;
        /// Train exactly this many optimizer steps instead of `epochs` (Hugging Face max_steps; 0 = by epochs); warmup and decay are computed over them.
        max_steps: u64 = 0;
        /// Peak learning rate.
        learning_rate: f64 = 3e-4;
        /// LR schedule: linear, constant, constant_with_warmup, cosine, cosine_with_restarts, polynomial, inverse_sqrt, FP_low_epoch_annealing, FP_half_time_annealing, FP_raise_fall_creative, FP_3epoch_raise_hold_fall, FP_step_decay_with_warmup.
        scheduler: Named<Schedule> = Named(Schedule::Linear);
        /// Warmup in optimizer steps (wins over warmup_ratio when > 0).
        warmup_steps: u64 = 0;
        /// Warmup as a fraction of all optimizer steps (used when warmup_steps is 0).
        warmup_ratio: f64 = 0.1;
        /// NEFTune noise alpha (0 = off).
        neftune_alpha: f64 = 0.0;
        /// Optimizer: adamw, sgd, adagrad or adafactor (the Hugging Face Trainer's defaults); adamw_torch, adamw_hf, adamw_torch_fused, adamw_torch_xla, adamw_apex_fused and adamw_anyprecision are adamw; 8-bit ones are refused.
        optimizer: String = "adamw".to_string();
        /// The optimizer's own arguments, as the Trainer's optim_args: key=value,... (sgd: momentum, dampening, nesterov; adagrad: lr_decay, eps, initial_accumulator_value; adafactor: scale_parameter, relative_step, warmup_init, beta1, decay_rate, clip_threshold, eps1, eps2; adamw takes none).
        optim_args: String = String::new();
        /// Weight decay, for every optimizer as torch / transformers apply it (decoupled for adamw and adafactor, added to the gradient for sgd and adagrad).
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
}

/// Command-line overrides of every [`Settings`] key; a flag given wins over the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettingFlags {
    #[command(flatten)]
    pub slicing: SliceFlags,
    #[command(flatten)]
    pub run: RunFlags,
}

impl Settings {
    /// Applies the flags the user gave.
    pub fn apply(&mut self, flags: &SettingFlags) {
        flags.slicing.apply_to(self);
        flags.run.apply_to(self);
    }

    /// The keys of the flags the user gave.
    pub fn given(flags: &SettingFlags) -> Vec<&'static str> {
        let mut keys = flags.slicing.given();
        keys.extend(flags.run.given());
        keys
    }

    /// Parses TOML text over the defaults (as [`Settings::overlay_toml`]; the program reads its files through
    /// `sources::Resolved`, the tests and the settings fuzz target through this).
    pub fn from_toml(text: &str) -> Result<Self> {
        let mut s = Settings::default();
        s.overlay_toml(text)?;
        Ok(s)
    }

    /// Reads TOML text over these settings: the file's keys replace their values, the others stay; an unknown
    /// key is an error naming it. Returns the keys the file set. Files written before the slicing mode was one
    /// setting hold `dementor = true|false` instead of `mode`; that key is still read (as `mode`).
    pub fn overlay_toml(&mut self, text: &str) -> Result<Vec<String>> {
        let mut table: toml::Table = toml::from_str(text).map_err(one_line)?;
        if let Some(toml::Value::Boolean(dementor)) = table.get("dementor").cloned() {
            table.remove("dementor");
            let mode = if dementor {
                Mode::Dementor
            } else {
                Mode::Precise
            };
            table
                .entry("mode")
                .or_insert(toml::Value::String(mode.to_string()));
        }
        let keys = table.keys().cloned().collect();
        self.merge(table)?;
        Ok(keys)
    }

    /// Sets one key from a TOML value, read as the config file reads it (the same types, names and errors).
    pub fn set_key(&mut self, key: &str, value: toml::Value) -> Result<()> {
        let mut table = toml::Table::new();
        table.insert(key.to_string(), value);
        self.merge(table)
    }

    /// The value of `key` as TOML (`None` for an unknown key).
    pub fn value_of(&self, key: &str) -> Option<toml::Value> {
        match toml::Value::try_from(self).ok()? {
            toml::Value::Table(mut t) => t.remove(key),
            _ => None,
        }
    }

    /// Replaces the values of `table`'s keys, through the settings' deserializer (unknown keys and wrong
    /// types are errors naming the key); nothing changes on an error.
    fn merge(&mut self, table: toml::Table) -> Result<()> {
        let mut all = match toml::Value::try_from(&*self) {
            Ok(toml::Value::Table(t)) => t,
            Ok(_) => anyhow::bail!("settings are not a TOML table"),
            Err(e) => anyhow::bail!("settings cannot be written as TOML: {e}"),
        };
        for (key, value) in table {
            all.insert(key.clone(), list_as_comma_form(&key, value));
        }
        *self = all.try_into().map_err(one_line)?;
        Ok(())
    }

    /// The TOML text of these settings (what `training_parameters.toml` holds).
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }
}

/// The setting a library error names (`optim_args` for a bad optimizer argument), else `default`.
fn core_field<'a>(e: &'a trainer_core::Error, default: &'a str) -> &'a str {
    match e {
        trainer_core::Error::Setting { field, .. } => field,
        _ => default,
    }
}

/// `adapter_formats = ["peft", "gguf"]`, `report_to = ["tensorboard"]`: for the settings that hold a list of
/// names, a list is their comma form.
fn list_as_comma_form(key: &str, value: toml::Value) -> toml::Value {
    match value {
        toml::Value::Array(list) if matches!(key, "adapter_formats" | "report_to") => {
            let names: Vec<String> = list
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect();
            toml::Value::String(names.join(","))
        }
        other => other,
    }
}

/// A TOML error as one line.
fn one_line(e: toml::de::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", e.to_string().trim().replace('\n', " "))
}

/// A setting that is out of range, with the key it belongs to (to show it next to the field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The key.
    pub field: String,
    /// What is wrong and what to do, naming the key.
    pub message: String,
}

/// Every [`SettingError`] of a set of settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingErrors(pub Vec<SettingError>);

impl fmt::Display for SettingErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let messages: Vec<&str> = self.0.iter().map(|e| e.message.as_str()).collect();
        f.write_str(&messages.join("; "))
    }
}

impl std::error::Error for SettingErrors {}

impl Settings {
    /// Checks ranges and combinations; every error names its key. All errors are returned, in key order of
    /// the checks.
    pub fn validate(&self) -> std::result::Result<(), SettingErrors> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| {
            errors.push(SettingError {
                field: field.to_string(),
                message,
            })
        };
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
                fail(key, format!("setting `{key}` is {v}: give a finite number"));
            } else if v < 0.0 {
                fail(key, format!("setting `{key}` is {v}: give a value >= 0"));
            }
        }
        if self.rank == 0 {
            fail(
                "rank",
                "setting `rank` is 0: give a LoRA rank >= 1 (e.g. 8, 16, 32)".into(),
            );
        }
        if self.alpha == 0.0 {
            fail("alpha", "setting `alpha` is 0: the adapter would have no effect; give alpha > 0 (e.g. 2 x rank)".into());
        }
        if self.learning_rate == 0.0 {
            fail(
                "learning_rate",
                "setting `learning_rate` is 0: give a learning rate > 0 (e.g. 3e-4)".into(),
            );
        }
        if self.epochs == 0.0 && self.max_steps == 0 {
            fail(
                "epochs",
                "setting `epochs` is 0: give epochs > 0 (fractions allowed), or max_steps".into(),
            );
        }
        if self.batch_size == 0 {
            fail(
                "batch_size",
                "setting `batch_size` is 0: give a micro-batch size >= 1".into(),
            );
        }
        if self.grad_accum == 0 {
            fail(
                "grad_accum",
                "setting `grad_accum` is 0: give a gradient accumulation >= 1".into(),
            );
        }
        if self.dropout >= 1.0 {
            fail(
                "dropout",
                format!(
                    "setting `dropout` is {}: give a probability in [0, 1)",
                    self.dropout
                ),
            );
        }
        if self.eval_split >= 1.0 {
            fail(
                "eval_split",
                format!(
                    "setting `eval_split` is {}: give a fraction of the training samples in [0, 1), e.g. 0.1",
                    self.eval_split
                ),
            );
        }
        for (key, v) in [
            ("hybrid_data_ratio", self.hybrid_data_ratio),
            ("hybrid_text_ratio", self.hybrid_text_ratio),
        ] {
            if v > 100.0 {
                fail(
                    key,
                    format!("setting `{key}` is {v}: give a percentage in [0, 100]"),
                );
            }
        }
        let has = |p: &PathBuf| !p.as_os_str().is_empty();
        if self.eval_split > 0.0 && has(&self.eval_dataset) {
            fail(
                "eval_split",
                "settings `eval_split` and `eval_dataset` are both set: give one of them".into(),
            );
        }
        if !has(&self.dataset) {
            for (key, set) in [
                ("format", has(&self.format)),
                ("chat_template", has(&self.chat_template)),
                ("eval_dataset", has(&self.eval_dataset)),
                ("train_only_after", !self.train_only_after.is_empty()),
            ] {
                if set {
                    fail(
                        key,
                        format!("setting `{key}` needs a dataset: give --dataset FILE"),
                    );
                }
            }
        } else if has(&self.format) && has(&self.chat_template) {
            fail(
                "chat_template",
                "settings `format` and `chat_template` are both set: a dataset is either instruction data \
                 (format) or chat data (chat template)"
                    .into(),
            );
        } else if !has(&self.format) && !self.train_only_after.is_empty() {
            fail(
                "train_only_after",
                "setting `train_only_after` applies to instruction datasets (with --format); for chat data use \
                 --train-on responses"
                    .into(),
            );
        }
        if let Err(e) = self.optimizer() {
            fail(core_field(&e, "optimizer"), e.to_string());
        }
        if let Err(e) = self.report_to() {
            fail(core_field(&e, "report_to"), e.to_string());
        }
        self.check_recordable(&mut fail);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SettingErrors(errors))
        }
    }

    /// Checks that `training_parameters.toml` can record these settings exactly (a flag can give what TOML
    /// cannot hold), so a run never fails on it after the model loaded and the old run was replaced.
    fn check_recordable(&self, fail: &mut impl FnMut(&str, String)) {
        for (key, path) in [
            ("model", &self.model),
            ("text", &self.text),
            ("output", &self.output),
        ] {
            if path.to_str().is_none() {
                fail(
                    key,
                    format!(
                        "setting `{key}`: the path {path:?} is not valid UTF-8; rename it \
                         (training_parameters.toml records paths as text)"
                    ),
                );
            }
        }
        if let Ok(serde_json::Value::Object(values)) = serde_json::to_value(self) {
            for (key, v) in values {
                if let Some(n) = v.as_u64().filter(|&n| i64::try_from(n).is_err()) {
                    fail(
                        &key,
                        format!("setting `{key}` is {n}: give at most {}", i64::MAX),
                    );
                }
            }
        }
    }

    /// Where the data is read from (and the render-limit factor of [`TEMPLATE_LIMITS_VAR`]).
    pub fn data_sources(&self) -> anyhow::Result<DataSources> {
        let path = |p: &PathBuf| (!p.as_os_str().is_empty()).then(|| p.clone());
        Ok(DataSources {
            text: path(&self.text),
            dataset: path(&self.dataset),
            eval_dataset: path(&self.eval_dataset),
            format: path(&self.format),
            chat_template: path(&self.chat_template),
            template_limits: template_limit_scale()?,
        })
    }

    /// How the data becomes samples (escapes in `hard_cut` and `train_only_after` resolved).
    pub fn data_options(&self) -> DataOptions {
        DataOptions {
            cutoff: self.cutoff,
            hard_cut: unescape_hard_cut(&self.hard_cut),
            overlap: self.overlap,
            mode: self.mode.0,
            eos: self.eos.0,
            bos: self.bos,
            min_chars: self.min_chars,
            train_on: self.train_on.0,
            train_only_after: unescape_hard_cut(&self.train_only_after),
            eliminate_long: self.eliminate_long,
            hybrid_data_ratio: self.hybrid_data_ratio,
            hybrid_text_ratio: self.hybrid_text_ratio,
            eval_split: self.eval_split,
            seed: self.seed,
        }
    }

    /// The step plan's settings.
    pub fn plan_settings(&self) -> PlanSettings {
        PlanSettings {
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            epochs: self.epochs,
            max_steps: (self.max_steps > 0).then_some(self.max_steps),
            warmup: if self.warmup_steps > 0 {
                Warmup::Steps(self.warmup_steps)
            } else {
                Warmup::Ratio(self.warmup_ratio)
            },
            schedule: self.scheduler.0,
            learning_rate: self.learning_rate,
        }
    }

    /// The eval cadence.
    pub fn eval_every(&self) -> EvalEvery {
        if self.eval_steps > 0 {
            EvalEvery::Steps(self.eval_steps)
        } else {
            EvalEvery::EpochEnd
        }
    }

    /// How the model is loaded (`base_weights`; the memory limit is the process's own).
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            base_weights: self.base_weights.0,
            ..LoadOptions::default()
        }
    }

    /// The optimizer (`optimizer` with `optim_args`), and a note to show when its name is an alias of adamw.
    pub fn optimizer(&self) -> trainer_core::Result<(Optimizer, Option<&'static str>)> {
        let (optimizer, note) = Optimizer::from_name(&self.optimizer)?;
        let optimizer = optimizer.with_args(&self.optim_args)?;
        optimizer.validate()?;
        Ok((optimizer, note))
    }

    /// Where the run reports besides its training log (`report_to`).
    pub fn report_to(&self) -> trainer_core::Result<ReportTo> {
        let names: Vec<&str> = self.report_to.split(',').collect();
        ReportTo::parse(&names)
    }

    /// The trainer configuration (the job sets the pad token).
    pub fn train_config(&self) -> Result<TrainConfig> {
        Ok(TrainConfig {
            optimizer: self.optimizer()?.0,
            seed: self.seed,
            adamw: AdamWParams {
                weight_decay: self.weight_decay,
                ..AdamWParams::default()
            },
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            neftune_alpha: (self.neftune_alpha > 0.0).then_some(self.neftune_alpha),
            gradient_checkpointing: self.gradient_checkpointing,
            ..TrainConfig::default()
        })
    }

    /// The LoRA settings, with the targets resolved against `model`.
    pub fn lora(&self, model: &Model) -> Result<LoraSettings> {
        let arch = Arch::from_str(&model.config().model_type).context("model architecture")?;
        let lora = LoraSettings {
            r: self.rank,
            alpha: self.alpha,
            use_rslora: self.rslora,
            dropout: self.dropout,
            target_modules: self
                .targets
                .0
                .resolve(arch, &model.linear_modules())
                .context("setting `targets`")?,
            modules_to_save: if self.train_head {
                vec!["lm_head".into(), "embed_tokens".into()]
            } else {
                Vec::new()
            },
        };
        lora.validate()?;
        Ok(lora)
    }

    /// The checkpoint-policy settings of a run with `plan`.
    pub fn policy_settings(&self, plan: &StepPlan) -> checkpoint_policy::Settings {
        let pos = |v: f64| (v > 0.0).then_some(v);
        checkpoint_policy::Settings {
            save_every: (self.save_every > 0).then_some(self.save_every),
            save_every_below_loss: pos(self.save_every_below_loss),
            loss_save: pos(self.save_under_loss).map(|threshold| LossSave {
                threshold,
                ..self.loss_save_rule(plan)
            }),
            save_each_epoch: self.save_each_epoch,
            save_final: false,
            stop_at_loss: pos(self.stop_at_loss),
            stop_loss_window: self.stop_loss_window.max(1),
            stop_at_epoch: (self.stop_at_epoch > 0).then_some(self.stop_at_epoch),
            keep_last: (self.keep_last > 0).then_some(self.keep_last),
            keep_best: (self.keep_best > 0).then_some(self.keep_best),
            save_best_eval: self.save_best_eval,
            ..checkpoint_policy::Settings::default()
        }
    }

    /// The loss-save rule of these settings (threshold aside): relative or the original's absolute drop,
    /// after the original's first tenth of an epoch.
    pub fn loss_save_rule(&self, plan: &StepPlan) -> LossSave {
        LossSave {
            threshold: 1.0,
            improvement: if self.absolute_improvement {
                Improvement::Absolute(0.09)
            } else {
                Improvement::Relative(self.loss_improvement)
            },
            min_step: LossSave::original_min_step(plan.steps_per_epoch),
            ..LossSave::default()
        }
    }
}

/// The environment variable that multiplies every chat-template render limit (docs/datasets.md, "Render
/// limits").
pub const TEMPLATE_LIMITS_VAR: &str = "TRAINER_TEMPLATE_LIMITS";

/// The factor of [`TEMPLATE_LIMITS_VAR`]: `None` when unset.
fn template_limit_scale() -> anyhow::Result<Option<u64>> {
    match std::env::var(TEMPLATE_LIMITS_VAR) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if (1..=1_000_000).contains(&n) => Ok(Some(n)),
            _ => anyhow::bail!(
                "{TEMPLATE_LIMITS_VAR}={v:?} is not a whole number from 1 to 1000000: it multiplies every \
                 chat-template render limit (e.g. 4); unset it for the defaults"
            ),
        },
        Err(e) => anyhow::bail!("{TEMPLATE_LIMITS_VAR} cannot be read: {e}"),
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
            run: RunFlags {
                rank: Some(4),
                ..RunFlags::default()
            },
            ..SettingFlags::default()
        };
        s.apply(&flags);
        assert_eq!((s.rank, s.alpha), (4, 16.0));
    }

    #[test]
    fn enumerated_settings_are_typed_and_the_old_dementor_key_is_read() {
        let s = Settings::from_toml("dementor = true\neos = \"hard-cut\"\nscheduler = \"Cosine\"\ntargets = \"q_proj,o_proj\"\n").unwrap();
        assert_eq!(s.mode.0, Mode::Dementor);
        assert_eq!(s.eos.0, EosPlacement::HardCutOnly);
        assert_eq!(s.scheduler.0.to_string(), "cosine");
        assert_eq!(
            s.targets.0,
            Targets::Modules(vec!["q_proj".into(), "o_proj".into()])
        );
        let text = s.to_toml().unwrap();
        assert!(
            text.contains("mode = \"dementor\"") && !text.contains("dementor = "),
            "{text}"
        );
        assert_eq!(Settings::from_toml(&text).unwrap(), s);
        let err = Settings::from_toml("eos = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("eos") && err.contains("every-block"), "{err}");
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
        let err = s.validate().unwrap_err();
        assert_eq!(err.0[0].field, "seed");
        assert!(err.to_string().contains("`seed`"), "{err}");
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
            let err = s.validate().unwrap_err();
            assert!(err.0.iter().any(|e| e.field == key), "{toml}: {err}");
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
        // Every error at once, each with its key.
        let s = Settings::from_toml("rank = 0\nalpha = 0.0\ndropout = 1.5").unwrap();
        let fields: Vec<String> = s
            .validate()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["rank", "alpha", "dropout"]);
    }
}
