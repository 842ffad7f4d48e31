//! Files: CSV and JSON Lines, in and out.
//!
//! - [`FileSource`] reads one or many files, or standard input, as a watermarked, partitioned
//!   source: each file is one ordered stream (a partition). Files are split across workers
//!   *without changing results*: workers read interleaved chunks, each started with the
//!   watermark the lines before it produce, so every record is on time or late exactly as if
//!   the file were read from start to end, and workers stay near the same event time. Pipes
//!   and standard input are read once, by one worker. Lines that fail to parse go to the
//!   dead-letter collection with the file, line number, raw text and reason.
//! - [`FileSink`] writes a collection as CSV or JSON Lines: a changelog with diffs, append-only
//!   rows, or the final contents.
//! - [`FileError`]: what can go wrong, with the retryable cases marked.

mod error;
mod sink;
mod source;

pub use error::FileError;
pub use sink::{FileSink, FileSinkBuilder, SinkMode};
pub use source::{FileSource, FileSourceBuilder};

use csv::ByteRecord;

/// A line-oriented file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated (or other delimiter) values, one record per line, RFC 4180 quoting
    /// within a line. Fields map to the record's fields by the header line's names.
    Csv {
        /// The field delimiter, usually `b','`.
        delimiter: u8,
        /// Whether the first line names the columns (required to decode structs by name).
        has_headers: bool,
    },
    /// One JSON value per line.
    JsonLines,
}

impl Format {
    /// CSV with a header line and `,` as the delimiter.
    pub fn csv() -> Self {
        Format::Csv { delimiter: b',', has_headers: true }
    }
}

/// Splits one CSV line into fields, with RFC 4180 quoting within the line.
pub(crate) fn split_csv_line(
    line: &[u8],
    delimiter: u8,
    record: &mut ByteRecord,
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    record.clear();
    let mut i = 0;
    loop {
        if line.get(i) == Some(&b'"') {
            scratch.clear();
            i += 1;
            loop {
                match line.get(i) {
                    None => return Err("unterminated quoted field".to_string()),
                    Some(b'"') if line.get(i + 1) == Some(&b'"') => {
                        scratch.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(byte) => {
                        scratch.push(*byte);
                        i += 1;
                    }
                }
            }
            record.push_field(scratch);
            match line.get(i) {
                None => return Ok(()),
                Some(byte) if *byte == delimiter => i += 1,
                Some(_) => return Err(format!("unexpected character after a closing quote at byte {}", i + 1)),
            }
        } else {
            let end = line[i..].iter().position(|b| *b == delimiter).map_or(line.len(), |p| i + p);
            record.push_field(&line[i..end]);
            if end == line.len() {
                return Ok(());
            }
            i = end + 1;
        }
    }
}

/// Removes a trailing `\n` or `\r\n`.
pub(crate) fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Result<Vec<String>, String> {
        let mut record = ByteRecord::new();
        split_csv_line(line.as_bytes(), b',', &mut record, &mut Vec::new())?;
        Ok(record.iter().map(|f| String::from_utf8(f.to_vec()).unwrap()).collect())
    }

    #[test]
    fn splits_plain_and_quoted_fields() {
        assert_eq!(split("1,a,2").unwrap(), ["1", "a", "2"]);
        assert_eq!(split("1,\"a,b\",2").unwrap(), ["1", "a,b", "2"]);
        assert_eq!(split("\"say \"\"hi\"\"\",x").unwrap(), ["say \"hi\"", "x"]);
        assert_eq!(split("1,,").unwrap(), ["1", "", ""]);
        assert_eq!(split("").unwrap(), [""]);
    }

    #[test]
    fn rejects_broken_quoting() {
        assert!(split("1,\"abc").is_err());
        assert!(split("\"a\"b,c").is_err());
    }
}
