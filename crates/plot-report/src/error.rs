//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong reading a training log, rendering a graph or writing and reading TensorBoard
/// events.
///
/// Each message names the file (and line or field) and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{action} `{path}`")]
    Io {
        /// "cannot read training log", ...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of the training log is not a valid record.
    #[error("{origin}, line {line}: {message} (each line must be one JSON object with at least `step` and `epoch`)")]
    BadLine {
        /// The log's file name (or "training log" for text).
        origin: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A TensorBoard events file is damaged or cut short.
    #[error("{origin}: record at byte {offset}: {message} (not a whole TensorBoard events file)")]
    BadEvents {
        /// The file (or what the bytes came from).
        origin: String,
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// There is nothing to draw.
    #[error("nothing to plot: {0}")]
    NothingToPlot(&'static str),
    /// A schedule point that is not a finite number.
    #[error("schedule point {index} is ({x}, {y}): both coordinates must be finite numbers")]
    BadPoint {
        /// 0-based index of the point.
        index: usize,
        /// Its x (epoch or step).
        x: f64,
        /// Its y (learning rate).
        y: f64,
    },
    /// A rendering option is out of range.
    #[error("invalid graph option `{field}` = {value}: {expected}")]
    BadOption {
        /// The option's name.
        field: &'static str,
        /// The value given, as text.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// Drawing or encoding the PNG failed.
    #[error("cannot render `{path}`: {message}")]
    Render {
        /// The PNG that was being written.
        path: PathBuf,
        /// The drawing library's message.
        message: String,
    },
}
