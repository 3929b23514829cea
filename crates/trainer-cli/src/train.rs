//! `trainer-cli train`: resolve the settings, load the model, slice the
//! text, plan the steps, then either print the plan (`--dry-run`) or run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use lora_targets::{resolve, Arch, LoraSettings, Preset};
use prts_chunker::{chunk, read_text, unescape_hard_cut, ChunkConfig, Chunks, EosPlacement, Mode};
use schedulers::{PlanInput, Schedule, Scheduler, StepPlan, Warmup};
use trainer_core::Model;

use crate::chunk::summary_text;
use crate::data::encode_blocks;
use crate::dataset::{self, RunData};
use crate::lock;
use crate::output::{self, PARAMETERS_FILE, PREVIEW_FILE};
use crate::progress::ProgressMode;
use crate::session;
use crate::settings::{SettingFlags, Settings};

/// Arguments of `trainer-cli train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A TOML file with settings (the keys of training_parameters.toml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the resolved settings, data summary, step plan and first blocks, write the LR preview, and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace the training output already in --output.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue a run: `latest` (newest checkpoint of --output) or a checkpoint folder.
    #[arg(long)]
    pub resume: Option<String>,
    /// Progress display.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Blocks shown by --dry-run.
    #[arg(long, default_value_t = 3)]
    pub show_blocks: usize,
    /// Write every training and eval sample as trained (decoded, special tokens shown, masked spans marked) to
    /// this JSON Lines file.
    #[arg(long)]
    pub dump_dataset: Option<PathBuf>,
    #[command(flatten)]
    pub settings: SettingFlags,
}

/// Everything the run needs, resolved and validated.
pub struct Prepared {
    /// The settings as resolved (file, then flags).
    pub settings: Settings,
    /// The loaded base model.
    pub model: Model,
    /// The LoRA settings.
    pub lora: LoraSettings,
    /// Raw-text blocks as chunked (`None`: no --text).
    pub chunks: Option<Chunks>,
    /// Training and eval samples, exactly as trained.
    pub data: RunData,
    /// Step accounting.
    pub plan: StepPlan,
    /// The learning-rate schedule.
    pub scheduler: Scheduler,
    /// Bytes of input text.
    pub text_bytes: usize,
}

/// The settings of this invocation: the config file (or, when resuming,
/// the run's own training_parameters.toml), then the flags.
pub fn resolve_settings(args: &TrainArgs) -> Result<Settings> {
    let mut settings = match (&args.config, &args.resume) {
        (Some(path), _) => Settings::from_file(path)?,
        (None, Some(_)) => {
            let out = args.settings.output.clone().unwrap_or_default();
            if out.as_os_str().is_empty() {
                bail!("--resume needs --output DIR: the folder of the run to continue");
            }
            if !out.is_dir() {
                bail!(
                    "--resume: output folder {} does not exist or is not a folder: give the --output of the run to continue",
                    out.display()
                );
            }
            let saved = out.join(PARAMETERS_FILE);
            if saved.is_file() {
                Settings::from_file(&saved)?
            } else {
                Settings::default()
            }
        }
        (None, None) => Settings::default(),
    };
    settings.apply(&args.settings);
    settings.validate()?;
    if settings.model.as_os_str().is_empty() {
        bail!("no model: give --model PATH (a Hugging Face folder or a .gguf file)");
    }
    if settings.text.as_os_str().is_empty() && settings.dataset.as_os_str().is_empty() {
        bail!("no training data: give --text FILE|DIR, --dataset FILE, or both (hybrid)");
    }
    Ok(settings)
}

/// The chunker configuration of the settings.
pub fn chunk_config(s: &Settings) -> ChunkConfig {
    let eos = match s.eos.as_str() {
        "hard-cut" => EosPlacement::HardCutOnly,
        "none" => EosPlacement::None,
        _ => EosPlacement::EveryBlock,
    };
    ChunkConfig::new(s.cutoff)
        .with_hard_cut(&unescape_hard_cut(&s.hard_cut))
        .with_overlap(s.overlap)
        .with_mode(if s.dementor {
            Mode::Dementor
        } else {
            Mode::Precise
        })
        .with_eos(eos)
        .with_bos(s.bos)
        .with_min_chars(s.min_chars)
}

/// Target modules: a preset name or a comma-separated list of module names.
pub fn target_modules(spec: &str, arch: Arch, available: &[String]) -> Result<Vec<String>> {
    let requested: Vec<String> = match Preset::from_str(spec) {
        Ok(p) => p.modules(arch).into_iter().map(str::to_string).collect(),
        Err(preset_err) => {
            if !spec.contains('_') {
                return Err(preset_err).context("setting `targets`");
            }
            spec.split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect()
        }
    };
    resolve(&requested, available).context("setting `targets`")
}

