//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading or chunking text.
///
/// Every message names the file, byte offset or setting at fault and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// A file or folder could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error (the [`source`](std::error::Error::source) of this one).
        source: std::io::Error,
    },
    /// A file is not valid UTF-8.
    #[error(
        "{} is not valid UTF-8 at byte {offset} (line {line}); re-save it as UTF-8",
        path.display()
    )]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid byte in the file (after a stripped BOM, counted in the raw file).
        offset: usize,
        /// 1-based line of that byte.
        line: usize,
    },
    /// A folder holds no `.txt` file (searched recursively).
    #[error("{} holds no .txt file (searched recursively); point to a .txt file or a folder of them", path.display())]
    NoTextFiles {
        /// The folder.
        path: PathBuf,
    },
    /// A setting of [`ChunkConfig`](crate::ChunkConfig) is out of range.
    #[error("invalid chunk setting `{field}` = {value}: {reason}")]
    Config {
        /// The setting's name, as the builder method without `with_` (`cutoff`, `hard_cut`, ...).
        field: &'static str,
        /// The rejected value.
        value: String,
        /// What is wrong and what to do instead.
        reason: String,
    },
    /// The token counter cannot give exact counts as configured.
    #[error("token counter unusable for chunking: {0}")]
    Counter(String),
    /// The cancel flag given with [`ChunkConfig::with_cancel`](crate::ChunkConfig::with_cancel) was raised.
    #[error("chunking cancelled")]
    Cancelled,
}
