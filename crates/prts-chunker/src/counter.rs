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

    /// Whether counts add up across a boundary from non-whitespace to whitespace:
    /// `count(a + b) == count(a) + count(b)` whenever `a` ends with a non-whitespace
    /// character and `b` starts with a whitespace character.
    ///
    /// When `true`, the chunker sizes blocks from per-sentence counts without re-encoding
    /// them (one tokenization pass in all). When `false` (the default), every block whose
    /// size is not provably exact is re-encoded whole.
    fn additive_at_whitespace(&self) -> bool {
        false
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
    fn additive_at_whitespace(&self) -> bool {
        (**self).additive_at_whitespace()
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
    fn additive_at_whitespace(&self) -> bool {
        true
    }
}

#[cfg(feature = "tokenizers")]
mod hf {
    use super::TokenCounter;
    use tokenizers::{ModelWrapper, PreTokenizerWrapper, Tokenizer};

    /// Counts with `encode_fast(text, false)`; an encode error counts as `usize::MAX`
    /// (the chunker then splits the text and, at worst, reports the piece as dropped).
    impl TokenCounter for Tokenizer {
        fn count(&self, text: &str) -> usize {
            self.encode_fast(text, false)
                .map_or(usize::MAX, |e| e.len())
        }

        /// True for GPT-2-style byte-level BPE: no normalizer, a `ByteLevel` pre-tokenizer with
        /// the GPT-2 regex and no prefix space, BPE without dropout, and added tokens without
        /// whitespace or strip options. That regex never puts a non-whitespace character and
        /// a following whitespace character in one pre-token, and BPE works per pre-token.
        fn additive_at_whitespace(&self) -> bool {
            let pre_ok = matches!(
                self.get_pre_tokenizer(),
                Some(PreTokenizerWrapper::ByteLevel(b)) if b.use_regex && !b.add_prefix_space
            );
            let model_ok =
                matches!(self.get_model(), ModelWrapper::BPE(bpe) if bpe.dropout.is_none());
            let added_ok = self.get_added_tokens_decoder().values().all(|t| {
                !t.lstrip
                    && !t.rstrip
                    && !t.single_word
                    && !t.content.chars().any(char::is_whitespace)
            });
            self.get_normalizer().is_none() && pre_ok && model_ok && added_ok
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
