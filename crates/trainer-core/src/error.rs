//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `trainer-core`.
///
/// Every variant names the file, tensor or field involved and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A model file is missing, malformed or describes something this crate cannot load.
    #[error("{path}: {message}")]
    Model {
        /// The model file or directory.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// A tensor has the wrong shape or is missing.
    #[error("tensor `{name}`: {message}")]
    Tensor {
        /// The tensor's name (PEFT key, HF weight name or GGUF name).
        name: String,
        /// What is wrong.
        message: String,
    },
    /// An adapter directory is malformed or does not fit the model.
    #[error("adapter {path}: {message}")]
    Adapter {
        /// The adapter directory or file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Invalid input from the caller (empty batch, token id out of range, bad setting...).
    #[error("{field}: {message}")]
    Input {
        /// The argument or setting at fault.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A dataset, format file or chat template is malformed, or a record does not fit it. The message names the
    /// record (1-based, and its line in JSON Lines files) and what to do.
    #[error("{path}: {message}")]
    Dataset {
        /// The dataset, format or template file.
        path: PathBuf,
        /// Where (record, line, field), what is wrong and what to do.
        message: String,
    },
    /// The tokenizer could not be built or failed on the input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An error from the LoRA settings / PEFT config crate.
    #[error(transparent)]
    Lora(#[from] lora_targets::Error),
    /// A numerical failure inside candle (shape mismatch in an op, allocation failure...).
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Training was cancelled through the cancel flag.
    #[error("cancelled")]
    Cancelled,
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Model {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Tensor {
            name: name.into(),
            message: message.into(),
        }
    }

    pub(crate) fn adapter(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Adapter {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn dataset(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Dataset {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn input(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Input {
            field: field.into(),
            message: message.into(),
        }
    }
}
