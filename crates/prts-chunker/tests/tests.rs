//! Integration tests for `prts-chunker`.

// Public API: settings errors, file reading.
mod api;
// The King James Bible sample with the SmolLM2 tokenizer (issue 2's "Done when").
#[cfg(feature = "tokenizers")]
mod kjv;
