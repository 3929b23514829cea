//! Integration tests for `lora-targets`.

// Reading the real PEFT 0.21.2 reference adapter in `../shared/data/peft-reference-qv`.
mod peft_reference;
