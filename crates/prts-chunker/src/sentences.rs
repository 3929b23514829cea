//! Hard-cut sections and sentence splitting (a single byte scan).
//!
//! A sentence owns its *leading* whitespace: boundaries sit right after the end of a sentence
//! (terminator plus closing quotes), before the whitespace that follows it. Counts then add up
//! across boundaries for GPT-2-style tokenizers, where a pre-token never joins a non-space
//! character to a following space (see [`Additivity`]).
//!
//! [`Additivity`]: crate::Additivity

use std::ops::Range;

/// A stretch of text between hard cuts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    /// Bytes of the section (hard-cut markers excluded).
    pub range: Range<usize>,
    /// Whether a hard cut follows (false only for the last section).
    pub hard_cut_after: bool,
}

/// Splits `text` at every occurrence of `hard_cut` (none when empty). The markers belong to
/// no section; sections and markers tile the text.
pub(crate) fn sections(text: &str, hard_cut: &str) -> Vec<Section> {
    let mut out = Vec::new();
    let mut start = 0;
    if !hard_cut.is_empty() {
        for (at, _) in text.match_indices(hard_cut) {
            out.push(Section {
                range: start..at,
                hard_cut_after: true,
            });
            start = at + hard_cut.len();
        }
    }
    out.push(Section {
        range: start..text.len(),
        hard_cut_after: false,
    });
    out
}

/// A sentence: `start..core.end` plus trailing whitespace when it is the last of its section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sentence {
    /// First byte, leading whitespace included.
    pub start: usize,
    /// The sentence without leading and trailing whitespace (never empty).
    pub core: Range<usize>,
}

/// Byte ranges of the sentences of `text` as the chunker counts them: each starts with the
/// whitespace before it and ends at its last non-whitespace character. Hard-cut markers
/// (`hard_cut`, already unescaped; empty = none) and whitespace at the end of a section belong
/// to no sentence. Useful for previews and for benchmarking a tokenizer on the same pieces.
///
/// ```
/// let t = "Hi there. Bye.\n\n\nNext.";
/// let s: Vec<&str> = prts_chunker::sentence_ranges(t, "\n\n\n").into_iter().map(|r| &t[r]).collect();
/// assert_eq!(s, ["Hi there.", " Bye.", "Next."]);
/// ```
#[must_use]
pub fn sentence_ranges(text: &str, hard_cut: &str) -> Vec<Range<usize>> {
    sections(text, hard_cut)
        .into_iter()
        .flat_map(|sec| split(text, sec.range))
        .map(|s| s.start..s.core.end)
        .collect()
}

const ABBREVIATIONS: &[&str] = &[
    "mr.", "mrs.", "ms.", "dr.", "st.", "prof.", "jr.", "sr.", "ltd.", "capt.", "col.", "gen.",
    "lt.", "sgt.", "mt.", "ave.", "blvd.", "co.", "corp.", "dept.", "est.", "gov.", "inc.",
    "ph.d.", "univ.", "e.g.", "i.e.", "etc.", "vs.", "cf.", "fig.", "vol.", "approx.", "a.m.",
    "p.m.", "u.s.", "u.k.",
];
/// Abbreviations that are ordinary words in lower case ("said no.").
const ABBREVIATIONS_CASED: &[&str] = &["No.", "Nos.", "Vol.", "Art."];

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…')
}

fn is_cjk_terminator(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '｡')
}

fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | '”' | '’' | ')' | ']' | '}' | '»' | '」' | '』' | '）' | '】' | '〉' | '》'
    )
}

fn is_opener(c: char) -> bool {
    matches!(c, '"' | '\'' | '“' | '‘' | '(' | '[' | '{' | '«')
}

/// Splits one section into sentences. Every non-whitespace byte of `range` is in exactly one
/// sentence's core; sentence starts are increasing; a whitespace-only section has none.
pub(crate) fn split(text: &str, range: Range<usize>) -> Vec<Sentence> {
    let sec = &text[range.clone()];
    let base = range.start;
    let mut cuts = Vec::new(); // relative positions where a new sentence starts
    let mut iter = sec.char_indices().peekable();
    let mut prev_ws = true;
    while let Some((i, c)) = iter.next() {
        if c.is_whitespace() {
            // A line break after text ends the sentence (at the start of the whitespace run).
            if !prev_ws && run_has_newline(&sec[i..]) {
                push_cut(&mut cuts, i);
            }
            prev_ws = true;
            continue;
        }
        prev_ws = false;
        let cjk = is_cjk_terminator(c);
        if !(cjk || is_terminator(c)) {
            continue;
        }
        // Consume the rest of the terminator cluster and closing quotes/brackets.
        let mut end = i + c.len_utf8();
        let mut dots = usize::from(c == '.');
        while let Some(&(j, d)) = iter.peek() {
            let joins = if cjk {
                is_cjk_terminator(d)
            } else {
                is_terminator(d)
            };
            if joins || is_closer(d) {
                dots += usize::from(d == '.');
                end = j + d.len_utf8();
                iter.next();
            } else {
                break;
            }
        }
        let rest = &sec[end..];
        let Some(next) = rest.chars().next() else {
            break;
        };
        if cjk {
            push_cut(&mut cuts, end);
            continue;
        }
        if !next.is_whitespace() {
            continue; // "3.14", "v1.2", "a.b"
        }
        if is_continuation(rest) || (c == '.' && dots == 1 && is_abbreviation(&sec[..end])) {
            continue;
        }
        push_cut(&mut cuts, end);
    }
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for end in cuts.into_iter().chain(std::iter::once(sec.len())) {
        let piece = &sec[start..end];
        let lead = piece.len() - piece.trim_start().len();
        let core_len = piece.trim().len();
        if core_len > 0 {
            out.push(Sentence {
                start: base + start,
                core: base + start + lead..base + start + lead + core_len,
            });
        }
        start = end;
    }
    out
}

