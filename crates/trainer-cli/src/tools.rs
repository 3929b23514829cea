//! `trainer-cli tools`: the original's dataset tools, writing true JSON Lines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use trainer_core::dataset::convert::{alpaca_to_chat, split_records, text_to_chat, to_json_lines};
use trainer_core::dataset::read_records;

use crate::fsutil::write_atomic;

/// Arguments of `trainer-cli tools`.
#[derive(Debug, Args)]
pub struct ToolsArgs {
    #[command(subcommand)]
    tool: Tool,
    /// Replace output files that already exist.
    #[arg(long, global = true)]
    overwrite: bool,
}

#[derive(Debug, Subcommand)]
enum Tool {
    /// Split a dataset into NAME_train.jsonl and NAME_eval.jsonl beside it (seeded).
    Split {
        /// The dataset (JSON array or JSON Lines).
        dataset: PathBuf,
        /// Percent of the records that go to the eval file.
        #[arg(long, default_value_t = 10.0)]
        eval_percent: f64,
        /// Seed of the split.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Turn Alpaca records (instruction, input, output) into chat records: NAME.jsonl beside the input.
    JsonToJsonl {
        /// The Alpaca dataset (JSON array or JSON Lines).
        dataset: PathBuf,
        /// System message of every conversation ("" = none).
        #[arg(long, default_value = "You are a helpful AI assistant.")]
        system: String,
        /// Output file (default: the input with the extension .jsonl).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Turn a text into chat records, one reply per part between separators: NAME.jsonl beside the input.
    TxtToJsonl {
        /// The text file.
        text: PathBuf,
        /// The user prompt of every conversation.
        #[arg(long, default_value = "Write me a limerick.")]
        prompt: String,
        /// System message of every conversation ("" = none).
        #[arg(long, default_value = "")]
        system: String,
        /// Where the text is cut (backslash escapes \n, \t).
        #[arg(long, default_value = "\\n\\n\\n")]
        separator: String,
        /// Output file (default: the input with the extension .jsonl).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn write_new(path: &Path, text: &str, overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        bail!(
            "{} already exists: pass --overwrite to replace it",
            path.display()
        );
    }
    write_atomic(path, text.as_bytes())
}

fn beside(input: &Path, suffix: &str) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    input.with_file_name(format!("{stem}{suffix}.jsonl"))
}

/// Runs `trainer-cli tools`.
pub fn run(args: &ToolsArgs) -> Result<ExitCode> {
    match &args.tool {
        Tool::Split {
            dataset,
            eval_percent,
            seed,
        } => {
            if !(0.0..=100.0).contains(eval_percent) {
                bail!("--eval-percent {eval_percent}: give a percentage in [0, 100]");
            }
            let records = read_records(dataset)?;
            let (train, eval) = split_records(&records, *eval_percent, *seed);
            let (a, b) = (beside(dataset, "_train"), beside(dataset, "_eval"));
            for p in [&a, &b] {
                if p.exists() && !args.overwrite {
                    bail!(
                        "{} already exists: pass --overwrite to replace it",
                        p.display()
                    );
                }
            }
            write_new(&a, &to_json_lines(&train), args.overwrite)?;
            write_new(&b, &to_json_lines(&eval), args.overwrite)?;
            eprintln!(
                "wrote {} records to {} and {} to {}",
                train.len(),
                a.display(),
                eval.len(),
                b.display()
            );
        }
        Tool::JsonToJsonl {
            dataset,
            system,
            out,
        } => {
            let records = read_records(dataset)?;
            let chats = alpaca_to_chat(&records, system, dataset)?;
            let out = out.clone().unwrap_or_else(|| beside(dataset, ""));
            if out == *dataset {
                bail!(
                    "the output would replace the input {}: give --out",
                    dataset.display()
                );
            }
            write_new(&out, &to_json_lines(&chats), args.overwrite)?;
            eprintln!("wrote {} conversations to {}", chats.len(), out.display());
        }
        Tool::TxtToJsonl {
            text,
            prompt,
            system,
            separator,
            out,
        } => {
            let body = std::fs::read_to_string(text)
                .with_context(|| format!("cannot read {}", text.display()))?;
            let chats = text_to_chat(
                &body,
                &prts_chunker::unescape_hard_cut(separator),
                prompt,
                system,
            );
            if chats.is_empty() {
                bail!("{} holds no text to convert", text.display());
            }
            let out = out.clone().unwrap_or_else(|| beside(text, ""));
            write_new(&out, &to_json_lines(&chats), args.overwrite)?;
            eprintln!("wrote {} conversations to {}", chats.len(), out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