/// Loads, slices and plans.
pub fn prepare(settings: Settings, quiet: bool) -> Result<Prepared> {
    let schedule: Schedule = settings.scheduler.parse().context("setting `scheduler`")?;
    let cfg = chunk_config(&settings);
    let hard_cut = unescape_hard_cut(&settings.hard_cut);
    // Read the data before the (slower) model load, so a bad path or file fails fast.
    let has_text = !settings.text.as_os_str().is_empty();
    let text = if has_text {
        let text = read_text(&settings.text, &hard_cut)?;
        if text.trim().is_empty() {
            bail!(
                "{} holds no text (it is empty or only whitespace and hard cuts): give a file or folder with training text",
                settings.text.display()
            );
        }
        text
    } else {
        String::new()
    };
    let files = dataset::read_files(&settings)?;

    let t0 = Instant::now();
    let options = load_options(&settings.base_weights)?;
    let model = Model::load_with(&settings.model, &candle_device(), &options)
        .with_context(|| format!("cannot load model {}", settings.model.display()))?;
    if !quiet {
        let types: Vec<String> = model
            .weight_types()
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        eprintln!(
            "loaded {} ({}, {} layers; weights {}, {} in memory) in {:.1}s",
            settings.model.display(),
            model.config().model_type,
            model.config().num_hidden_layers,
            types.join(", "),
            mib(model.resident_bytes()),
            t0.elapsed().as_secs_f64()
        );
    }
    let context = model.config().max_position_embeddings;
    if settings.cutoff > context {
        bail!(
            "setting `cutoff` is {} but the model's context is {context} tokens \
             (max_position_embeddings): give a cutoff of at most {context}",
            settings.cutoff
        );
    }
    let arch = Arch::from_str(&model.config().model_type).context("model architecture")?;
    let lora = LoraSettings {
        r: settings.rank,
        alpha: settings.alpha,
        use_rslora: settings.rslora,
        dropout: settings.dropout,
        target_modules: target_modules(&settings.targets, arch, &model.linear_modules())?,
        modules_to_save: if settings.train_head {
            vec!["lm_head".into(), "embed_tokens".into()]
        } else {
            Vec::new()
        },
    };
    lora.validate()?;

    let special = model.special_tokens();
    let mut cfg = cfg;
    if settings.bos && special.bos.is_none() {
        eprintln!("note: the model has no BOS token; blocks start without one");
        cfg = cfg.with_bos(false);
    }
    if settings.eos != "none" && special.eos.is_none() {
        eprintln!("note: the model has no EOS token; blocks end without one");
        cfg = cfg.with_eos(EosPlacement::None);
    }
    let (chunks, encoded) = if has_text {
        let chunks = chunk(&text, &cfg, model.tokenizer())
            .with_context(|| format!("cannot slice {}", settings.text.display()))?;
        if chunks.blocks.is_empty() {
            bail!(
                "no training blocks in {} after slicing (min_chars = {}): give more text or lower --min-chars",
                settings.text.display(),
                settings.min_chars
            );
        }
        let encoded = encode_blocks(&chunks.blocks, model.tokenizer(), special)?;
        (Some(chunks), encoded)
    } else {
        (None, Vec::new())
    };
    let data = dataset::build(&settings, files, &model, encoded)?;
    let warmup = if settings.warmup_steps > 0 {
        Warmup::Steps(settings.warmup_steps)
    } else {
        Warmup::Ratio(settings.warmup_ratio)
    };
    let plan = StepPlan::new(PlanInput {
        blocks: data.samples.len() as u64,
        batch_size: settings.batch_size as u64,
        grad_accum: settings.grad_accum as u64,
        epochs: settings.epochs,
        warmup,
    })?;
    let scheduler = Scheduler::new(schedule, plan.horizon(), settings.learning_rate)?;
    Ok(Prepared {
        settings,
        model,
        lora,
        chunks,
        data,
        plan,
        scheduler,
        text_bytes: text.len(),
    })
}

/// The load options of the `base_weights` setting (`keep` or `f32`).
pub fn load_options(base_weights: &str) -> Result<trainer_core::LoadOptions> {
    let base_weights = match base_weights {
        "keep" => trainer_core::BaseWeights::Keep,
        "f32" => trainer_core::BaseWeights::F32,
        other => bail!("setting `base_weights` is `{other}`: give keep or f32"),
    };
    Ok(trainer_core::LoadOptions {
        base_weights,
        ..Default::default()
    })
}

