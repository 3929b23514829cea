//! `trainer-cli eval`: perplexity of a model (optionally with an adapter) on a text, recorded in an
//! evaluations table (CSV, beside the adapter unless `--csv` says where); or the logits of every position
//! dumped to safetensors.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use trainer_core::Adapter;

use crate::clock::utc_now;
use crate::fsutil::write_atomic;
use crate::model_files::load_model;

/// Arguments of `trainer-cli eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model: a Hugging Face folder or a .gguf file.
    #[arg(long, required_unless_present = "table")]
    pub model: Option<PathBuf>,
    /// A PEFT adapter folder to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The text to score (UTF-8).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Token ids instead of a text, comma separated (with --dump-logits).
    #[arg(long, conflicts_with = "text")]
    pub ids: Option<String>,
    /// Window stride in tokens.
    #[arg(long, default_value_t = 512)]
    pub stride: usize,
    /// Window length in tokens (0 = the model's context length).
    #[arg(long, default_value_t = 0)]
    pub max_length: usize,
    /// Write `input_ids` and `logits` [T, vocab] (f32) of every position to this safetensors file.
    #[arg(long)]
    pub dump_logits: Option<PathBuf>,
    /// The evaluations table (CSV) each perplexity is appended to (default: `evaluations.csv` in the
    /// --adapter folder; without an adapter, nothing is recorded unless this is given).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Print the evaluations table (--csv, or the --adapter folder's) and exit.
    #[arg(long)]
    pub table: bool,
}

/// The table's file name inside an adapter folder.
pub const TABLE_FILE: &str = "evaluations.csv";

const HEADER: [&str; 7] = [
    "model",
    "adapter",
    "dataset",
    "perplexity",
    "stride",
    "max_length",
    "date",
];

/// Where the table is: `--csv`, else beside the adapter.
fn table_path(args: &EvalArgs) -> Option<PathBuf> {
    args.csv
        .clone()
        .or_else(|| args.adapter.as_ref().map(|a| a.join(TABLE_FILE)))
}

