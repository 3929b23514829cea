//! Integration tests for `trainer-core`.
