//! `trainer-cli eval`: perplexity of a model (optionally with an adapter)
//! on a text, recorded in an evaluations table; or the logits of every
//! position dumped to safetensors.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use trainer_core::{Adapter, Model};

use crate::fsutil::write_atomic;
use crate::train::candle_device;

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
    /// The evaluations table (CSV) that each perplexity is appended to.
    #[arg(long, default_value = "evaluations.csv")]
    pub csv: PathBuf,
    /// Print the evaluations table and exit.
    #[arg(long)]
    pub table: bool,
}

const HEADER: &str = "model,adapter,dataset,perplexity,stride,max_length,date";

/// Runs `trainer-cli eval`.
pub fn run(args: &EvalArgs) -> Result<ExitCode> {
    if args.table {
        print_table(&args.csv)?;
        return Ok(ExitCode::SUCCESS);
    }
    let model_path = args
        .model
        .as_ref()
        .ok_or_else(|| anyhow!("give --model PATH"))?;
    let model = Model::load(model_path, &candle_device())
        .with_context(|| format!("cannot load model {}", model_path.display()))?;
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
    let row = [
        csv_field(&model_path.display().to_string()),
        csv_field(
            &args
                .adapter
                .as_ref()
                .map_or("-".to_string(), |a| a.display().to_string()),
        ),
        csv_field(&text_path.display().to_string()),
        format!("{ppl:.4}"),
        args.stride.to_string(),
        args.max_length.to_string(),
        utc_now(),
    ]
    .join(",");
    append_row(&args.csv, &row)?;
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
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    candle_core::safetensors::save(&map, &tmp)
        .with_context(|| format!("cannot write {}", out.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn append_row(csv: &Path, row: &str) -> Result<()> {
    let mut text = match std::fs::read_to_string(csv) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!("{HEADER}\n"),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", csv.display())),
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(row);
    text.push('\n');
    write_atomic(csv, text.as_bytes())?;
    eprintln!("recorded in {}", csv.display());
    Ok(())
}

fn print_table(csv: &Path) -> Result<()> {
    let text = std::fs::read_to_string(csv).with_context(|| {
        format!(
            "cannot read {} (run `trainer-cli eval --model ... --text ...` first)",
            csv.display()
        )
    })?;
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(split_csv)
        .collect();
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
        for (c, cell) in r.iter().enumerate() {
            let _ = write!(out, "{cell:<w$}  ", w = widths[c]);
        }
        out = out.trim_end().to_string();
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

fn split_csv(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => cells.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    cells.push(cur);
    cells
}

/// "YYYY-MM-DD HH:MM:SS" in UTC.
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_786), (2026, 11, 29));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn csv_round_trip() {
        let row = [csv_field("a,b"), csv_field("say \"hi\""), "3".into()].join(",");
        assert_eq!(split_csv(&row), vec!["a,b", "say \"hi\"", "3"]);
    }

    #[test]
    fn ids_parse() {
        assert_eq!(parse_ids("1, 2,3").unwrap(), vec![1, 2, 3]);
        assert!(parse_ids("1,x").is_err());
        assert!(parse_ids(" ").is_err());
    }
}