/// Runs `trainer-cli eval`.
pub fn run(args: &EvalArgs) -> Result<ExitCode> {
    if args.table {
        let Some(csv) = table_path(args) else {
            bail!(
                "--table needs --csv FILE or --adapter DIR (the table is kept beside the adapter)"
            );
        };
        print_table(&csv)?;
        return Ok(ExitCode::SUCCESS);
    }
    let model_path = args
        .model
        .as_ref()
        .ok_or_else(|| anyhow!("give --model PATH"))?;
    let model = load_model(model_path)?;
    let adapter = match &args.adapter {
        Some(dir) => Some(
            Adapter::load(dir, &model)
                .with_context(|| format!("cannot load adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let ids: Vec<u32> = match (&args.text, &args.ids) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
            let enc = model
                .tokenizer()
                .encode(text.as_str(), false)
                .map_err(|e| anyhow!("cannot tokenize {}: {e}", path.display()))?;
            enc.get_ids().to_vec()
        }
        (None, Some(list)) => parse_ids(list)?,
        (None, None) => bail!("give --text FILE (or --ids with --dump-logits)"),
    };
    if let Some(out) = &args.dump_logits {
        let logits = model.logits(adapter.as_ref(), &ids)?;
        dump_logits(out, &ids, logits)?;
        eprintln!("wrote {} ({} positions)", out.display(), ids.len());
        return Ok(ExitCode::SUCCESS);
    }
    let Some(text_path) = &args.text else {
        bail!("perplexity needs --text FILE");
    };
    if ids.len() < 2 {
        bail!(
            "{} has fewer than 2 tokens: nothing to score",
            text_path.display()
        );
    }
    let ppl = model.perplexity(adapter.as_ref(), &ids, args.stride, args.max_length)?;
    println!(
        "perplexity {ppl:.4} ({} tokens, stride {}, max length {})",
        ids.len(),
        args.stride,
        args.max_length
    );
    if let Some(csv) = table_path(args) {
        let row = [
            model_path.display().to_string(),
            args.adapter
                .as_ref()
                .map_or("-".to_string(), |a| a.display().to_string()),
            text_path.display().to_string(),
            format!("{ppl:.4}"),
            args.stride.to_string(),
            args.max_length.to_string(),
            utc_now(),
        ];
        append_row(&csv, &row)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_ids(list: &str) -> Result<Vec<u32>> {
    let ids = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .with_context(|| format!("--ids: `{s}` is not a token id"))
        })
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        bail!("--ids: no token ids given");
    }
    Ok(ids)
}

fn dump_logits(out: &Path, ids: &[u32], logits: Tensor) -> Result<()> {
    let dev = candle_core::Device::Cpu;
    let ids64: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let mut map = HashMap::new();
    map.insert(
        "input_ids".to_string(),
        Tensor::from_vec(ids64, ids.len(), &dev)?,
    );
    map.insert("logits".to_string(), logits.to_device(&dev)?);
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let written = (|| -> Result<()> {
        let tmp = tempfile::Builder::new()
            .prefix(".logits.tmp")
            .suffix(".safetensors")
            .tempfile_in(dir)?;
        candle_core::safetensors::save(&map, tmp.path())?;
        tmp.as_file().sync_all()?;
        tmp.persist(out).map_err(|e| e.error)?;
        Ok(())
    })();
    written.with_context(|| format!("cannot write {}", out.display()))
}

/// Reads the table's rows (header included); a missing file is an empty table.
fn read_rows(csv: &Path) -> Result<Vec<Vec<String>>> {
    let mut reader = match csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(csv)
    {
        Ok(r) => r,
        Err(e) if matches!(e.kind(), csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::NotFound) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", csv.display())),
    };
    reader
        .records()
        .map(|r| {
            r.map(|r| r.iter().map(str::to_string).collect())
                .with_context(|| format!("cannot read {}", csv.display()))
        })
        .collect()
}

/// Appends `row` to the table (created with its header), rewriting the file atomically.
fn append_row(csv: &Path, row: &[String]) -> Result<()> {
    let mut rows = read_rows(csv)?;
    if rows.is_empty() {
        rows.push(HEADER.iter().map(|h| h.to_string()).collect());
    }
    rows.push(row.to_vec());
    let mut writer = csv::WriterBuilder::new()
        .flexible(true)
        .from_writer(Vec::new());
    for r in &rows {
        writer.write_record(r)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| anyhow!("cannot write {}: {e}", csv.display()))?;
    write_atomic(csv, &bytes)?;
    eprintln!("recorded in {}", csv.display());
    Ok(())
}

fn print_table(csv: &Path) -> Result<()> {
    if !csv.is_file() {
        bail!(
            "cannot read {}: no such table (run `trainer-cli eval --model ... --text ...` first)",
            csv.display()
        );
    }
    let rows = read_rows(csv)?;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            // One line per row, whatever a path holds.
            let cell: String = cell
                .chars()
                .flat_map(char::escape_default)
                .collect::<String>();
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_commas_quotes_and_newlines_in_paths() {
        let d = tempfile::tempdir().unwrap();
        let csv = d.path().join(TABLE_FILE);
        let odd = ["a,b", "say \"hi\"", "two\nlines", "4", "5", "6", "7"].map(String::from);
        append_row(&csv, &odd).unwrap();
        append_row(&csv, &odd).unwrap();
        let rows = read_rows(&csv).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], HEADER);
        assert_eq!(rows[1], odd);
        assert_eq!(rows[2], odd);
    }

    #[test]
    fn ids_parse() {
        assert_eq!(parse_ids("1, 2,3").unwrap(), vec![1, 2, 3]);
        assert!(parse_ids("1,x").is_err());
        assert!(parse_ids(" ").is_err());
    }
}
