//! The training log file: `training_log.jsonl`, appended one synced line per step, each record whole or
//! absent.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use plot_report::LogRecord;

use crate::error::{Error, Result};

/// Appends log records, one synced line each, so the log survives a crash. A failed append (a full disk)
/// is cut back off, and a torn last line left by a crash is cut off when the log is opened again.
#[derive(Debug)]
pub(crate) struct LogFile {
    file: File,
    path: PathBuf,
}

impl LogFile {
    /// Opens (or creates) the log for appending, cutting off a torn last line.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let io = |e| Error::io(path, e);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let whole = whole_lines_len(&mut file).map_err(io)?;
        if whole < file.metadata().map_err(io)?.len() {
            file.set_len(whole).map_err(io)?;
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one record; on failure the file is cut back to where it was.
    pub(crate) fn append(&mut self, rec: &LogRecord) -> Result<()> {
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
        written.map_err(|e| Error::io(&self.path, e))
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
    use plot_report::read_log;

    #[test]
    fn a_torn_last_line_is_cut_off_and_records_stay_whole() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("training_log.jsonl");
        std::fs::write(&path, "{\"step\":1,\"epoch\":0.1}\n{\"step\":2,\"ep").unwrap();
        let mut log = LogFile::open(&path).unwrap();
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
            drop(LogFile::open(&path).unwrap());
            assert_eq!(std::fs::metadata(&path).unwrap().len(), left, "{text:?}");
        }
    }
}
