//! The GGUF container: header, metadata and tensor table of one file (or of every part of a split model), read
//! and checked without reading any tensor data, and the data of one tensor read on demand.
//!
//! Every length in the header is checked against the bytes left in the file before anything is allocated, every
//! header count in [`check_counts`], the memory the header takes once read against a limit, the model's counts
//! against sane limits and the tensors present ([`crate::gguf_limits`]), every tensor's data range against the
//! file and against the other tensors (a truncated or tampered file is refused here, naming the tensor), and
//! tensor types are kept as their GGML ids so a file holding types this crate cannot decode still opens (the
//! loader names the tensor and the type when it needs one).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::gguf_limits::{self, HeaderMemory, ENTRY_BYTES, TENSOR_BYTES, VALUE_BYTES};

const MAGIC: u32 = 0x4655_4747; // "GGUF", little-endian
const MAX_DIMS: u32 = 4;
/// Nesting of metadata arrays (GGUF has arrays of arrays; real files use one level).
const MAX_DEPTH: u32 = 4;

/// One tensor of the table.
#[derive(Debug, Clone)]
pub(crate) struct TensorInfo {
    pub name: String,
    /// Dimensions outermost first (rows, then columns: the reverse of GGML's `ne`).
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Which part of a split model holds it.
    pub part: usize,
    /// Absolute byte offset of its data in that part.
    pub start: u64,
    /// Bytes of data, when the type is one this crate knows the block size of.
    pub bytes: Option<u64>,
}

/// A GGUF model: the metadata of its first part and the tensors of all its parts.
pub(crate) struct GgufModel {
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorInfo>,
    parts: Vec<(PathBuf, File)>,
}

/// Refuses header counts that cannot fit in the bytes left: each tensor entry takes at least 24 bytes (an empty
/// name's length, one dimension, type and offset), each metadata entry at least 12 (an empty key's length and a
/// type). The one place header counts are validated.
pub(crate) fn check_counts(tensors: u64, kvs: u64, left: u64, path: &Path) -> Result<()> {
    let need = tensors
        .checked_mul(24)
        .and_then(|t| kvs.checked_mul(12).and_then(|k| t.checked_add(k)));
    match need {
        Some(n) if n <= left => Ok(()),
        _ => Err(Error::model(
            path,
            format!(
                "the header declares {tensors} tensors and {kvs} metadata entries, more than the {left} bytes left \
                 in the file can hold: the file is damaged"
            ),
        )),
    }
}

/// A byte reader that knows how much of the file is left, so no length read from the file can make it allocate
/// more than the file holds.
struct Reader<'a> {
    r: BufReader<&'a File>,
    pos: u64,
    len: u64,
    path: &'a Path,
    wide: bool,
    memory: &'a mut HeaderMemory,
}

impl Reader<'_> {
    fn damaged(&self, what: impl std::fmt::Display) -> Error {
        Error::model(
            self.path,
            format!(
                "not a readable GGUF file: {what} (at byte {}): the file is truncated or damaged",
                self.pos
            ),
        )
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|_| self.damaged("unexpected end of the header"))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes::<4>()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes::<8>()?))
    }

    /// A length or count (u64 since GGUF v2, u32 in v1).
    fn len(&mut self) -> Result<u64> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        if n > self.left() {
            return Err(self.damaged(format!(
                "a string of {n} bytes is longer than the rest of the file"
            )));
        }
        self.memory.add(n, self.path)?;
        let mut b = vec![0u8; n as usize];
        self.r
            .read_exact(&mut b)
            .map_err(|_| self.damaged("unexpected end of the header"))?;
        self.pos += n;
        String::from_utf8(b).map_err(|_| self.damaged("a string is not UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.bytes::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.bytes::<1>()?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes::<2>()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes::<2>()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes::<4>()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes::<4>()?)),
            7 => match self.bytes::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.damaged(format!("boolean value {b}"))),
            },
            8 => Value::String(self.string()?),
            9 if depth < MAX_DEPTH => {
                let elem = self.u32()?;
                let n = self.len()?;
                if n > self.left() {
                    return Err(self.damaged(format!(
                        "an array of {n} values is longer than the rest of the file"
                    )));
                }
                self.memory.add_items(n, VALUE_BYTES, self.path)?;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes::<8>()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes::<8>()?)),
            9 => return Err(self.damaged("metadata arrays nested too deep")),
            t => return Err(self.damaged(format!("unknown metadata value type {t}"))),
        })
    }
}

