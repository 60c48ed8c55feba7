//! JSON Lines: one `{"id": u64, "vector": [f32...], "partition": "...", "tags": ["..."]}` per
//! line. Unknown fields are refused so a typo does not silently drop data.
//!
//! Lines are read with a bound ([`MAX_LINE_BYTES`]), and errors never echo a line's text: a file
//! that is not vectors (a token, a key) must not end up in a log. They name the line, the field,
//! and a value only when it is a short number or boolean.

use super::source::short;
use super::{Location, Record, input_error};
use crate::error::Result;
use serde::Deserialize;
use serde_json::Value;
use std::io::{BufRead, Read};

/// Longest line accepted, in bytes (without its newline). A 4096-dimension vector written with
/// full float precision takes well under 100 KiB.
pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: u64,
    vector: Vec<f32>,
    #[serde(default)]
    partition: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

const FIELDS: [&str; 4] = ["id", "vector", "partition", "tags"];

pub struct JsonLines<R> {
    reader: R,
    source: String,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl<R: BufRead> JsonLines<R> {
    pub fn new(reader: R, source: String) -> Self {
        JsonLines { reader, source, line: 0, buf: Vec::new(), done: false }
    }
}

impl<R: BufRead> Iterator for JsonLines<R> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            self.line += 1;
            let at = Location::Line(self.line);
            self.buf.clear();
            let limit = MAX_LINE_BYTES as u64 + 2; // the line, "\r\n", and one byte to tell it is over
            let n = match (&mut self.reader).take(limit).read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(n) => n,
                Err(e) => {
                    self.done = true;
                    let reason = format!("read error: {e}");
                    return Some(Err(input_error(&self.source, at, "(line)", "(unreadable)", reason).into()));
                }
            };
            let mut text = self.buf.as_slice();
            let ended = text.ends_with(b"\n");
            text = text.strip_suffix(b"\n").unwrap_or(text);
            text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.len() > MAX_LINE_BYTES || (!ended && n as u64 == limit) {
                self.done = true;
                let reason =
                    format!("line longer than {MAX_LINE_BYTES} bytes (not JSON Lines, or one record too large)");
                return Some(Err(input_error(&self.source, at, "(line)", "(too long)", reason).into()));
            }
            if text.trim_ascii().is_empty() {
                continue;
            }
            return Some(match serde_json::from_slice::<Line>(text) {
                Ok(l) => Ok(Record { id: l.id, vector: l.vector, partition: l.partition, tags: l.tags, at }),
                Err(e) => {
                    let (field, value, why) = diagnose(text, &e);
                    let reason = format!("malformed record ({} bytes): {why}", text.len());
                    Err(input_error(&self.source, at, &field, value, reason).into())
                }
            });
        }
    }
}

/// Which field of a line that failed to parse is wrong, a value safe to show, and why. The line
/// is parsed again loosely (only on this error path) to find the field; nothing taken from the
/// line is shown except field names (shortened) and numbers or booleans.
fn diagnose(text: &[u8], error: &serde_json::Error) -> (String, String, String) {
    let object = match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(map)) => map,
        Ok(other) => return ("(json)".into(), describe(&other), "expected a JSON object".into()),
        Err(e) => {
            let why = format!("{} at column {}", redact(&e), e.column());
            return ("(json)".into(), "(not shown)".into(), why);
        }
    };
    if let Some(key) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return (
            short(key, 32),
            "(unknown field)".into(),
            "unknown field: expected id, vector, partition, tags".into(),
        );
    }
    for field in ["id", "vector"] {
        if !object.contains_key(field) {
            return (field.into(), "(missing)".into(), format!("missing field `{field}`"));
        }
    }
    let check = |field: &str, ok: bool, expected: &str| {
        (!ok).then(|| (field.to_string(), describe(&object[field]), format!("expected {expected}")))
    };
    let id = &object["id"];
    if let Some(found) = check("id", id.as_u64().is_some(), "a non-negative integer (u64)") {
        return found;
    }
    match &object["vector"] {
        Value::Array(values) => {
            if let Some(i) = values.iter().position(|v| !v.is_number()) {
                return (format!("vector[{i}]"), describe(&values[i]), "expected a number".into());
            }
        }
        other => return ("vector".into(), describe(other), "expected an array of numbers".into()),
    }
    if let Some(p) = object.get("partition")
        && let Some(found) = check("partition", p.is_string() || p.is_null(), "a string")
    {
        return found;
    }
    if let Some(tags) = object.get("tags") {
        let ok = tags.as_array().is_some_and(|t| t.iter().all(Value::is_string));
        if let Some(found) = check("tags", ok, "an array of strings") {
            return found;
        }
    }
    // Duplicate keys, or anything else the loose parse let through.
    ("(json)".into(), "(not shown)".into(), format!("{} at column {}", redact(error), error.column()))
}

/// A JSON value as shown in an error: numbers and booleans themselves (shortened), otherwise its
/// kind and size only.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => short(&n.to_string(), 24),
        Value::String(s) => format!("(a string of {} bytes)", s.len()),
        Value::Array(a) => format!("(an array of {} values)", a.len()),
        Value::Object(o) => format!("(an object of {} fields)", o.len()),
    }
}

