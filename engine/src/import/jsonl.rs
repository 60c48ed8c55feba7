//! JSON Lines: one `{"id": u64, "vector": [f32...], "partition": "...", "tags": ["..."]}` per
//! line. Unknown fields are refused so a typo does not silently drop data.

use super::{Location, Record, input_error};
use crate::error::Result;
use serde::Deserialize;
use std::io::BufRead;

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

pub struct JsonLines<R> {
    lines: std::io::Lines<R>,
    source: String,
    line: u64,
}

impl<R: BufRead> JsonLines<R> {
    pub fn new(reader: R, source: String) -> Self {
        JsonLines { lines: reader.lines(), source, line: 0 }
    }
}

impl<R: BufRead> Iterator for JsonLines<R> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line += 1;
            let at = Location::Line(self.line);
            let text = match self.lines.next()? {
                Ok(t) => t,
                Err(e) => {
                    return Some(Err(input_error(&self.source, at, "(line)", "(unreadable)", e.to_string()).into()));
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(match serde_json::from_str::<Line>(&text) {
                Ok(l) => Ok(Record { id: l.id, vector: l.vector, partition: l.partition, tags: l.tags, at }),
                Err(e) => {
                    let snippet: String = text.chars().take(60).collect();
                    let field = field_of(&e.to_string());
                    Err(input_error(&self.source, at, &field, snippet, format!("malformed record: {e}")).into())
                }
            });
        }
    }
}

/// serde names the offending field in backticks ("missing field `id`"); fall back to the line.
fn field_of(message: &str) -> String {
    message.split('`').nth(1).map(str::to_string).unwrap_or_else(|| "(json)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Result<Record>> {
        JsonLines::new(text.as_bytes(), "v.jsonl".into()).collect()
    }

    #[test]
    fn reads_records_and_skips_blank_lines() {
        let rows =
            parse("{\"id\":7,\"vector\":[1,2],\"partition\":\"eu\",\"tags\":[\"a\"]}\n\n{\"id\":8,\"vector\":[3,4]}\n");
        let rows: Vec<Record> = rows.into_iter().collect::<Result<_>>().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].partition.as_deref(), Some("eu"));
        assert_eq!(rows[1].at, Location::Line(3));
    }

    #[test]
    fn malformed_lines_name_line_and_field() {
        let err = parse("{\"id\":1,\"vector\":[1]}\n{\"vector\":[1]}\n")[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("v.jsonl: line 2: field `id`") && err.contains("missing field"), "{err}");
        let err = parse("{\"id\":1,\"vector\":[1,}\n")[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("malformed"), "{err}");
        let err = parse("{\"id\":1,\"vectors\":[1]}\n")[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("`vectors`") && err.contains("unknown field"), "{err}");
        let err = parse("{\"id\":-4,\"vector\":[1]}\n")[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("-4"), "{err}");
    }
}
