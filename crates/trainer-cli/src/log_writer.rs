//! The training log writer: `training_log.jsonl` appended one synced line
//! per step, a record whole or absent.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use plot_report::LogRecord;

/// Appends log records, one synced line each, so the log survives a crash.
/// A record is whole or absent: a failed append (a full disk) is cut back
/// off, and a torn last line left by a crash is cut off when the log is
/// opened again.
pub struct LogWriter {
    file: File,
    path: PathBuf,
}

impl LogWriter {
    /// Opens (or creates) the log for appending, cutting off a torn last line.
    pub fn open(path: PathBuf) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let whole = whole_lines_len(&mut file)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if whole < file.metadata()?.len() {
            file.set_len(whole)
                .with_context(|| format!("cannot repair {}", path.display()))?;
        }
        Ok(Self { file, path })
    }

    /// Appends one record; on failure the file is cut back to where it was.
    pub fn append(&mut self, rec: &LogRecord) -> Result<()> {
        let before = self.file.metadata().map(|m| m.len());
        let written = self
            .file
            .write_all(rec.to_json_line().as_bytes())
            .and_then(|()| self.file.sync_data());
        if written.is_err() {
            if let Ok(len) = before {
                let _ = self.file.set_len(len);
            }
        }
        written.with_context(|| format!("cannot append to {}", self.path.display()))
    }
}

/// The length of `file` up to and including its last newline.
fn whole_lines_len(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::LOG_FILE;
    use plot_report::read_log;

    #[test]
    fn a_torn_last_line_is_cut_off_and_records_stay_whole() {
        let d = std::env::temp_dir().join(format!("trainer-cli-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join(LOG_FILE);
        std::fs::write(&path, "{\"step\":1,\"epoch\":0.1}\n{\"step\":2,\"ep").unwrap();
        let mut log = LogWriter::open(path.clone()).unwrap();
        log.append(&LogRecord {
            step: 2,
            epoch: 0.2,
            ..LogRecord::default()
        })
        .unwrap();
        let steps: Vec<u64> = read_log(&path)
            .unwrap()
            .records
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, [1, 2]);
        // A log without a newline at all, and an empty one.
        for (text, left) in [("{\"step\":1", 0), ("", 0), ("\n", 1)] {
            std::fs::write(&path, text).unwrap();
            drop(LogWriter::open(path.clone()).unwrap());
            assert_eq!(std::fs::metadata(&path).unwrap().len(), left, "{text:?}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
