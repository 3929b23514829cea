//! `init_adapter`: a new run that starts from an existing adapter's weights. Its rank, scale, targets and
//! trained head come from the adapter; a setting for one of them given explicitly (a flag, or a key of the
//! `--config` file) that disagrees with the adapter is an error.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use lora_targets::{LoraSettings, Targets};
use trainer_core::{Adapter, Model};

use crate::settings::{Named, SettingFlags, Settings};

/// The LoRA-shape settings an adapter decides.
const DECIDED: [&str; 5] = ["rank", "alpha", "rslora", "targets", "train_head"];

/// Which of [`DECIDED`] the user gave: as flags, or as keys of the config file.
pub fn explicit(config: Option<&Path>, flags: &SettingFlags) -> Result<BTreeSet<&'static str>> {
    let mut out = BTreeSet::new();
    let f = &flags.run;
    for (key, given) in [
        ("rank", f.rank.is_some()),
        ("alpha", f.alpha.is_some()),
        ("rslora", f.rslora.is_some()),
        ("targets", f.targets.is_some()),
        ("train_head", f.train_head.is_some()),
    ] {
        if given {
            out.insert(key);
        }
    }
    if let Some(path) = config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("config {}", path.display()))?;
        out.extend(DECIDED.iter().filter(|k| table.contains_key(**k)));
    }
    Ok(out)
}

/// The one-line PEFT command that rewrites a pickle adapter as safetensors.
fn bin_hint(path: &Path) -> String {
    format!(
        "{} holds a pickle adapter (adapter_model.bin), which is not read: convert it with PEFT, e.g. python -c \
         \"from transformers import AutoModelForCausalLM as M; from peft import PeftModel as P; \
         P.from_pretrained(M.from_pretrained('HF_BASE'), '{}').save_pretrained('{}-safetensors')\"",
        path.display(),
        path.display(),
        path.display()
    )
}

/// Loads `settings.init_adapter` for `model` and makes `settings` and `lora` take its rank, alpha, rsLoRA,
/// targets and trained head (keeping the run's dropout); `None` when no adapter is set.
pub fn apply(
    settings: &mut Settings,
    lora: &mut LoraSettings,
    model: &Model,
    explicit: &BTreeSet<&'static str>,
) -> Result<Option<Adapter>> {
    let path = settings.init_adapter.clone();
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let is_bin = path.extension().is_some_and(|e| e == "bin")
        || (path.is_dir()
            && !path.join(trainer_core::ADAPTER_WEIGHTS_FILE).exists()
            && path.join("adapter_model.bin").exists());
    if is_bin {
        bail!("setting `init_adapter`: {}", bin_hint(&path));
    }
    let adapter = Adapter::open(&path, model)
        .with_context(|| format!("setting `init_adapter`: cannot load {}", path.display()))?;
    let a = adapter.settings().clone();
    let mut conflicts = Vec::new();
    if explicit.contains("rank") && settings.rank != a.r {
        conflicts.push(format!(
            "rank = {} (the adapter has {})",
            settings.rank, a.r
        ));
    }
    if explicit.contains("alpha") || explicit.contains("rslora") {
        let asked = LoraSettings {
            alpha: if explicit.contains("alpha") {
                settings.alpha
            } else {
                a.alpha
            },
            use_rslora: if explicit.contains("rslora") {
                settings.rslora
            } else {
                a.use_rslora
            },
            ..a.clone()
        };
        if (asked.scaling() - a.scaling()).abs() > 1e-9 * a.scaling().abs().max(1.0) {
            conflicts.push(format!(
                "alpha = {}, rslora = {} give the scale {} (the adapter's is {}: alpha {}, rslora {})",
                asked.alpha,
                asked.use_rslora,
                asked.scaling(),
                a.scaling(),
                a.alpha,
                a.use_rslora
            ));
        }
    }
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    if explicit.contains("targets") && sorted(&lora.target_modules) != sorted(&a.target_modules) {
        conflicts.push(format!(
            "targets = {} (the adapter has {})",
            sorted(&lora.target_modules).join(","),
            sorted(&a.target_modules).join(",")
        ));
    }
    let head = !a.modules_to_save.is_empty();
    if explicit.contains("train_head") && settings.train_head != head {
        conflicts.push(format!(
            "train_head = {} (the adapter has {})",
            settings.train_head, head
        ));
    }
    if !conflicts.is_empty() {
        bail!(
            "setting `init_adapter`: {} sets these from the adapter; drop the conflicting settings: {}",
            path.display(),
            conflicts.join("; ")
        );
    }
    settings.rank = a.r;
    settings.alpha = a.alpha;
    settings.rslora = a.use_rslora;
    settings.targets = Named(
        Targets::from_str(&a.target_modules.join(","))
            .map_err(|e| anyhow::anyhow!("setting `init_adapter`: the adapter's targets: {e}"))?,
    );
    settings.train_head = head;
    *lora = LoraSettings {
        dropout: lora.dropout,
        ..a
    };
    Ok(Some(adapter))
}
