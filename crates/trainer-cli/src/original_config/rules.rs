//! The table of Training PRO's keys: for each, the setting it becomes and how its value converts, or why it
//! has none.

/// How a value of the original converts to ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Conv {
    /// The value as it is.
    Same,
    /// Micro-steps to optimizer steps: `ceil(x / grad_accum)`.
    MicroSteps,
    /// A number, or text holding one (the original's learning-rate box was text).
    Number,
    /// A number; negative values become 0, as the original clamped them.
    AtLeastZero,
    /// `sliding_window` true/false: `mode` dementor/precise.
    SlidingWindow,
    /// `add_eos_token` with `add_eos_token_type`: `eos`.
    Eos,
    /// `add_eos_token_type` (with `add_eos_token`): `eos`.
    EosType,
    /// `save_steps`: `save_every` in optimizer steps, and `save_each_epoch` (the original saved epochs only
    /// when `save_steps > 0`).
    SaveSteps,
    /// `lora_alpha`: unused when `lora_RS` is on.
    LoraAlpha,
    /// `lora_RS_alpha`: the alpha when `lora_RS` is on, at least 1.
    RsAlpha,
    /// `grad_accumulation`: replaced by `batch_size // micro_batch_size` when the legacy `batch_size` > 0.
    GradAccum,
    /// The legacy `batch_size` (the original's `fix_old_version`).
    LegacyBatch,
    /// `eval_steps`: replaced by `eval_stepsJSONL` when the file names a JSONL dataset.
    EvalSteps,
    /// `eval_stepsJSONL`: the eval cadence of a JSONL dataset.
    EvalStepsJsonl,
    /// `report_to`: "None" becomes `[]`, a name a one-name list.
    ReportTo,
}

/// What one key of the original becomes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rule {
    /// Our setting, the conversion, and a note on how the meaning differs ("" for none).
    Key(&'static str, Conv, &'static str),
    /// No equivalent, and why.
    No(&'static str),
}

/// Why the data keys have no equivalent.
pub(super) const DATA_NAME: &str =
    "the original stored a name from the webui's training folders, not a path: give the file with";

/// The original's keys, in the order its `PARAMETERS` list (and so its `training_parameters.json`) has them.
pub(super) const RULES: &[(&str, Rule)] = &[
    ("lora_name", Rule::No("the adapter's name, which named its folder: give --output DIR")),
    ("always_override", Rule::No("a choice made per run here: --overwrite replaces an earlier run, --init-adapter continues an adapter")),
    ("save_steps", Rule::Key("save_every", Conv::SaveSteps, "")),
    ("micro_batch_size", Rule::Key("batch_size", Conv::Same, "")),
    ("batch_size", Rule::Key("grad_accum", Conv::LegacyBatch, "")),
    ("epochs", Rule::Key("epochs", Conv::Same, "")),
    ("learning_rate", Rule::Key("learning_rate", Conv::Number, "")),
    ("lr_scheduler_type", Rule::Key("scheduler", Conv::Same, "")),
    ("lora_rank", Rule::Key("rank", Conv::Same, "")),
    ("lora_alpha", Rule::Key("alpha", Conv::LoraAlpha, "")),
    ("lora_dropout", Rule::Key("dropout", Conv::Same, "")),
    ("cutoff_len", Rule::Key("cutoff", Conv::Same, "")),
    ("dataset", Rule::No("--dataset FILE (a JSON dataset)")),
    ("eval_dataset", Rule::No("--eval-dataset FILE")),
    ("format", Rule::No("--format FILE")),
    ("eval_steps", Rule::Key("eval_steps", Conv::EvalSteps, "")),
    ("raw_text_file", Rule::No("--text FILE|DIR")),
    ("higher_rank_limit", Rule::No("it only widened the UI's rank and alpha sliders; rank and alpha have no upper limit here")),
    ("warmup_steps", Rule::Key("warmup_steps", Conv::MicroSteps, "")),
    ("optimizer", Rule::Key("optimizer", Conv::Same, "adamw_* names are adamw (the same maths); 8-bit ones are refused")),
    ("hard_cut_string", Rule::Key("hard_cut", Conv::Same, "the same backslash escapes; an empty one means no hard cut (the original cut between every character, bug 8)")),
    ("train_only_after", Rule::Key("train_only_after", Conv::Same, "it masks the prompt of instruction data here; the original's had no effect (bug 2)")),
    ("stop_at_loss", Rule::Key("stop_at_loss", Conv::Same, "")),
    ("add_eos_token", Rule::Key("eos", Conv::Eos, "")),
    ("min_chars", Rule::Key("min_chars", Conv::AtLeastZero, "")),
    ("report_to", Rule::Key("report_to", Conv::ReportTo, "")),
    ("precize_slicing_overlap", Rule::Key("overlap", Conv::Same, "")),
    ("add_eos_token_type", Rule::Key("eos", Conv::EosType, "")),
    ("save_steps_under_loss", Rule::Key("save_under_loss", Conv::Same, "the next loss save needs a true 10% drop (loss_improvement 0.1); absolute_improvement = true restores the original's absolute 0.09 (bug 20)")),
    ("add_bos_token", Rule::Key("bos", Conv::Same, "true starts every block with the BOS token; the original only kept one the tokenizer added (bug 12)")),
    ("training_projection", Rule::Key("targets", Conv::Same, "")),
    ("sliding_window", Rule::Key("mode", Conv::SlidingWindow, "")),
    ("warmup_ratio", Rule::Key("warmup_ratio", Conv::Same, "")),
    ("grad_accumulation", Rule::Key("grad_accum", Conv::GradAccum, "")),
    ("neft_noise_alpha", Rule::Key("neftune_alpha", Conv::Same, "")),
    ("group_by_length", Rule::Key("group_by_length", Conv::Same, "it groups samples here; the original's had no effect (bug 15)")),
    ("eliminate_long_blocks", Rule::Key("eliminate_long", Conv::Same, "")),
    ("stop_at_epoch", Rule::Key("stop_at_epoch", Conv::Same, "")),
    ("datasetJSONL", Rule::No("--dataset FILE (a chat dataset)")),
    ("eval_datasetJSONL", Rule::No("--eval-dataset FILE")),
    ("eval_stepsJSONL", Rule::Key("eval_steps", Conv::EvalStepsJsonl, "")),
    ("hybrid_training", Rule::No("a run is hybrid when both --text and --dataset are given")),
    ("hybrid_data_ratio", Rule::Key("hybrid_data_ratio", Conv::Same, "")),
    ("hybrid_text_ratio", Rule::Key("hybrid_text_ratio", Conv::Same, "")),
    ("lora_RS", Rule::Key("rslora", Conv::Same, "")),
    ("lora_RS_alpha", Rule::Key("alpha", Conv::RsAlpha, "")),
    ("lora_modulessave", Rule::Key("train_head", Conv::Same, "")),
    ("use_grad_checkpoint", Rule::Key("gradient_checkpointing", Conv::Same, "")),
];
