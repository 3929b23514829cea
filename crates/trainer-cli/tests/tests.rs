//! Integration tests for `trainer-cli`: the binary as a user runs it.

mod common;
mod datasets;
mod errors;
mod real_model;
mod tools;
