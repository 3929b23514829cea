//! Reading raw text: one file, or a folder of `.txt` files joined with the hard cut.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use crate::ChunkError;

/// Reads `path` as training text.
///
/// - A file is read whole. A UTF-8 BOM is stripped; CRLF and lone CR become LF.
/// - A folder is searched recursively for `*.txt` files (hidden entries and symlinked folders
///   are skipped). They are sorted in natural order of their relative paths (`2.txt` before
///   `10.txt`) and joined with `hard_cut` between them, or with `"\n\n"` when `hard_cut` is
///   empty, so the last sentence of one file never merges with the first of the next.
///
/// # Errors
/// [`ChunkError::Io`] for unreadable files or folders, [`ChunkError::InvalidUtf8`] with the
/// file and byte offset of the first bad byte, [`ChunkError::NoTextFiles`] for a folder
/// without `.txt` files.
pub fn read_text(path: &Path, hard_cut: &str) -> Result<String, ChunkError> {
    let meta = std::fs::metadata(path).map_err(|source| ChunkError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return read_file(path);
    }
    let mut files = Vec::new();
    collect_txt(path, &mut files)?;
    if files.is_empty() {
        return Err(ChunkError::NoTextFiles {
            path: path.to_path_buf(),
        });
    }
    files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    let sep = if hard_cut.is_empty() {
        "\n\n"
    } else {
        hard_cut
    };
    let mut out = String::new();
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(&read_file(file)?);
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<String, ChunkError> {
    let bytes = std::fs::read(path).map_err(|source| ChunkError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes).map_err(|offset| ChunkError::InvalidUtf8 {
        path: path.to_path_buf(),
        offset,
        line: bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1,
    })
}

/// UTF-8 decoding with BOM stripping and line-ending normalisation; `Err` holds the byte
/// offset (in `bytes`) of the first invalid byte.
pub(crate) fn decode(bytes: &[u8]) -> Result<String, usize> {
    let skip = if bytes.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let text = std::str::from_utf8(&bytes[skip..]).map_err(|e| skip + e.valid_up_to())?;
    if !text.contains('\r') {
        return Ok(text.to_owned());
    }
    Ok(text.replace("\r\n", "\n").replace('\r', "\n"))
}

fn collect_txt(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ChunkError> {
    let io_err = |source| ChunkError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(|source| ChunkError::Io {
            path: path.clone(),
            source,
        })?;
        if kind.is_dir() {
            collect_txt(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
            && std::fs::metadata(&path).is_ok_and(|m| m.is_file())
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Natural order: digit runs compare as numbers, other runs case-insensitively; ties by bytes.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a, b);
    loop {
        match (x.is_empty(), y.is_empty()) {
            (true, true) => return a.cmp(b),
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let (rx, tx) = split_run(x);
        let (ry, ty) = split_run(y);
        let ord = match (is_digits(rx), is_digits(ry)) {
            (true, true) => {
                let (nx, ny) = (rx.trim_start_matches('0'), ry.trim_start_matches('0'));
                nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny))
            }
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => rx.to_lowercase().cmp(&ry.to_lowercase()),
        };
        if ord != Ordering::Equal {
            return ord;
        }
        (x, y) = (tx, ty);
    }
}

fn is_digits(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_digit)
}

/// Splits off the leading run of digits or of non-digits.
fn split_run(s: &str) -> (&str, &str) {
    let digits = is_digits(s);
    let end = s
        .char_indices()
        .find(|&(_, c)| c.is_ascii_digit() != digits)
        .map_or(s.len(), |(i, _)| i);
    s.split_at(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn natural_order() {
        let mut v = vec!["b10.txt", "b2.txt", "a/z.txt", "B1.txt", "b02.txt"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["a/z.txt", "B1.txt", "b02.txt", "b2.txt", "b10.txt"]);
    }

    #[test]
    fn decode_strips_bom_and_crlf() {
        assert_eq!(decode(b"\xEF\xBB\xBFa\r\nb\rc").unwrap(), "a\nb\nc");
        assert_eq!(decode(b"ok\n\xFFbad"), Err(3));
        assert_eq!(decode(b"\xEF\xBB\xBFok\xC3"), Err(5));
    }

    proptest! {
        #[test]
        fn crlf_equals_lf(s in "[a-z. \n]{0,60}") {
            prop_assert_eq!(decode(s.replace('\n', "\r\n").as_bytes()).unwrap(), s);
        }

        #[test]
        fn natural_cmp_is_a_total_order(a in "[a-c0-9]{0,6}", b in "[a-c0-9]{0,6}") {
            prop_assert_eq!(natural_cmp(&a, &b), natural_cmp(&b, &a).reverse());
            prop_assert_eq!(natural_cmp(&a, &b) == Ordering::Equal, a == b);
        }
    }
}
