//! Integration tests for `trainer-cli`: the binary as a user runs it.

mod common;
mod datasets;
mod errors;
mod faults;
mod guide;
mod hostile;
mod hostile_files;
mod hostile_models;
mod lock;
mod real_model;
mod self_contained;
mod tools;
