//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
///
/// Each message names the offending value or field and says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An architecture name that is not supported.
    #[error("unknown architecture `{given}`: use one of {valid} (the HF `model_type` or GGUF `general.architecture`)")]
    UnknownArch {
        /// What was asked for.
        given: String,
        /// The valid names, comma separated.
        valid: String,
    },
    /// A preset name that is not known.
    #[error("unknown target preset `{given}`: use one of {valid}")]
    UnknownPreset {
        /// What was asked for.
        given: String,
        /// The valid names, comma separated.
        valid: String,
    },
    /// No target modules were requested.
    #[error("no target modules requested: pick a preset (e.g. q-v) or name at least one module; available modules: {available}")]
    NoTargets {
        /// The modules the model has, comma separated.
        available: String,
    },
    /// Requested target modules that the model does not have.
    #[error(
        "target modules not found in the model: {missing}; available linear modules: {available}"
    )]
    MissingTargets {
        /// The requested names the model lacks, comma separated.
        missing: String,
        /// The modules the model has, comma separated.
        available: String,
    },
    /// A LoRA setting with a value that cannot be trained.
    #[error("invalid LoRA setting `{field}` = {value}: {expected}")]
    InvalidSetting {
        /// The setting's name (as in `adapter_config.json`).
        field: &'static str,
        /// The value given, as text.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// `adapter_config.json` is not valid JSON or does not have the expected shape.
    #[error("adapter config is not a valid PEFT LoRA config: {cause}{line_text} (fix the file or re-export it with PEFT)")]
    Json {
        /// The parser's error, which names the line and column (shown in the message).
        cause: serde_json::Error,
        /// `: <the offending line>` (so the field is named), or empty.
        line_text: String,
    },
    /// An `adapter_config.json` feature this project cannot train or load.
    #[error("adapter config field `{field}` = {value} is not supported: {hint}")]
    Unsupported {
        /// The field's name.
        field: &'static str,
        /// Its value, as JSON text.
        value: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// A tensor name that is not a PEFT on-disk LoRA key.
    #[error("tensor key `{key}` is not a PEFT adapter key: {reason}")]
    TensorKey {
        /// The key.
        key: String,
        /// Why it was rejected and what was expected.
        reason: &'static str,
    },
    /// Reading or writing a file failed.
    #[error("{action} `{path}`")]
    Io {
        /// "cannot read", "cannot write", ...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error (the [`source`](std::error::Error::source) of this one).
        #[source]
        source: std::io::Error,
    },
    /// A file's contents were rejected.
    #[error("in `{path}`")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What was wrong with it (the [`source`](std::error::Error::source) of this one).
        #[source]
        source: Box<Error>,
    },
}