/// serde's message without anything quoted from the input, and without its position (the
/// caller adds the column): quoted strings and long backticked values are elided.
fn redact(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m);
    let mut out = String::new();
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"…\"");
            }
            '`' => {
                let quoted: String = chars.by_ref().take_while(|&c| c != '`').collect();
                out.push('`');
                out.push_str(&short(&quoted, 24));
                out.push('`');
            }
            c => out.push(c),
        }
    }
    short(&out, 160)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Vec<Result<Record>> {
        JsonLines::new(text.as_bytes(), "v.jsonl".into()).collect()
    }

    #[test]
    fn reads_records_and_skips_blank_lines() {
        let rows = parse(
            "{\"id\":7,\"vector\":[1,2],\"partition\":\"eu\",\"tags\":[\"a\"]}\r\n\n{\"id\":8,\"vector\":[3,4]}\n",
        );
        let rows: Vec<Record> = rows.into_iter().collect::<Result<_>>().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].partition.as_deref(), Some("eu"));
        assert_eq!(rows[1].at, Location::Line(3));
        let rows = parse("{\"id\":9,\"vector\":[1]}");
        assert_eq!(rows.len(), 1, "a last line without a newline is read");
    }

    #[test]
    fn malformed_lines_name_line_and_field() {
        let err = parse("{\"id\":1,\"vector\":[1]}\n{\"vector\":[1]}\n")[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("v.jsonl: line 2: field `id`") && err.contains("missing field"), "{err}");
        let err = parse("{\"id\":1,\"vector\":[1,}\n")[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("malformed") && err.contains("column 21"), "{err}");
        let err = parse("{\"id\":1,\"vectors\":[1]}\n")[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("`vectors`") && err.contains("unknown field"), "{err}");
        let err = parse("{\"id\":-4,\"vector\":[1]}\n")[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("line 1: field `id` = -4"), "{err}");
        let err = parse("{\"id\":4,\"vector\":[1, \"x\"]}\n")[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("field `vector[1]` = (a string of 1 bytes)"), "{err}");
        let err = parse("{\"id\":4,\"id\":5,\"vector\":[1]}\n")[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("duplicate field `id`"), "{err}");
    }

    #[test]
    fn errors_never_echo_the_line() {
        let secret = "s3cr3t-token-value";
        for text in [
            format!("{secret}\n"),
            format!("\"{secret}\"\n"),
            format!("{{\"id\":\"{secret}\",\"vector\":[1]}}\n"),
            format!("{{\"id\":1,\"vector\":[1],\"partition\":[\"{secret}\"]}}\n"),
            format!("{{\"id\":1,\"vector\":[1],\"tags\":\"{secret}\"}}\n"),
            format!("{{\"id\":1,\"vector\":\"{secret}\"}}\n"),
            format!("{{\"id\":1,\"vector\":[1],\"id\":\"{secret}\"}}\n"),
            format!("[\"{secret}\"]\n"),
        ] {
            let err = parse(&text)[0].as_ref().unwrap_err().to_string();
            assert!(!err.contains("s3cr3t") && err.contains("line 1"), "{text}: {err}");
        }
    }

    #[test]
    fn an_overlong_line_is_refused_without_reading_it_whole() {
        let mut text = "{\"id\":1,\"vector\":[".to_string();
        while text.len() <= MAX_LINE_BYTES {
            text.push_str("1,");
        }
        text.push_str("1]}\n{\"id\":2,\"vector\":[1]}\n");
        let results = parse(&text);
        assert_eq!(results.len(), 1, "reading stops at the overlong line");
        let err = results[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("v.jsonl: line 1") && err.contains("longer than 1048576 bytes"), "{err}");
        // An endless line without a newline is refused after the limit, not read into memory.
        let endless = std::io::BufReader::new(std::io::repeat(b'7'));
        let err = JsonLines::new(endless, "z.jsonl".into()).next().unwrap().unwrap_err().to_string();
        assert!(err.contains("z.jsonl: line 1") && err.contains("longer than"), "{err}");
        // Exactly at the limit is fine (then malformed, here, but read).
        let line = format!("{}\n", " ".repeat(MAX_LINE_BYTES - 1) + "x");
        let err = parse(&line)[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("malformed") && !err.contains("longer"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any bytes: records or errors, never a panic, every error on a real line.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            for r in JsonLines::new(bytes.as_slice(), "f.jsonl".into()) {
                match r {
                    Ok(rec) => prop_assert!(matches!(rec.at, Location::Line(l) if l <= lines)),
                    Err(e) => prop_assert!(e.to_string().starts_with("f.jsonl: line ")),
                }
            }
        }

        /// JSON-ish lines built from the record's own pieces, valid or not.
        #[test]
        fn jsonish_lines_never_panic_nor_echo_strings(
            parts in prop::collection::vec(prop::sample::select(vec![
                "{", "}", "[", "]", ",", ":", "\"id\"", "\"vector\"", "\"tags\"", "\"partition\"",
                "1", "-1", "1e400", "18446744073709551616", "null", "true", "\"zz9\"", "\n", " ",
            ]), 0..40),
        ) {
            let text = parts.concat();
            for r in JsonLines::new(text.as_bytes(), "f.jsonl".into()) {
                if let Err(e) = r {
                    // Only as a field name (an unknown key) may it appear, never as a value.
                    let e = e.to_string().replace("field `zz9`", "");
                    prop_assert!(!e.contains("zz9"), "{}", e);
                }
            }
        }
    }
}
