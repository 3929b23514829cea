//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `trainer-core`.
///
/// Every variant names the file, tensor or field involved and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error (the [`source`](std::error::Error::source) of this one).
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
    /// A data file (raw text, dataset, format file or chat template) is malformed or yields nothing to train, or
    /// a record does not fit it. The message names the record (1-based, and its line in JSON Lines files) and
    /// what to do.
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
    #[error("tensor computation failed")]
    Candle(#[from] candle_core::Error),
    /// Training was cancelled through the cancel flag.
    #[error("cancelled")]
    Cancelled,
    /// A setting of a training job is out of range or does not fit the model or the data. `field` is the
    /// setting's name (the key of the command line's settings file), for showing the error next to it.
    #[error("setting `{field}`: {message}")]
    Setting {
        /// The setting at fault.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The slicer rejected the text or its settings.
    #[error(transparent)]
    Chunk(#[from] prts_chunker::ChunkError),
    /// The training log or a TensorBoard events file could not be written or read.
    #[error(transparent)]
    Report(#[from] plot_report::Error),
    /// The step plan or learning-rate schedule cannot be built.
    #[error(transparent)]
    Schedule(#[from] schedulers::Error),
    /// The checkpoint policy's settings are invalid.
    #[error(transparent)]
    Policy(#[from] checkpoint_policy::Error),
    /// Training diverged: a non-finite loss, gradient norm or weight. The step was neither saved nor logged.
    #[error(
        "training diverged: {what} at step {step} (learning rate {lr:.3e}); training stopped and this step was \
         not saved; {}. Lower the learning rate and start again",
        last_checkpoint.as_ref().map_or("no checkpoint was written yet".to_string(),
            |d| format!("the last good checkpoint is {}", d.display()))
    )]
    Diverged {
        /// What went non-finite ("the loss became NaN", ...).
        what: String,
        /// The optimizer step (1-based) at which it happened.
        step: u64,
        /// That step's learning rate.
        lr: f64,
        /// The newest checkpoint written before it, every weight of which is finite.
        last_checkpoint: Option<PathBuf>,
    },
    /// A checkpoint cannot be resumed: it is damaged, or was trained on other data or with other settings.
    /// Nothing was changed.
    #[error("cannot resume from {checkpoint}: {message}")]
    Resume {
        /// The checkpoint folder.
        checkpoint: PathBuf,
        /// Why, naming each setting that differs with its old and new value.
        message: String,
    },
    /// A data-parallel job's processes do not agree (settings, data, model or start state differ), or one of
    /// them stopped answering or left: the job stops on every process.
    #[error("process {rank}: {message}")]
    Distributed {
        /// The rank of the process reporting it.
        rank: usize,
        /// What happened, naming the processes concerned, and what to do.
        message: String,
    },
    /// A checkpoint could not be written; the earlier ones are intact.
    #[error("cannot write checkpoint {name}; earlier checkpoints are intact")]
    Checkpoint {
        /// The checkpoint's name.
        name: String,
        /// Why (the [`source`](std::error::Error::source) of this one).
        source: Box<Error>,
    },
    /// An output folder already holds a training run, and replacing it was not allowed.
    #[error("output folder {dir} already holds a training run")]
    RunExists {
        /// The output folder.
        dir: PathBuf,
    },
    /// An output folder's path names a file.
    #[error("output {path} is a file, not a folder")]
    NotAFolder {
        /// The path.
        path: PathBuf,
    },
    /// An output folder holds no complete checkpoint to resume from.
    #[error("{dir} has no complete checkpoint to resume from")]
    NoCheckpoint {
        /// The output folder.
        dir: PathBuf,
    },
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

    pub(crate) fn setting(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Setting {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn distributed(rank: usize, message: impl Into<String>) -> Self {
        Self::Distributed {
            rank,
            message: message.into(),
        }
    }

    pub(crate) fn resume(checkpoint: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Resume {
            checkpoint: checkpoint.into(),
            message: message.into(),
        }
    }

    /// Whether this error, or one it was caused by, is a full disk, a quota or a file-size limit
    /// (`ENOSPC`, `EDQUOT`, `EFBIG`): the case where freeing space and resuming helps.
    pub fn is_disk_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull
                        | std::io::ErrorKind::QuotaExceeded
                        | std::io::ErrorKind::FileTooLarge
                ) {
                    return true;
                }
            }
            cause = e.source();
        }
        false
    }
}
