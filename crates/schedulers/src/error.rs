//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong when parsing a schedule name, planning steps or building a
/// [`Scheduler`](crate::Scheduler). Each message names the offending field and says what to do.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum Error {
    /// A schedule name that is not one of [`Schedule::NAMES`](crate::Schedule::NAMES).
    #[error(
        "unknown learning-rate schedule `{name}`; valid names (case-insensitive): {}",
        valid_names()
    )]
    UnknownSchedule {
        /// The name as given.
        name: String,
    },
    /// A numeric setting outside its valid range.
    #[error("invalid {field} = {value}: {expected}")]
    Invalid {
        /// The setting's name as users know it (`epochs`, `batch_size`, ...).
        field: &'static str,
        /// The offending value, as text.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
}

impl Error {
    pub(crate) fn invalid(
        field: &'static str,
        value: impl ToString,
        expected: &'static str,
    ) -> Self {
        Error::Invalid {
            field,
            value: value.to_string(),
            expected,
        }
    }
}

fn valid_names() -> String {
    crate::Schedule::NAMES.join(", ")
}
