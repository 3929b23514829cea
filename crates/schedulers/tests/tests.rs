//! Integration tests for `schedulers`.

// Every Hugging Face kind against `transformers.get_scheduler` output.
mod hf_reference;
// The FP kinds against the original formulas, away from the fixed edge cases.
mod fp_original;
