//! Integration tests for `prts-chunker`.
