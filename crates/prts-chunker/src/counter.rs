//! The token-counting trait injected by the caller, and its implementations.

/// Counts the tokens of a text, the way the trainer will encode it.
///
/// `count(text)` is the number of tokens of `text` encoded alone, **without** special tokens
/// (no BOS/EOS added by the tokenizer). The chunker adds room for BOS/EOS itself.
///
/// Only [`count`](TokenCounter::count) is required. The two provided methods let a counter
/// tell the chunker more about itself; the defaults are always safe.
pub trait TokenCounter {
    /// Tokens of `text` encoded alone, without special tokens.
    fn count(&self, text: &str) -> usize;

    /// Where counts add up across a sentence boundary, so that the chunker can size blocks
    /// from per-sentence counts without re-encoding them (one tokenization pass in all).
    /// The default, [`Additivity::None`], is always safe: blocks are re-encoded whole.
    fn additivity(&self) -> Additivity {
        Additivity::None
    }

    /// Checks that the counter can give exact counts, e.g. that a tokenizer does not truncate
    /// or pad. Returns a message saying what to change otherwise.
    ///
    /// # Errors
    /// A human-readable reason, reported by [`chunk`](crate::chunk) as
    /// [`ChunkError::Counter`](crate::ChunkError::Counter).
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl<T: TokenCounter + ?Sized> TokenCounter for &T {
    fn count(&self, text: &str) -> usize {
        (**self).count(text)
    }
    fn additivity(&self) -> Additivity {
        (**self).additivity()
    }
    fn check(&self) -> Result<(), String> {
        (**self).check()
    }
}

/// A cheap counter for tests and previews: one token per whitespace-separated word.
#[derive(Debug, Clone, Copy, Default)]
pub struct WhitespaceCounter;

impl TokenCounter for WhitespaceCounter {
    fn count(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }
    fn additivity(&self) -> Additivity {
        Additivity::AtWhitespace
    }
}

/// What a [`TokenCounter`] promises about `count(a + b)` versus `count(a) + count(b)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Additivity {
    /// No promise: every block whose size is not a single sentence's is re-encoded whole.
    #[default]
    None,
    /// `count(a + b) == count(a) + count(b)` whenever `a` ends with a non-whitespace character
    /// and `b` starts with a whitespace character (GPT-2-style pre-tokenizers; word counts).
    AtWhitespace,
    /// For pre-tokenizers that keep punctuation with the line breaks after it (Llama-3 and
    /// Qwen2: ` ?[^\s\p{L}\p{N}]+[\r\n]*`): `count(a + b) == count(a) + count(b)` when
    /// (1) `a` ends with a non-whitespace character and `b` starts with whitespace other than
    /// `\r`/`\n` (or with `\r`/`\n` if `a` ends with an ASCII letter or digit), or
    /// (2) `a` ends with a non-whitespace character followed by one or more `\r`/`\n`, and
    /// `b` starts with any other character. The chunker then ends sentences after the line
    /// breaks that follow them.
    PunctuationTakesLineBreaks,
}

impl Additivity {
    /// Whether a boundary between `left` (last char of `a`) and `right` (first char of `b`)
    /// keeps counts additive. `left_tail` says `a` ends with a non-whitespace character and
    /// then its whole run of line breaks (where the chunker ends sentences for
    /// [`PunctuationTakesLineBreaks`](Self::PunctuationTakesLineBreaks)).
    pub(crate) fn joins(self, left: char, right: char, left_tail: bool) -> bool {
        match self {
            Self::None => false,
            Self::AtWhitespace => !left.is_whitespace() && right.is_whitespace(),
            Self::PunctuationTakesLineBreaks => {
                (left_tail && !matches!(right, '\r' | '\n'))
                    || (!left.is_whitespace()
                        && right.is_whitespace()
                        && (!matches!(right, '\r' | '\n') || left.is_ascii_alphanumeric()))
            }
        }
    }

    /// Whether sentences end after the line breaks that follow them (not before).
    pub(crate) fn moves_line_breaks(self) -> bool {
        self == Self::PunctuationTakesLineBreaks
    }
}

#[cfg(feature = "tokenizers")]
mod hf {
    use super::{Additivity, TokenCounter};
    use tokenizers::pre_tokenizers::split::SplitPattern;
    use tokenizers::{
        ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
    };