/// Bytes as MiB (or GiB above 10 GiB) for messages.
fn mib(bytes: u64) -> String {
    if bytes >= 10 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// The device the command line runs on: the CPU (trainer-core's `cuda`
/// feature is not wired into the command line yet).
pub fn candle_device() -> candle_core::Device {
    candle_core::Device::Cpu
}

/// The step plan in words.
pub fn plan_text(p: &Prepared) -> String {
    let plan = &p.plan;
    let mut out = format!(
        "steps:          {} optimizer steps ({} per epoch x {} epochs), warmup {}\n\
         batches:        micro-batch {} x gradient accumulation {} = {} blocks per step",
        plan.total_steps,
        plan.steps_per_epoch,
        p.settings.epochs,
        plan.warmup_steps,
        plan.input.batch_size,
        plan.grad_accum,
        plan.input.batch_size * plan.grad_accum
    );
    for w in plan
        .warnings
        .iter()
        .map(ToString::to_string)
        .chain(p.scheduler.warnings().iter().map(ToString::to_string))
    {
        out.push_str(&format!("\nwarning: {w}"));
    }
    out
}

/// The data summary: the text's slicing, then the dataset, hybrid and eval figures.
pub fn data_text(p: &Prepared) -> String {
    let mut out = String::new();
    if let Some(chunks) = &p.chunks {
        out.push_str(&summary_text(chunks, p.text_bytes, p.settings.cutoff));
        out.push('\n');
    }
    out.push_str(&dataset::summary_text(&p.data, &p.settings));
    out
}

/// Writes `--dump-dataset` when asked.
fn dump_if_asked(p: &Prepared, path: Option<&Path>) -> Result<()> {
    if let Some(path) = path {
        let n = dataset::dump(path, &p.data, p.model.tokenizer())?;
        eprintln!("wrote {n} samples as trained to {}", path.display());
    }
    Ok(())
}

/// Prints what `--dry-run` shows and writes the LR preview.
fn dry_run(p: &Prepared, show: usize) -> Result<()> {
    println!("# resolved settings\n{}", p.settings.to_toml()?);
    println!("# data\n{}", data_text(p));
    println!(
        "lora:           r={} alpha={} scale={:.4} targets={}",
        p.lora.r,
        p.lora.alpha,
        p.lora.scaling(),
        p.lora.target_modules.join(",")
    );
    println!("\n# plan\n{}", plan_text(p));
    let s = &p.settings;
    let est = |ckpt| {
        p.model
            .estimate_training(&p.lora, (s.batch_size, s.cutoff), ckpt)
    };
    let (with, without) = (est(true)?, est(false)?);
    let chosen = if s.gradient_checkpointing {
        with
    } else {
        without
    };
    println!(
        "memory:         about {} at peak: weights {} + trainable and optimizer {} + activations {} (batch {} x cutoff {}) + runtime {}\n                gradient_checkpointing = true: about {}; = false: about {}",
        mib(chosen.total()),
        mib(chosen.weights),
        mib(chosen.trainable),
        mib(chosen.activations),
        s.batch_size,
        s.cutoff,
        mib(chosen.runtime),
        mib(with.total()),
        mib(without.total())
    );
    if let Some(limit) = trainer_core::memory::process_limit() {
        if chosen.total() > limit.bytes {
            println!(
                "warning:        that is more than the {} this process can have ({}): set gradient_checkpointing = true, or lower batch_size or cutoff",
                mib(limit.bytes),
                limit.source
            );
        }
    }
    for (i, sample) in p.data.samples.iter().take(show).enumerate() {
        let segments = trainer_core::dataset::dump_segments(p.model.tokenizer(), sample)?;
        let masked = sample.labels[1..].contains(&trainer_core::IGNORE_INDEX);
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
        let what = match p.data.origins[i] {
            dataset::Origin::Block(b) => format!("text block {b}"),
            dataset::Origin::Record(r) => format!("dataset record {r}"),
        };
        println!(
            "\n# sample {i}: {what} ({} tokens, as trained{})\n{text}",
            sample.input_ids.len(),
            if masked {
                "; [[masked: ...]] is not learned"
            } else {
                ""
            }
        );
    }
    let out = &p.settings.output;
    if !out.as_os_str().is_empty() {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let png = out.join(PREVIEW_FILE);
        let points: Vec<(f64, f64)> = (0..=p.plan.total_steps)
            .map(|s| (p.plan.epoch_at(s), p.scheduler.lr(s)))
            .collect();
        plot_report::render_schedule(
            &points,
            &format!("{} LR preview", p.scheduler.schedule()),
            &png,
        )?;
        println!("\nwrote {}", png.display());
    }
    Ok(())
}

/// Runs `trainer-cli train`.
pub fn run(args: &TrainArgs) -> Result<ExitCode> {
    let settings = resolve_settings(args)?;
    let output = settings.output.clone();
    // Check everything cheap first; nothing is deleted before the run is known to be valid.
    let mut resume_dir = None;
    // The output-folder lock, held until this function returns (the whole run), taken before
    // anything in the folder is looked at, cleaned, deleted or written. `--dry-run` takes none: it
    // writes only lr_preview.png (atomically), which no run writes or deletes.
    let _lock = if args.dry_run {
        None
    } else {
        if output.as_os_str().is_empty() {
            bail!("no output folder: give --output DIR");
        }
        if args.resume.is_some() && !output.is_dir() {
            bail!(
                "--resume: output folder {} does not exist",
                output.display()
            );
        }
        Some(lock::acquire(&output)?)
    };
    if !args.dry_run {
        match args.resume.as_deref() {
            None => {
                output::check_new(&output, args.overwrite)?;
            }
            Some(from) => {
                // A killed run may have left temporaries behind: clean them first.
                for done in output::recover(&output)? {
                    eprintln!("{done}");
                }
                resume_dir = Some(match from {
                    "latest" => output::latest_checkpoint(&output)?,
                    dir => PathBuf::from(dir),
                });
            }
        }
    }
    let prepared = prepare(settings, false)?;
    dump_if_asked(&prepared, args.dump_dataset.as_deref())?;
    if args.dry_run {
        dry_run(&prepared, args.show_blocks)?;
        return Ok(ExitCode::SUCCESS);
    }
    if resume_dir.is_none() {
        output::prepare_new(&output, args.overwrite)?;
    }
    eprintln!("{}", data_text(&prepared));
    eprintln!("{}", plan_text(&prepared));
    session::run(&prepared, resume_dir.as_deref(), args.progress, &output)
}

/// The base-model string stored in adapter_config.json.
pub fn base_model_name(model: &Path) -> String {
    model.display().to_string()
}

/// Runs `trainer-cli check`: the original's "Verify dataset", with exact
/// numbers and suggestions, without training or writing anything.
pub fn check(args: &TrainArgs) -> Result<ExitCode> {
    let settings = resolve_settings(args)?;
    let p = prepare(settings, true)?;
    dump_if_asked(&p, args.dump_dataset.as_deref())?;
    println!("{}", data_text(&p));
    println!("{}", plan_text(&p));
    println!("{}", padding_text(&p));
    let total = p.plan.total_steps;
    let warmup = (total.div_ceil(10)).min(p.plan.steps_per_epoch).max(1);
    println!("suggested:      warmup_steps = {warmup} (10% of the run, at most one epoch)");
    println!(
        "suggested:      save_every = {} .. {} (5 to 10 checkpoints over the run)",
        total.div_ceil(10).max(1),
        total.div_ceil(5).max(1)
    );
    let split = p.chunks.as_ref().map_or(0, |c| c.summary.pieces_split);
    if split > 0 {
        println!(
            "note:           {split} sentences are longer than the cutoff and were split at word boundaries; \
             a larger --cutoff keeps them whole"
        );
    }
    let longest = p
        .data
        .samples
        .iter()
        .map(|s| s.input_ids.len())
        .max()
        .unwrap_or(0);
    if longest * 2 < p.settings.cutoff {
        println!(
            "note:           the longest sample has {longest} tokens; a --cutoff of {} would do",
            longest.div_ceil(32) * 32
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Token positions one epoch computes with dynamic padding, in the seeded order and length-grouped: the figure
/// behind `group_by_length`.
pub fn padding_text(p: &Prepared) -> String {
    let lengths: Vec<usize> = p.data.samples.iter().map(|s| s.input_ids.len()).collect();
    let real: usize = lengths.iter().sum();
    let bs = p.settings.batch_size;
    let order = crate::data::epoch_order(lengths.len(), p.settings.seed, 0);
    let plain = trainer_core::dataset::select::padded_tokens(&order, &lengths, bs);
    let grouped_order = trainer_core::dataset::select::group_by_length(&order, &lengths, bs);
    let grouped = trainer_core::dataset::select::padded_tokens(&grouped_order, &lengths, bs);
    format!(
        "padding:        {real} real tokens per epoch; {plain} positions computed in micro-batches of {bs} \
         ({:.2}x), {grouped} with group_by_length ({:.2}x)",
        plain as f64 / real.max(1) as f64,
        grouped as f64 / real.max(1) as f64
    )
}
