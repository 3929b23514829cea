//! TensorBoard event files: a writer of scalar summaries and a reader, with no protobuf library (the four
//! fields involved are encoded by hand).
//!
//! A file is a sequence of TFRecords (`u64` little-endian length, masked CRC-32C of the length, the data,
//! masked CRC-32C of the data), each the protobuf encoding of an `Event`: `wall_time` (double, field 1),
//! `step` (int64, field 2), then `file_version` (string, field 3: `"brain.Event:2"` in the first event of a
//! file), a `Summary` (field 5: repeated `Value { tag = 1; simple_value = 2 }`) or a `SessionLog` (field 6:
//! `status = 1`, START is 1). TensorBoard reads every `events.out.tfevents.*` file of a folder, in name order;
//! a `SessionLog` START at step `s` makes it drop the points at steps `>= s` of the files before, which is how
//! a run resumed from an earlier checkpoint replaces what was logged after that checkpoint.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// The name every events file starts with (TensorBoard's own).
pub const EVENTS_FILE_PREFIX: &str = "events.out.tfevents.";

/// The file version TensorBoard expects in the first event of a file.
pub const FILE_VERSION: &str = "brain.Event:2";

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// One event read back from a file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TbEvent {
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    /// The step.
    pub step: i64,
    /// `file_version`, in the first event of a file.
    pub file_version: Option<String>,
    /// The summary's scalar values as `(tag, value)`.
    pub scalars: Vec<(String, f32)>,
    /// A `SessionLog` START marker.
    pub session_start: bool,
}

/// Writes one events file; every event is written whole and synced before the call returns, so a crash
/// loses at most the event being written.
#[derive(Debug)]
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates a new events file in `dir` (made if missing), named
    /// `events.out.tfevents.<seconds>.<host>.<pid>.<n>` (TensorBoard's pattern), and writes its first event
    /// (`file_version`). An existing file is never touched: each writer gets a new one.
    pub fn create(dir: &Path) -> Result<Self, Error> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io("cannot create folder", dir))?;
        let now = now();
        let host = host_name();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!(
                "{EVENTS_FILE_PREFIX}{}.{host}.{}.{n}",
                now as u64,
                std::process::id()
            );
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let mut w = Self { file, path };
                    w.write_record(&encode_event(now, 0, Body::Version))?;
                    return Ok(w);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("cannot create events file", &path)(e)),
            }
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the scalars of one step as one event (wall time now).
    pub fn write_scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<(), Error> {
        let values: Vec<(&str, f32)> = scalars.iter().map(|&(t, v)| (t, v as f32)).collect();
        self.write_record(&encode_event(now(), step as i64, Body::Scalars(&values)))
    }

    /// Writes a session start at `step`: TensorBoard then drops the points at steps `>= step` from the
    /// earlier files of the folder (a run resumed from a checkpoint at `step` replaces what came after it).
    pub fn write_session_start(&mut self, step: u64) -> Result<(), Error> {
        self.write_record(&encode_event(now(), step as i64, Body::SessionStart))
    }

    fn write_record(&mut self, data: &[u8]) -> Result<(), Error> {
        let mut rec = Vec::with_capacity(data.len() + 16);
        let len = (data.len() as u64).to_le_bytes();
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&rec)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| Error::Io {
                action: "cannot write events file",
                path: self.path.clone(),
                source,
            })
    }
}

/// Reads the events of one file.
pub fn read_event_file(path: &Path) -> Result<Vec<TbEvent>, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        action: "cannot read events file",
        path: path.to_path_buf(),
        source,
    })?;
    parse_events(&bytes, &path.display().to_string())
}

/// The events files of folder `dir`, in name order (TensorBoard's), each with its events.
pub fn read_event_dir(dir: &Path) -> Result<Vec<(PathBuf, Vec<TbEvent>)>, Error> {
    let io = |source| Error::Io {
        action: "cannot read folder",
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(EVENTS_FILE_PREFIX))
        {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| read_event_file(&p).map(|e| (p, e)))
        .collect()
}

/// Parses the records of an events file's bytes; `origin` names it in errors. Every length and CRC is
/// checked; a record cut short (a crash while writing) is an error naming its offset.
pub fn parse_events(bytes: &[u8], origin: &str) -> Result<Vec<TbEvent>, Error> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let bad = |offset: usize, message: String| Error::BadEvents {
        origin: origin.to_string(),
        offset: offset as u64,
        message,
    };
    while at < bytes.len() {
        let head = bytes
            .get(at..at + 12)
            .ok_or_else(|| bad(at, "record header cut short".into()))?;
        let (len_bytes, len_crc) = head.split_at(8);
        if masked_crc(len_bytes) != u32_le(len_crc) {
            return Err(bad(at, "length CRC does not match".into()));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default());
        let data_end = usize::try_from(len)
            .ok()
            .and_then(|l| (at + 12).checked_add(l))
            .filter(|&e| e.checked_add(4).is_some_and(|end| end <= bytes.len()))
            .ok_or_else(|| bad(at, format!("record of {len} bytes cut short")))?;
        let data = &bytes[at + 12..data_end];
        if masked_crc(data) != u32_le(&bytes[data_end..data_end + 4]) {
            return Err(bad(at, "data CRC does not match".into()));
        }
        out.push(decode_event(data).map_err(|m| bad(at, m))?);
        at = data_end + 4;
    }
    Ok(out)
}

fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().unwrap_or_default())
}

