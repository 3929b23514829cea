//! Integration tests for `lora-targets`.

// Reading the real PEFT 0.21.2 reference adapter in `testdata/peft-reference-qv`.
mod peft_reference;
