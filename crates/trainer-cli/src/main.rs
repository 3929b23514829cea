//! `trainer-cli`: the command line of the Training PRO LoRA trainer.
//!
//! A thin shell over the workspace crates: it turns flags and config files into library objects
//! (a `trainer_core::job::Job` for `train`), observes them and prints. Every error reaches the user as one line
//! (`error: ...`) and exit code 2; an interrupted training run exits 130.

mod check;
mod chunk;
mod clock;
mod control;
mod dry_run;
mod eval;
mod export_gguf;
mod fsutil;
mod generate;
mod init_adapter;
mod lock;
mod model_files;
#[cfg(feature = "distributed")]
mod mpi_collective;
mod observer;
mod original_config;
mod plot;
mod prepare;
mod ranks;
mod schedule;
mod settings;
mod signals;
mod sources;
mod tools;
mod train;
mod ui;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Train LoRA adapters on raw text, Training PRO style.
#[derive(Debug, Parser)]
#[command(name = "trainer-cli", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Slice raw text into sentence-aligned training blocks (PRTS / DEMENTOR).
    Chunk(chunk::ChunkArgs),
    /// Print a learning-rate schedule's multipliers as JSON (and draw it with --png).
    Schedule(schedule::ScheduleArgs),
    /// Re-render the training graph from a training_log.jsonl.
    Plot(plot::PlotArgs),
    /// Train a LoRA adapter on raw text, a dataset, or both.
    Train(Box<train::TrainArgs>),
    /// Check the data and the step plan of a training run without training (the original's "Verify dataset").
    Check(Box<train::TrainArgs>),
    /// Send a live command to a running training (save-now, stop, set KEY=VALUE).
    Control(control::ControlArgs),
    /// Perplexity of a model (with an optional adapter) on a text, or dump its logits.
    Eval(eval::EvalArgs),
    /// Write a Hugging Face model folder from a GGUF file.
    Convert(model_files::ConvertArgs),
    /// Merge an adapter into the base weights and write a Hugging Face model folder.
    Merge(model_files::MergeArgs),
    /// Write an adapter as a llama.cpp LoRA adapter GGUF (for llama.cpp --lora, Ollama, koboldcpp).
    ExportGguf(export_gguf::ExportGgufArgs),
    /// Generate text with a model and an optional adapter, to try a LoRA.
    Generate(generate::GenerateArgs),
    /// Dataset tools: split a dataset, turn Alpaca JSON or raw text into chat JSON Lines.
    Tools(tools::ToolsArgs),
    /// Serve the runs under a folder (finished or running) as web pages: charts, checkpoints, controls.
    Ui(ui::UiArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Chunk(args) => chunk::run(&args),
        Command::Schedule(args) => schedule::run(&args),
        Command::Plot(args) => plot::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Check(args) => check::run(&args),
        Command::Control(args) => control::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Convert(args) => model_files::convert(&args),
        Command::Merge(args) => model_files::merge(&args),
        Command::ExportGguf(args) => export_gguf::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Tools(args) => tools::run(&args),
        Command::Ui(args) => ui::serve_runs(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // Every error shows its cause once (in its message or as its source), so the chain is
            // joined as it is; one line, whatever the message holds (a file name may contain a newline).
            let line: String = err
                .chain()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ")
                .chars()
                .flat_map(|c| {
                    let escaped = c.is_control().then(|| c.escape_default());
                    let plain = (!c.is_control()).then_some(c);
                    escaped.into_iter().flatten().chain(plain)
                })
                .collect();
            eprintln!("error: {line}");
            ExitCode::from(2)
        }
    }
}
