//! Integration tests for `trainer-cli`.
