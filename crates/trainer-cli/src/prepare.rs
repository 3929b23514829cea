//! From flags and settings files to what a run needs: the resolved settings, then the data read, the model
//! loaded, the samples encoded and the steps planned (shared by `train`, `check`, `--dry-run` and the setup page).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use lora_targets::LoraSettings;
use trainer_core::job::{DataFiles, TrainingData, TrainingPlan, PARAMETERS_FILE};
use trainer_core::Model;

use crate::model_files::{load_model_with, mib};
use crate::settings::Settings;
use crate::sources::Resolved;
use crate::train::TrainArgs;

/// Everything a run needs, resolved and validated.
pub struct Prepared {
    /// The base model.
    pub model: Model,
    /// The LoRA settings for it.
    pub lora: LoraSettings,
    /// The encoded training (and eval) data.
    pub data: TrainingData,
    /// The step plan and learning-rate schedule.
    pub plan: TrainingPlan,
}

/// The settings of this invocation and their sources: the config files (or, when resuming without one, the
/// run's own training_parameters.toml), then the flags.
pub fn resolve_settings(args: &TrainArgs) -> Result<Resolved> {
    let mut configs = args.config.clone();
    if configs.is_empty() && args.resume.is_some() {
        let out = args.settings.run.output.clone().unwrap_or_default();
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
            configs.push(saved);
        }
    }
    let resolved = Resolved::new(&configs, &args.settings, args.dementor)?;
    resolved.validate()?;
    let settings = &resolved.settings;
    if settings.model.as_os_str().is_empty() {
        bail!("no model: give --model PATH (a Hugging Face folder or a .gguf file)");
    }
    if settings.text.as_os_str().is_empty() && settings.dataset.as_os_str().is_empty() {
        bail!("no training data: give --text FILE|DIR, --dataset FILE, or both (hybrid)");
    }
    Ok(resolved)
}

/// What [`prepare`] prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Say {
    /// The model's load line and the notes about the data and settings.
    Everything,
    /// The notes only (`check` and the previews print their own summary).
    Notes,
    /// Nothing (the processes other than 0 of an mpirun job).
    Nothing,
}

/// Reads the data (before the slower model load, so a bad file fails fast), loads the model, encodes and plans.
pub fn prepare(s: &Settings, say: Say) -> Result<Prepared> {
    let files = DataFiles::read(s.data_sources()?, s.data_options())?;
    let t0 = Instant::now();
    let model = load_model_with(&s.model, &s.load_options())?;
    if say == Say::Everything {
        let types: Vec<String> = model
            .weight_types()
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        eprintln!(
            "loaded {} ({}, {} layers; weights {}, {} in memory) in {:.1}s",
            s.model.display(),
            model.config().model_type,
            model.config().num_hidden_layers,
            types.join(", "),
            mib(model.resident_bytes()),
            t0.elapsed().as_secs_f64()
        );
    }
    let lora = s.lora(&model)?;
    let data = TrainingData::build(files, &model)?;
    let (_, alias) = s.optimizer()?;
    if say != Say::Nothing {
        for note in &data.notes {
            eprintln!("note: {note}");
        }
        if let Some(note) = alias {
            eprintln!("note: optimizer `{}` is {note}", s.optimizer.trim());
        }
    }
    let plan = TrainingPlan::new(s.plan_settings(), data.samples.len())?;
    Ok(Prepared {
        model,
        lora,
        data,
        plan,
    })
}

/// The base-model string stored in adapter_config.json.
pub fn base_model_name(model: &Path) -> String {
    model.display().to_string()
}

/// Writes `--dump-dataset` when asked.
pub fn dump_if_asked(p: &Prepared, path: Option<&Path>) -> Result<()> {
    if let Some(path) = path {
        let n = p.data.dump(path, p.model.tokenizer())?;
        eprintln!("wrote {n} samples as trained to {}", path.display());
    }
    Ok(())
}
