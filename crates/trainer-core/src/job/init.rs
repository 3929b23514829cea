//! Starting a run from an existing adapter ([`JobBuilder::init_adapter`](crate::job::JobBuilder::init_adapter)).

use lora_targets::LoraSettings;

use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::train::{TrainConfig, Trainer};

/// The differences between the run's LoRA settings and the adapter's that shape its weights (rank, scale,
/// targets, fully trained modules), as `name: run vs adapter`.
pub(super) fn lora_conflicts(run: &LoraSettings, adapter: &LoraSettings) -> Vec<String> {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let mut out = Vec::new();
    if run.r != adapter.r {
        out.push(format!("rank: {} vs {}", run.r, adapter.r));
    }
    if (run.scaling() - adapter.scaling()).abs() > 1e-12 * adapter.scaling().abs().max(1.0) {
        out.push(format!(
            "scale: {} (alpha {}{}) vs {} (alpha {}{})",
            run.scaling(),
            run.alpha,
            if run.use_rslora { ", rslora" } else { "" },
            adapter.scaling(),
            adapter.alpha,
            if adapter.use_rslora { ", rslora" } else { "" }
        ));
    }
    if sorted(&run.target_modules) != sorted(&adapter.target_modules) {
        out.push(format!(
            "targets: {} vs {}",
            sorted(&run.target_modules).join(","),
            sorted(&adapter.target_modules).join(",")
        ));
    }
    if sorted(&run.modules_to_save) != sorted(&adapter.modules_to_save) {
        out.push(format!(
            "modules_to_save: {:?} vs {:?}",
            run.modules_to_save, adapter.modules_to_save
        ));
    }
    out
}

/// A trainer starting from `adapter`'s weights with fresh optimizer state at step 0; the run's own dropout is
/// used. The run's rank, scale, targets and fully trained modules must be the adapter's.
pub(super) fn trainer_from<'m>(
    model: &'m Model,
    lora: &LoraSettings,
    adapter: &Adapter,
    train: TrainConfig,
) -> Result<Trainer<'m>> {
    let conflicts = lora_conflicts(lora, adapter.settings());
    if !conflicts.is_empty() {
        return Err(Error::setting(
            "init_adapter",
            format!(
                "the run's LoRA settings differ from the adapter's ({}): take them from the adapter",
                conflicts.join("; ")
            ),
        ));
    }
    let settings = LoraSettings {
        dropout: lora.dropout,
        ..adapter.settings().clone()
    };
    let start = Adapter::from_parts(settings, adapter.weights().clone(), model);
    Trainer::from_adapter(model, &start, train)
}
