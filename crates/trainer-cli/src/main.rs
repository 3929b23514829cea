//! `trainer-cli`: the command line of the Training PRO LoRA trainer.
//!
//! A thin shell over the workspace crates: it parses flags, loads files,
//! calls the libraries and prints. Every error reaches the user as one line
//! (`error: ...`) and exit code 2; an interrupted training run exits 130.

mod chunk;
mod fsutil;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Chunk(args) => chunk::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            let msg: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", msg.join(": "));
            ExitCode::from(2)
        }
    }
}
