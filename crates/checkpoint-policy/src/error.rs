//! The crate's one error type.

use thiserror::Error;

/// An invalid policy setting (when creating, updating or restoring a [`Policy`](crate::Policy)).
/// The message names the setting and says what a valid value looks like.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting outside its valid range.
    #[error("invalid checkpoint setting {field} = {value}: {expected}")]
    Invalid {
        /// The setting's field name in [`Settings`](crate::Settings).
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