/// The header of one file: metadata and tensor table (offsets absolute, ranges checked).
fn read_part(
    path: &Path,
    file: &File,
    part: usize,
    memory: &mut HeaderMemory,
) -> Result<(HashMap<String, Value>, Vec<TensorInfo>)> {
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = Reader {
        r: BufReader::new(file),
        pos: 0,
        len,
        path,
        wide: true,
        memory,
    };
    if r.u32().ok() != Some(MAGIC) {
        return Err(Error::model(
            path,
            "not a GGUF file (the first 4 bytes are not `GGUF`)",
        ));
    }
    let version = r.u32()?;
    if !(1..=3).contains(&version) {
        return Err(Error::model(
            path,
            format!("GGUF version {version} is not supported (1 to 3 are)"),
        ));
    }
    r.wide = version >= 2;
    let n_tensors = r.len()?;
    let n_kvs = r.len()?;
    check_counts(n_tensors, n_kvs, r.left(), path)?;
    r.memory.add_items(n_kvs, ENTRY_BYTES + VALUE_BYTES, path)?;
    r.memory.add_items(n_tensors, TENSOR_BYTES, path)?;
    let mut metadata = HashMap::new();
    for _ in 0..n_kvs {
        let key = r.string()?;
        let ty = r.u32()?;
        let v = r.value(ty, 0)?;
        metadata.insert(key, v);
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        // A u32 in GGUF; the smaller integer types are read too, as candle's reader does.
        Some(v) => match alignment_value(v) {
            Some(a) if a.is_power_of_two() => a,
            _ => {
                return Err(Error::model(
                    path,
                    format!(
                        "metadata `general.alignment` is {v:?}: the file is damaged (GGUF needs a power of two, \
                         stored as an unsigned 32-bit integer)"
                    ),
                ))
            }
        },
    };
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(r.damaged(format!("tensor `{name}` has {n_dims} dimensions")));
        }
        r.memory.add_items(u64::from(n_dims), 8, path)?;
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = r.u64()?;
            ne.push(
                usize::try_from(d)
                    .map_err(|_| r.damaged(format!("tensor `{name}` has a dimension of {d}")))?,
            );
        }
        let ty = GgmlType(r.u32()?);
        let offset = r.u64()?;
        if offset % alignment != 0 {
            return Err(r.damaged(format!(
                "tensor `{name}`'s data offset {offset} is not a multiple of {alignment}"
            )));
        }
        ne.reverse();
        gguf_limits::check_shape(&name, &ne, path)?;
        let bytes = ty
            .data_bytes(&ne)
            .map_err(|e| Error::model(path, format!("tensor `{name}`: {e}")))?;
        tensors.push(TensorInfo {
            name,
            dims: ne,
            ty,
            part,
            start: offset,
            bytes,
        });
    }
    let data_start = r.pos.div_ceil(alignment) * alignment;
    for t in &mut tensors {
        t.start = t.start.saturating_add(data_start);
    }
    check_ranges(path, len, &tensors)?;
    Ok((metadata, tensors))
}

/// The value of `general.alignment` when it is a non-negative integer of at most 32 bits.
fn alignment_value(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(a) => Some(u64::from(a)),
        Value::U16(a) => Some(u64::from(a)),
        Value::U32(a) => Some(u64::from(a)),
        Value::I8(a) => u64::try_from(a).ok(),
        Value::I16(a) => u64::try_from(a).ok(),
        Value::I32(a) => u64::try_from(a).ok(),
        _ => None,
    }
}