fn masked_crc(data: &[u8]) -> u32 {
    let crc = CRC32C.checksum(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The host name for the file name (letters, digits, `-` and `_` kept), `localhost` when unknown.
fn host_name() -> String {
    let raw = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

enum Body<'a> {
    Version,
    Scalars(&'a [(&'a str, f32)]),
    SessionStart,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn encode_event(wall_time: f64, step: i64, body: Body<'_>) -> Vec<u8> {
    let mut out = vec![0x09];
    out.extend_from_slice(&wall_time.to_le_bytes());
    out.push(0x10);
    put_varint(&mut out, step as u64);
    match body {
        Body::Version => put_bytes(&mut out, 3, FILE_VERSION.as_bytes()),
        Body::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, v) in values {
                let mut value = Vec::new();
                put_bytes(&mut value, 1, tag.as_bytes());
                value.push(0x15);
                value.extend_from_slice(&v.to_le_bytes());
                put_bytes(&mut summary, 1, &value);
            }
            put_bytes(&mut out, 5, &summary);
        }
        Body::SessionStart => put_bytes(&mut out, 6, &[0x08, 0x01]),
    }
    out
}

/// A protobuf field: its number and its value by wire type.
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

/// The fields of one protobuf message, in order.
fn fields(mut b: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    fn varint(b: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first().ok_or("varint cut short")?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err(format!("field of {n} bytes cut short"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut b)?),
            1 => Field::Fixed64(take(&mut b, 8)?.try_into().unwrap_or_default()),
            2 => {
                let n = usize::try_from(varint(&mut b)?).map_err(|_| "length too large")?;
                Field::Bytes(take(&mut b, n)?)
            }
            5 => Field::Fixed32(take(&mut b, 4)?.try_into().unwrap_or_default()),
            w => return Err(format!("wire type {w} is not used by events")),
        };
        out.push((key >> 3, field));
    }
    Ok(out)
}

fn decode_event(data: &[u8]) -> Result<TbEvent, String> {
    let mut e = TbEvent::default();
    for (number, field) in fields(data)? {
        match (number, field) {
            (1, Field::Fixed64(b)) => e.wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => e.step = v as i64,
            (3, Field::Bytes(b)) => {
                e.file_version = Some(String::from_utf8_lossy(b).into_owned());
            }
            (5, Field::Bytes(summary)) => {
                for (n, value) in fields(summary)? {
                    let (1, Field::Bytes(value)) = (n, value) else {
                        continue;
                    };
                    let (mut tag, mut simple) = (None, None);
                    for (vn, vf) in fields(value)? {
                        match (vn, vf) {
                            (1, Field::Bytes(t)) => {
                                tag = Some(String::from_utf8_lossy(t).into_owned())
                            }
                            (2, Field::Fixed32(v)) => simple = Some(f32::from_le_bytes(v)),
                            _ => {}
                        }
                    }
                    if let (Some(tag), Some(v)) = (tag, simple) {
                        e.scalars.push((tag, v));
                    }
                }
            }
            (6, Field::Bytes(log)) => {
                e.session_start = fields(log)?
                    .iter()
                    .any(|(n, f)| *n == 1 && matches!(f, Field::Varint(1)));
            }
            (1 | 2, _) => return Err(format!("event field {number} has the wrong wire type")),
            _ => {}
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `data` framed as one record with valid CRCs.
    fn framed(data: &[u8]) -> Vec<u8> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = len.to_vec();
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        rec
    }

    proptest! {
        /// Past the CRCs (which random bytes almost never get right, so the fuzz target rarely reaches the
        /// decoder), any payload decodes or is refused without a panic, and scalars written read back.
        #[test]
        fn any_framed_payload_decodes_or_is_refused(payload in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_events(&framed(&payload), "p");
        }

        #[test]
        fn scalars_round_trip(step in 0u64..1 << 40, values in prop::collection::vec(("[a-z/_]{1,12}", any::<f32>()), 0..6)) {
            let pairs: Vec<(&str, f32)> = values.iter().map(|(t, v)| (t.as_str(), *v)).collect();
            let events = parse_events(&framed(&encode_event(1.0, step as i64, Body::Scalars(&pairs))), "p").unwrap();
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(events[0].step, step as i64);
            let got: Vec<(String, u32)> = events[0].scalars.iter().map(|(t, v)| (t.clone(), v.to_bits())).collect();
            let want: Vec<(String, u32)> = values.iter().map(|(t, v)| (t.clone(), v.to_bits())).collect();
            prop_assert_eq!(got, want);
        }
    }

    /// TensorBoard's `masked_crc32c(struct.pack("<Q", 0))`.
    const MASKED_ZERO_LEN: u32 = 0x0798_0329;

    #[test]
    fn crc32c_and_its_mask_match_known_values() {
        // The CRC-32C check value, and TensorBoard's masked CRC of a zero length.
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(&0u64.to_le_bytes()), MASKED_ZERO_LEN);
    }

    #[test]
    fn events_encode_as_tensorboard_writes_them() {
        // The first event of a file written by TensorBoard's own EventFileWriter at wall time 1.5, step 0.
        let data = encode_event(1.5, 0, Body::Version);
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 0x00, 0x1a, 0x0d]);
        want.extend_from_slice(b"brain.Event:2");
        assert_eq!(data, want);
        let ev = decode_event(&encode_event(
            2.0,
            300,
            Body::Scalars(&[("train/loss", 1.25)]),
        ))
        .unwrap();
        assert_eq!(ev.step, 300);
        assert_eq!(ev.scalars, [("train/loss".to_string(), 1.25)]);
    }
}
