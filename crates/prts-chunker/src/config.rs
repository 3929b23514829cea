//! Chunking settings: [`ChunkConfig`] and its enums.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::ChunkError;

/// Smallest number of text tokens a block must be allowed after BOS/EOS are reserved.
pub const MIN_TEXT_TOKENS: usize = 8;

/// Largest cutoff accepted (tokens).
pub const MAX_CUTOFF: usize = 1 << 24;

/// How blocks are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// PRTS: disjoint blocks of whole sentences, optionally with overlap blocks between neighbours.
    #[default]
    Precise,
    /// DEMENTOR: a sliding window with a stride of one sentence, for long-form memorisation.
    Dementor,
}

/// Which blocks get an EOS token appended by the trainer (and counted by the chunker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EosPlacement {
    /// Every block ends with EOS.
    EveryBlock,
    /// Only blocks that end at a hard cut end with EOS.
    #[default]
    HardCutOnly,
    /// No block gets EOS.
    None,
}

impl Mode {
    /// Every mode, with the name [`FromStr`](std::str::FromStr) and [`Display`](std::fmt::Display) use.
    pub const ALL: [(Mode, &'static str); 2] =
        [(Mode::Precise, "precise"), (Mode::Dementor, "dementor")];
}

impl EosPlacement {
    /// Every placement, with the name [`FromStr`](std::str::FromStr) and [`Display`](std::fmt::Display) use.
    pub const ALL: [(EosPlacement, &'static str); 3] = [
        (EosPlacement::EveryBlock, "every-block"),
        (EosPlacement::HardCutOnly, "hard-cut"),
        (EosPlacement::None, "none"),
    ];
}

/// The name of `value` in `table`, or parses a name (case-insensitive, `_` read as `-`).
fn named<T: Copy + PartialEq>(table: &[(T, &'static str)], value: T) -> &'static str {
    table
        .iter()
        .find(|(v, _)| *v == value)
        .map_or("", |(_, n)| n)
}

fn parse_named<T: Copy>(
    table: &[(T, &'static str)],
    field: &'static str,
    s: &str,
) -> Result<T, ChunkError> {
    let wanted = s.trim().replace('_', "-");
    table
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(&wanted))
        .map(|(v, _)| *v)
        .ok_or_else(|| ChunkError::Config {
            field,
            value: format!("{s:?}"),
            reason: format!(
                "give one of {}",
                table.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
            ),
        })
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(named(&Mode::ALL, *self))
    }
}

impl std::str::FromStr for Mode {
    type Err = ChunkError;

    /// `precise` or `dementor`.
    fn from_str(s: &str) -> Result<Self, ChunkError> {
        parse_named(&Mode::ALL, "mode", s)
    }
}

impl std::fmt::Display for EosPlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(named(&EosPlacement::ALL, *self))
    }
}

impl std::str::FromStr for EosPlacement {
    type Err = ChunkError;

    /// `every-block`, `hard-cut` or `none`.
    fn from_str(s: &str) -> Result<Self, ChunkError> {
        parse_named(&EosPlacement::ALL, "eos", s)
    }
}

/// Settings for [`chunk`](crate::chunk). Build with [`ChunkConfig::new`] and the `with_*` methods.
///
/// Defaults: no hard cut, no overlap, [`Mode::Precise`], [`EosPlacement::HardCutOnly`],
/// no BOS, `min_chars` 0 (drop only empty blocks), no cancel flag.
#[derive(Debug, Clone)]
pub struct ChunkConfig {
    pub(crate) cutoff: usize,
    pub(crate) hard_cut: String,
    pub(crate) overlap: bool,
    pub(crate) mode: Mode,
    pub(crate) eos: EosPlacement,
    pub(crate) bos: bool,
    pub(crate) min_chars: usize,
    pub(crate) cancel: Option<Arc<AtomicBool>>,
}

impl ChunkConfig {
    /// Blocks of at most `cutoff` tokens as trained (text plus BOS/EOS as configured).
    #[must_use]
    pub fn new(cutoff: usize) -> Self {
        Self {
            cutoff,
            hard_cut: String::new(),
            overlap: false,
            mode: Mode::Precise,
            eos: EosPlacement::HardCutOnly,
            bos: false,
            min_chars: 0,
            cancel: None,
        }
    }

    /// The hard-cut string, already unescaped (see [`unescape_hard_cut`]); empty means no hard cut.
    /// No block contains it; blocks before it may get EOS ([`EosPlacement::HardCutOnly`]).
    #[must_use]
    pub fn with_hard_cut(mut self, hard_cut: &str) -> Self {
        hard_cut.clone_into(&mut self.hard_cut);
        self
    }

    /// Add overlap blocks between neighbouring main blocks ([`Mode::Precise`] only).
    #[must_use]
    pub fn with_overlap(mut self, overlap: bool) -> Self {
        self.overlap = overlap;
        self
    }

    /// Precise (PRTS) or sliding-window (DEMENTOR) blocks.
    #[must_use]
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Which blocks end with EOS.
    #[must_use]
    pub fn with_eos(mut self, eos: EosPlacement) -> Self {
        self.eos = eos;
        self
    }

    /// Whether every block starts with BOS.
    #[must_use]
    pub fn with_bos(mut self, bos: bool) -> Self {
        self.bos = bos;
        self
    }

    /// Drop blocks of at most `min_chars` characters (counted, never silently).
    #[must_use]
    pub fn with_min_chars(mut self, min_chars: usize) -> Self {
        self.min_chars = min_chars;
        self
    }

    /// A flag that, once set, makes [`chunk`](crate::chunk) stop with [`ChunkError::Cancelled`].
    #[must_use]
    pub fn with_cancel(mut self, cancel: Arc<AtomicBool>) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// The cutoff in tokens.
    #[must_use]
    pub fn cutoff(&self) -> usize {
        self.cutoff
    }

    /// The hard-cut string (empty = none).
    #[must_use]
    pub fn hard_cut(&self) -> &str {
        &self.hard_cut
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`ChunkError::Config`] when the cutoff leaves fewer than [`MIN_TEXT_TOKENS`] text tokens
    /// after the BOS/EOS tokens the settings may add, or exceeds [`MAX_CUTOFF`].
    pub fn validate(&self) -> Result<(), ChunkError> {
        let specials = usize::from(self.bos) + usize::from(self.eos != EosPlacement::None);
        if self.cutoff > MAX_CUTOFF {
            return Err(ChunkError::Config {
                field: "cutoff",
                value: self.cutoff.to_string(),
                reason: format!("at most {MAX_CUTOFF} tokens are supported"),
            });
        }
        if self.cutoff < specials + MIN_TEXT_TOKENS {
            return Err(ChunkError::Config {
                field: "cutoff",
                value: self.cutoff.to_string(),
                reason: format!(
                    "must leave at least {MIN_TEXT_TOKENS} text tokens after {specials} special \
                     token(s) (BOS/EOS); use a cutoff of at least {}",
                    specials + MIN_TEXT_TOKENS
                ),
            });
        }
        Ok(())
    }

    /// Tokens the trainer adds to a block that does (`eos`) or does not end with EOS.
    pub(crate) fn specials(&self, eos: bool) -> usize {
        usize::from(self.bos) + usize::from(eos)
    }

    /// Whether a block gets EOS, given whether it ends at a hard cut.
    pub(crate) fn eos_for(&self, ends_at_hard_cut: bool) -> bool {
        match self.eos {
            EosPlacement::EveryBlock => true,
            EosPlacement::HardCutOnly => ends_at_hard_cut,
            EosPlacement::None => false,
        }
    }

    pub(crate) fn check_cancel(&self) -> Result<(), ChunkError> {
        match &self.cancel {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(ChunkError::Cancelled),
            _ => Ok(()),
        }
    }
}

/// Turns a hard cut typed by a user into the real string: `\n` → newline, `\t` → tab,
/// `\r` → carriage return, `\\` → backslash; any other backslash is kept as is.
/// An empty result means "no hard cut".
///
/// ```
/// assert_eq!(prts_chunker::unescape_hard_cut("\\n\\n\\n"), "\n\n\n");
/// ```
#[must_use]
pub fn unescape_hard_cut(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    let mut chars = user.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            _ => {
                out.push('\\');
                continue;
            }
        }
        chars.next();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_placements_read_back_their_names() {
        for (m, name) in Mode::ALL {
            assert_eq!(m.to_string(), name);
            assert_eq!(name.to_uppercase().parse::<Mode>().unwrap(), m);
        }
        for (e, name) in EosPlacement::ALL {
            assert_eq!(e.to_string(), name);
            assert_eq!(name.parse::<EosPlacement>().unwrap(), e);
        }
        assert_eq!(
            "hard_cut".parse::<EosPlacement>().unwrap(),
            EosPlacement::HardCutOnly
        );
        let err = "sometimes".parse::<EosPlacement>().unwrap_err().to_string();
        assert!(
            err.contains("`eos`") && err.contains("every-block, hard-cut, none"),
            "{err}"
        );
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape_hard_cut(""), "");
        assert_eq!(unescape_hard_cut("\\n\\n\\n"), "\n\n\n");
        assert_eq!(unescape_hard_cut("a\\tb\\\\n\\x\\"), "a\tb\\n\\x\\");
    }

    #[test]
    fn validate_reserves_specials() {
        assert!(ChunkConfig::new(8)
            .with_eos(EosPlacement::None)
            .validate()
            .is_ok());
        let err = ChunkConfig::new(9).with_bos(true).validate().unwrap_err();
        assert!(err.to_string().contains("at least 10"), "{err}");
        assert!(ChunkConfig::new(MAX_CUTOFF + 1).validate().is_err());
    }
}