    /// The GPT-2 pre-tokenizer regex (also what `ByteLevel { use_regex: true }` applies).
    const GPT2_RE: &str =
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    /// Llama-3 and Qwen2 regexes (HF tokenizer.json files; llama.cpp "llama-bpe", "qwen2").
    const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    /// Digit splits (llama.cpp's "smollm"/"starcoder" pre-tokenizers): never span whitespace.
    const DIGIT_RES: [&str; 2] = [r"\p{N}", r"\p{N}{1,3}"];

    /// What a pre-tokenizer guarantees at our boundaries: `Some(Some(a))` if it splits there
    /// itself with additivity `a`, `Some(None)` if it is neutral (byte mapping, digit splits),
    /// `None` if it may break additivity.
    fn pre_additivity(p: &PreTokenizerWrapper) -> Option<Option<Additivity>> {
        match p {
            PreTokenizerWrapper::ByteLevel(b) if !b.add_prefix_space => {
                Some(b.use_regex.then_some(Additivity::AtWhitespace))
            }
            PreTokenizerWrapper::Split(s)
                if s.behavior == SplitDelimiterBehavior::Isolated && !s.invert =>
            {
                match &s.pattern {
                    SplitPattern::Regex(r) if r == GPT2_RE => Some(Some(Additivity::AtWhitespace)),
                    SplitPattern::Regex(r) if r == LLAMA3_RE || r == QWEN2_RE => {
                        Some(Some(Additivity::PunctuationTakesLineBreaks))
                    }
                    SplitPattern::Regex(r) if DIGIT_RES.contains(&r.as_str()) => Some(None),
                    _ => None,
                }
            }
            PreTokenizerWrapper::Sequence(seq) => {
                // Exactly one splitting regex; the others must be neutral.
                let mut found = None;
                for p in seq.as_ref() {
                    match pre_additivity(p)? {
                        Some(_) if found.is_some() => return None,
                        Some(a) => found = Some(a),
                        None => {}
                    }
                }
                Some(found)
            }
            _ => None,
        }
    }

    /// Counts with `encode_fast(text, false)`; an encode error counts as `usize::MAX`
    /// (the chunker then splits the text and, at worst, reports the piece as dropped).
    impl TokenCounter for Tokenizer {
        fn count(&self, text: &str) -> usize {
            self.encode_fast(text, false)
                .map_or(usize::MAX, |e| e.len())
        }

        /// [`Additivity::AtWhitespace`] for GPT-2-style byte-level BPE and
        /// [`Additivity::PunctuationTakesLineBreaks`] for the Llama-3/Qwen2 regexes, when
        /// provable from the config: no normalizer or NFC; a `ByteLevel` pre-tokenizer with the
        /// GPT-2 regex, or a `Sequence` of one isolating `Split` with one of those regexes,
        /// digit splits and `ByteLevel`, never with a prefix space; BPE without dropout; added
        /// tokens without whitespace or strip options. Otherwise [`Additivity::None`].
        fn additivity(&self) -> Additivity {
            let pre = self.get_pre_tokenizer().and_then(pre_additivity).flatten();
            let norm_ok = matches!(
                self.get_normalizer(),
                None | Some(NormalizerWrapper::NFC(_))
            );
            let model_ok =
                matches!(self.get_model(), ModelWrapper::BPE(bpe) if bpe.dropout.is_none());
            let added_ok = self.get_added_tokens_decoder().values().all(|t| {
                !t.lstrip
                    && !t.rstrip
                    && !t.single_word
                    && !t.content.chars().any(char::is_whitespace)
            });
            match pre {
                Some(a) if norm_ok && model_ok && added_ok => a,
                _ => Additivity::None,
            }
        }

        fn check(&self) -> Result<(), String> {
            if self.get_truncation().is_some() {
                return Err(
                    "the tokenizer truncates; disable truncation (`\"truncation\": null` in \
                            tokenizer.json, or `with_truncation(None)`) so counts are exact"
                        .into(),
                );
            }
            if self.get_padding().is_some() {
                return Err(
                    "the tokenizer pads; disable padding (`\"padding\": null` in \
                            tokenizer.json, or `with_padding(None)`) so counts are exact"
                        .into(),
                );
            }
            Ok(())
        }
    }
}
