//! Dataset files: a JSON array of objects, or true JSON Lines (one object per line).

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One record of a dataset file: a JSON object and where it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based position in the file.
    pub number: usize,
    /// 1-based line in a JSON Lines file (`None` in a JSON array).
    pub line: Option<usize>,
    /// The object's fields.
    pub fields: Map<String, Value>,
}

impl Record {
    /// `record 3 (line 5)` or `record 3`: how error messages name it.
    pub fn location(&self) -> String {
        match self.line {
            Some(l) => format!("record {} (line {l})", self.number),
            None => format!("record {}", self.number),
        }
    }

    /// The field names, sorted, for error messages.
    pub fn keys(&self) -> String {
        let mut k: Vec<&str> = self.fields.keys().map(String::as_str).collect();
        k.sort_unstable();
        format!("{{{}}}", k.join(", "))
    }
}

/// Reads a dataset file (see [`parse_records`]).
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_records(&text, path)
}

/// Parses dataset text: a JSON array of objects when the first non-blank character is `[`, otherwise JSON Lines
/// (every non-blank line one object). A UTF-8 byte-order mark is skipped. `path` only names the file in errors.
pub fn parse_records(text: &str, path: &Path) -> Result<Vec<Record>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let records = if text.trim_start().starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(text).map_err(|e| {
            Error::dataset(
                path,
                format!(
                    "line {} column {}: not a valid JSON array: {e}; give a JSON array of objects or JSON Lines",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| object(v, i + 1, None, path))
            .collect::<Result<Vec<_>>>()?
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).map_err(|e| {
                Error::dataset(
                    path,
                    format!(
                        "line {}: not valid JSON ({e}); in JSON Lines every line holds one whole object",
                        i + 1
                    ),
                )
            })?;
            out.push(object(v, out.len() + 1, Some(i + 1), path)?);
        }
        out
    };
    if records.is_empty() {
        return Err(Error::dataset(
            path,
            "holds no records: give a JSON array of objects or one JSON object per line",
        ));
    }
    Ok(records)
}

fn object(v: Value, number: usize, line: Option<usize>, path: &Path) -> Result<Record> {
    let kind = match &v {
        Value::Object(_) => "",
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    };
    match v {
        Value::Object(fields) => Ok(Record {
            number,
            line,
            fields,
        }),
        _ => {
            let r = Record {
                number,
                line,
                fields: Map::new(),
            };
            Err(Error::dataset(
                path,
                format!(
                    "{} is {kind}, not a JSON object: every record must be an object",
                    r.location()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("d.jsonl")
    }

    #[test]
    fn array_and_lines_give_the_same_records() {
        let a = parse_records(r#"[{"a":"1"},{"a":"2"}]"#, p()).unwrap();
        let l = parse_records("\u{feff}{\"a\":\"1\"}\n\n{\"a\":\"2\"}\n", p()).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(
            a.iter().map(|r| &r.fields).collect::<Vec<_>>(),
            l.iter().map(|r| &r.fields).collect::<Vec<_>>()
        );
        assert_eq!((l[1].number, l[1].line), (2, Some(3)));
        assert_eq!(l[1].location(), "record 2 (line 3)");
    }

    #[test]
    fn errors_name_the_line_or_record() {
        let e = parse_records("{\"a\":\"1\"}\n{\"a\":\n", p()).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse_records("[{\"a\":\"1\"}, 3]", p()).unwrap_err();
        assert!(e.to_string().contains("record 2 is a number"), "{e}");
        let e = parse_records(" \n", p()).unwrap_err();
        assert!(e.to_string().contains("no records"), "{e}");
        let e = parse_records("[{\"a\":1}", p()).unwrap_err();
        assert!(e.to_string().contains("line 1 column"), "{e}");
    }
}
