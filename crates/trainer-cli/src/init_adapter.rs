//! `init_adapter`: a new run that starts from an existing adapter's weights. Its rank, scale, targets and
//! trained head come from the adapter; a setting for one of them given explicitly (a flag, a key of a TOML
//! `--config` file, or the key of a `training_parameters.json` that maps to it) that disagrees with the adapter
//! is an error naming where the value came from.

use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use lora_targets::{LoraSettings, Targets};
use trainer_core::{Adapter, Model};

use crate::settings::{Named, Settings};
use crate::sources::{Source, Sources};

/// The LoRA-shape settings an adapter decides.
const DECIDED: [&str; 5] = ["rank", "alpha", "rslora", "targets", "train_head"];

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
/// targets and trained head (keeping the run's dropout), recording the adapter as their source; `None` when
/// no adapter is set. A setting the user gave (`sources`) that disagrees with the adapter is an error naming
/// where it came from.
pub fn apply(
    settings: &mut Settings,
    lora: &mut LoraSettings,
    model: &Model,
    sources: &mut Sources,
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
    let explicit = |key: &str| sources.is_explicit(key);
    // Where a value the user gave came from ("the adapter" for one taken from it).
    let from = |key: &str| {
        if explicit(key) {
            sources.get(key).to_string()
        } else {
            "the adapter".to_string()
        }
    };
    let mut conflicts = Vec::new();
    if explicit("rank") && settings.rank != a.r {
        conflicts.push(format!(
            "rank = {} (from {}; the adapter has {})",
            settings.rank,
            from("rank"),
            a.r
        ));
    }
    if explicit("alpha") || explicit("rslora") {
        let asked = LoraSettings {
            alpha: if explicit("alpha") {
                settings.alpha
            } else {
                a.alpha
            },
            use_rslora: if explicit("rslora") {
                settings.rslora
            } else {
                a.use_rslora
            },
            ..a.clone()
        };
        if (asked.scaling() - a.scaling()).abs() > 1e-9 * a.scaling().abs().max(1.0) {
            conflicts.push(format!(
                "alpha = {} (from {}), rslora = {} (from {}) give the scale {} (the adapter's is {}: alpha {}, rslora {})",
                asked.alpha,
                from("alpha"),
                asked.use_rslora,
                from("rslora"),
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
    if explicit("targets") && sorted(&lora.target_modules) != sorted(&a.target_modules) {
        conflicts.push(format!(
            "targets = {} (from {}; the adapter has {})",
            sorted(&lora.target_modules).join(","),
            from("targets"),
            sorted(&a.target_modules).join(",")
        ));
    }
    let head = !a.modules_to_save.is_empty();
    if explicit("train_head") && settings.train_head != head {
        conflicts.push(format!(
            "train_head = {} (from {}; the adapter has {})",
            settings.train_head,
            from("train_head"),
            head
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
    let taken: Vec<&str> = DECIDED.into_iter().filter(|k| !explicit(k)).collect();
    for key in taken {
        sources.set(key, Source::Adapter(path.clone()));
    }
    *lora = LoraSettings {
        dropout: lora.dropout,
        ..a
    };
    Ok(Some(adapter))
}