fn push_cut(cuts: &mut Vec<usize>, at: usize) {
    if cuts.last().is_none_or(|&last| last < at) && at > 0 {
        cuts.push(at);
    }
}

fn run_has_newline(s: &str) -> bool {
    s.chars()
        .take_while(|c| c.is_whitespace())
        .any(|c| c == '\n')
}

/// After a terminator and whitespace: a lower-case word continues the sentence
/// (`"Stop." she said`, `etc. and`), unless the whitespace holds a line break.
fn is_continuation(rest: &str) -> bool {
    let trimmed = rest.trim_start();
    let ws = &rest[..rest.len() - trimmed.len()];
    !ws.contains('\n') && trimmed.chars().next().is_some_and(char::is_lowercase)
}

/// Whether the word ending `before` (which ends with the '.') is an abbreviation or an initial.
fn is_abbreviation(before: &str) -> bool {
    let word_start = before
        .char_indices()
        .rev()
        .find(|&(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let word = before[word_start..].trim_start_matches(is_opener);
    let word = word.trim_end_matches(is_closer);
    let mut chars = word.chars();
    // An initial: one upper-case letter and the dot ("J. R. R. Tolkien").
    if let (Some(first), Some('.'), None) = (chars.next(), chars.next(), chars.next()) {
        if first.is_uppercase() {
            return true;
        }
    }
    ABBREVIATIONS_CASED.contains(&word)
        || ABBREVIATIONS
            .iter()
            .any(|a| a.len() == word.len() && a.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cores(text: &str) -> Vec<&str> {
        split(text, 0..text.len())
            .into_iter()
            .map(|s| &text[s.core])
            .collect()
    }

    #[test]
    fn splits_like_a_reader() {
        assert_eq!(
            cores("Hello world. How are you? Fine!"),
            ["Hello world.", "How are you?", "Fine!"]
        );
        assert_eq!(
            cores("J. R. R. Tolkien wrote it. Mr. Smith read it."),
            ["J. R. R. Tolkien wrote it.", "Mr. Smith read it."]
        );
        assert_eq!(
            cores("Pi is 3.14 and v1.2 is out. Next."),
            ["Pi is 3.14 and v1.2 is out.", "Next."]
        );
        assert_eq!(
            cores("\"Stop.\" she said. \"Go.\" He went."),
            ["\"Stop.\" she said.", "\"Go.\"", "He went."]
        );
        assert_eq!(
            cores("Wait... What? e.g. this, etc. and that. Ok!? Yes."),
            ["Wait...", "What? e.g. this, etc. and that.", "Ok!?", "Yes."]
        );
        assert_eq!(
            cores("Line one\nLine two. Next.\n"),
            ["Line one", "Line two.", "Next."]
        );
        assert_eq!(
            cores("我喜欢读书。你呢？我们一起去吧！好的"),
            ["我喜欢读书。", "你呢？", "我们一起去吧！", "好的"]
        );
        assert!(cores(" \n\t ").is_empty());
    }

    #[test]
    fn sections_tile_the_text() {
        let t = "a\n\n\nb\n\n\n\nc";
        let s = sections(t, "\n\n\n");
        assert_eq!(s.len(), 3);
        assert_eq!(&t[s[1].range.clone()], "b");
        assert_eq!(&t[s[2].range.clone()], "\nc");
        assert!(s[0].hard_cut_after && !s[2].hard_cut_after);
        assert_eq!(sections("abc", "").len(), 1);
    }

    proptest! {
        /// S1: sentences cover every non-whitespace byte once, in order; boundaries sit at a
        /// non-whitespace -> whitespace transition or after a CJK terminator.
        #[test]
        fn sentences_tile_the_section(
            text in "([A-Za-z]{1,5}|[ \n]{1,3}|[.!?]|\\.\\.\\.|[\"')]|[0-9]\\.[0-9]|Mr\\.|[。？])*"
        ) {
            let sents = split(&text, 0..text.len());
            let mut pos = 0;
            for (k, s) in sents.iter().enumerate() {
                prop_assert!(s.start >= pos && s.start <= s.core.start && s.core.start < s.core.end);
                prop_assert!(text[pos..s.start].trim().is_empty());
                prop_assert!(text[s.start..s.core.start].trim().is_empty());
                let core = &text[s.core.clone()];
                prop_assert_eq!(core.trim(), core);
                if k > 0 {
                    let prev_last = text[..s.start].chars().next_back().unwrap();
                    let first = text[s.start..].chars().next().unwrap();
                    prop_assert!(
                        first.is_whitespace() || is_cjk_terminator(prev_last) || is_closer(prev_last),
                        "boundary at {} between {:?} and {:?}", s.start, prev_last, first
                    );
                    prop_assert_eq!(s.start, sents[k - 1].core.end);
                }
                pos = s.core.end;
            }
            prop_assert!(text[pos..].trim().is_empty());
        }
    }
}
