//! The original's format files: `{"instruction,output": "... %instruction% ... %output%", ...}`. A record uses the
//! first entry (in file order) whose comma-separated key set equals the set of the record's keys that hold a
//! non-blank string.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::records::Record;
use crate::error::{Error, Result};

/// One entry of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: String,
    keys: BTreeSet<String>,
    template: String,
}

/// A format file: templates chosen by the set of fields a record fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    path: PathBuf,
    entries: Vec<Entry>,
}

/// The JSON object's entries in file order (serde_json's map would sort them).
struct Ordered(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry::<String, Value>()? {
                    out.push(kv);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Format {
    /// Reads a format file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses format-file text; `path` names the file in errors. Key names are trimmed around the commas.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let Ordered(pairs) = serde_json::from_str(text).map_err(|e| {
            Error::dataset(
                path,
                format!(
                    "not a format file ({e}): give a JSON object like {{\"instruction,output\": \"%instruction%\\n%output%\"}}"
                ),
            )
        })?;
        let mut entries = Vec::with_capacity(pairs.len());
        for (key, v) in pairs {
            let Value::String(template) = v else {
                return Err(Error::dataset(
                    path,
                    format!("entry \"{key}\": the template must be a string"),
                ));
            };
            let keys: BTreeSet<String> = key
                .split(',')
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect();
            if keys.is_empty() {
                return Err(Error::dataset(
                    path,
                    format!(
                        "entry \"{key}\" names no field: write the field names separated by commas"
                    ),
                ));
            }
            entries.push(Entry {
                key,
                keys,
                template,
            });
        }
        if entries.is_empty() {
            return Err(Error::dataset(path, "has no entries"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The entries' keys, in file order.
    pub fn keys(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.key.as_str()).collect()
    }

    /// The prompt of a record: the matching template with every `%field%` of a string field replaced (in one pass,
    /// so a value that contains `%other%` is kept literally). `dataset` names the data file in errors.
    pub fn render(&self, rec: &Record, dataset: &Path) -> Result<String> {
        let filled: BTreeSet<String> = rec
            .fields
            .iter()
            .filter(|(_, v)| v.as_str().is_some_and(|s| !s.trim().is_empty()))
            .map(|(k, _)| k.clone())
            .collect();
        let entry = self
            .entries
            .iter()
            .find(|e| e.keys == filled)
            .ok_or_else(|| {
                let list: Vec<String> = self
                    .entries
                    .iter()
                    .map(|e| format!("\"{}\"", e.key))
                    .collect();
                Error::dataset(
                    dataset,
                    format!(
                    "{} fills the fields {{{}}} (all keys: {}), which match no entry of {} ({}): \
                     add an entry for these fields to the format file or fix the record",
                    rec.location(),
                    filled.iter().cloned().collect::<Vec<_>>().join(", "),
                    rec.keys(),
                    self.path.display(),
                    list.join(", ")
                ),
                )
            })?;
        Ok(substitute(&entry.template, |name| {
            rec.fields.get(name).and_then(Value::as_str)
        }))
    }
}

/// Replaces `%name%` where `lookup(name)` gives a value; other `%` characters stay.
fn substitute<'a>(template: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after
            .find('%')
            .and_then(|end| lookup(&after[..end]).map(|v| (end, v)))
        {
            Some((end, v)) => {
                out.push_str(v);
                rest = &after[end + 1..];
            }
            None => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::records::parse_records;
    use proptest::prelude::*;

    const FMT: &str = r#"{"instruction,output": "I: %instruction%\nO: %output%",
                          "instruction, input,output": "I: %instruction%\nIn: %input%\nO: %output%",
                          "output,instruction": "never used"}"#;

    fn render(line: &str) -> Result<String> {
        let f = Format::parse(FMT, Path::new("f.json"))?;
        let r = parse_records(line, Path::new("d.jsonl"))?;
        f.render(&r[0], Path::new("d.jsonl"))
    }

    #[test]
    fn first_entry_with_the_same_filled_keys_wins() {
        assert_eq!(
            render(r#"{"instruction":"a","output":"b","input":"  ","n":3}"#).unwrap(),
            "I: a\nO: b"
        );
        assert_eq!(
            render(r#"{"instruction":"a","input":"x","output":"b"}"#).unwrap(),
            "I: a\nIn: x\nO: b"
        );
        // A value that looks like a placeholder is kept as written.
        assert_eq!(
            render(r#"{"instruction":"100%output%","output":"b"}"#).unwrap(),
            "I: 100%output%\nO: b"
        );
    }

    #[test]
    fn no_match_names_the_record_and_keys() {
        let e = render("\n{\"instruction\":\"a\"}").unwrap_err().to_string();
        assert!(
            e.contains("record 1 (line 2)") && e.contains("{instruction}"),
            "{e}"
        );
        assert!(e.contains("\"instruction,output\""), "{e}");
    }

    #[test]
    fn bad_format_files_are_named() {
        for (text, needle) in [
            ("[1]", "not a format file"),
            ("{}", "no entries"),
            (r#"{"a": 1}"#, "must be a string"),
            (r#"{" , ": "x"}"#, "names no field"),
        ] {
            let e = Format::parse(text, Path::new("f.json"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle) && e.contains("f.json"), "{text}: {e}");
        }
    }

    proptest! {
        #[test]
        fn substitute_without_placeholders_is_identity(t in "[^%]*") {
            prop_assert_eq!(substitute(&t, |_| Some("x")), t);
        }

        #[test]
        fn substitute_inserts_values_verbatim(a in ".*", b in ".*") {
            let out = substitute("<%a%|%b%>", |n| match n { "a" => Some(a.as_str()), "b" => Some(b.as_str()), _ => None });
            prop_assert_eq!(out, format!("<{a}|{b}>"));
        }
    }
}
