//! Integration tests for `trainer-cli`: the binary as a user runs it.

mod common;
mod datasets;
#[cfg(feature = "distributed")]
mod distributed;
mod errors;
mod faults;
mod gguf_adapters;
mod guide;
mod hostile;
mod hostile_files;
mod hostile_models;
mod init_adapter;
mod lock;
mod optimizer_report;
mod original_config;
mod real_model;
mod self_contained;
mod tools;
mod ui;
mod ui_setup;