/// Refuses tensors whose data runs past the end of the file or overlaps another tensor's.
fn check_ranges(path: &Path, len: u64, tensors: &[TensorInfo]) -> Result<()> {
    let mut sized: Vec<(&TensorInfo, u64)> = tensors
        .iter()
        .filter_map(|t| t.bytes.map(|b| (t, b)))
        .collect();
    sized.sort_by_key(|(t, _)| t.start);
    for (t, b) in &sized {
        if t.start.checked_add(*b).is_none_or(|end| end > len) {
            return Err(Error::model(
                path,
                format!(
                    "tensor `{}` ({} bytes of {} at byte {}) runs past the end of the file ({len} bytes): the file \
                     is truncated or damaged",
                    t.name,
                    b,
                    t.ty.name(),
                    t.start
                ),
            ));
        }
    }
    for w in sized.windows(2) {
        let ((a, ab), (b, _)) = (w[0], w[1]);
        if b.start < a.start + ab {
            return Err(Error::model(
                path,
                format!(
                    "tensors `{}` and `{}` overlap (bytes {}..{} and from {}): the file is damaged or was tampered with",
                    a.name,
                    b.name,
                    a.start,
                    a.start + ab,
                    b.start
                ),
            ));
        }
    }
    Ok(())
}

/// The parts of a split model named like `name-00001-of-00003.gguf`, or just `path`.
fn part_paths(path: &Path) -> Vec<PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let split = name.strip_suffix(".gguf").and_then(|stem| {
        let (head, count) = stem.rsplit_once("-of-")?;
        let (base, no) = head.rsplit_once('-')?;
        let ok = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
        (ok(no) && ok(count) && no == "00001")
            .then(|| (base.to_string(), count.parse::<usize>().ok()))
    });
    match split {
        Some((base, Some(count))) if count > 1 => (1..=count)
            .map(|i| path.with_file_name(format!("{base}-{i:05}-of-{count:05}.gguf")))
            .collect(),
        _ => vec![path.to_path_buf()],
    }
}

impl GgufModel {
    /// Reads and checks the header of `path`, and of every part when it is the first part of a split model.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let paths = part_paths(path);
        let mut parts = Vec::with_capacity(paths.len());
        let mut metadata = HashMap::new();
        let mut tensors = HashMap::new();
        let mut memory = HeaderMemory::default();
        for (i, p) in paths.iter().enumerate() {
            let file = File::open(p).map_err(|e| Error::io(p, e))?;
            let (md, ts) = read_part(p, &file, i, &mut memory)?;
            if i == 0 {
                metadata = md;
                let declared = metadata.get("split.count").and_then(|v| v.to_u16().ok());
                if let Some(n) = declared {
                    if usize::from(n) != paths.len() {
                        return Err(Error::model(
                            p,
                            format!(
                                "metadata `split.count` is {n} but the file name says {} parts; rename the parts \
                                 as `NAME-0000k-of-0000n.gguf` and load the first",
                                paths.len()
                            ),
                        ));
                    }
                }
            }
            for t in ts {
                if let Some(old) = tensors.insert(t.name.clone(), t) {
                    return Err(Error::model(
                        p,
                        format!("tensor `{}` appears twice", old.name),
                    ));
                }
            }
            parts.push((p.clone(), file));
        }
        gguf_limits::check_model(&metadata, &tensors, path)?;
        Ok(Self {
            metadata,
            tensors,
            parts,
        })
    }

    /// The file a tensor's data is in.
    pub(crate) fn path_of(&self, t: &TensorInfo) -> &Path {
        &self.parts[t.part].0
    }

    /// Reads the data of `t` (whose size is known) into `out` (`t.bytes` long).
    pub(crate) fn read(&self, t: &TensorInfo, out: &mut [u8]) -> Result<()> {
        let (path, file) = &self.parts[t.part];
        file.read_exact_at(out, t.start)
            .map_err(|e| Error::io(path, e))
    }
}
