//! The file connector's error type.

use std::path::{Path, PathBuf};

/// Errors of the file source and sink. Bad *lines* are not errors: they go to the dead
/// letters. [`is_retryable`](Self::is_retryable) tells transient conditions from fatal ones.
///
/// Converts into [`tideline::Error`] as a [`tideline::Error::Connector`] (connector `"file"`)
/// that keeps it: `error.connector_error::<FileError>()` gets it back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// A file source was given no files.
    #[error("a file source needs at least one file")]
    NoFiles,
    /// A file could not be opened, read, written or synced.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A path names a directory where a file is expected.
    #[error("{path}: is a directory, not a file")]
    IsDirectory {
        /// The path.
        path: PathBuf,
    },
    /// A CSV file with headers is empty: there is no header line naming the columns.
    #[error("{path}: is empty: expected a CSV header line naming the columns")]
    MissingHeader {
        /// The file.
        path: PathBuf,
    },
    /// A CSV header line cannot be split into fields.
    #[error("{path}: bad header line: {reason}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A CSV header lacks a required column (or the time field).
    #[error("{path}: header {header:?} has no column {column:?}")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column that is missing.
        column: String,
        /// The columns the header names.
        header: Vec<String>,
    },
    /// A file's contents or a path are not what the connector needs (a header it cannot read,
    /// a stream that ended in the middle of a line, an output whose directory is a file).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A row could not be encoded as CSV or JSON.
    #[error("{path}: cannot encode a row: {source}")]
    Encode {
        /// The file written.
        path: PathBuf,
        /// The serializer's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An append-only sink received a retraction (its input is not append-only).
    #[error(
        "{path}: received a retraction of {row}: the collection is not append-only \
         (late corrections or updates retract results); write it as a changelog instead"
    )]
    NotAppendOnly {
        /// The file written.
        path: PathBuf,
        /// The retracted row (its `Debug` text).
        row: String,
    },
}

impl FileError {
    /// Whether retrying may succeed: I/O that was interrupted or timed out, or a full disk
    /// (space may be freed). Missing files, permissions, bad headers and unencodable rows are
    /// fatal.
    pub fn is_retryable(&self) -> bool {
        match self {
            FileError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::StorageFull
            ),
            _ => false,
        }
    }

    /// The file concerned, if one is.
    pub fn path(&self) -> Option<&Path> {
        match self {
            FileError::NoFiles => None,
            FileError::Io { path, .. }
            | FileError::IsDirectory { path }
            | FileError::MissingHeader { path }
            | FileError::BadHeader { path, .. }
            | FileError::MissingColumn { path, .. }
            | FileError::Format { path, .. }
            | FileError::Encode { path, .. }
            | FileError::NotAppendOnly { path, .. } => Some(path),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FileError::Io { path: path.into(), source }
    }
}

impl From<FileError> for tideline::Error {
    fn from(error: FileError) -> Self {
        let retryable = error.is_retryable();
        tideline::Error::connector("file", retryable, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_io_is_retryable_and_configuration_is_not() {
        let full = FileError::io("out.csv", std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(full.is_retryable());
        let missing = FileError::io("in.csv", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!missing.is_retryable());
        assert!(!FileError::NoFiles.is_retryable());
        assert!(!FileError::MissingHeader { path: "x.csv".into() }.is_retryable());
    }

    #[test]
    fn keeps_its_type_and_retry_hint_in_the_engine_error() {
        let error: tideline::Error =
            FileError::io("out.csv", std::io::Error::from(std::io::ErrorKind::TimedOut)).into();
        assert!(error.is_retryable());
        let file = error.connector_error::<FileError>().expect("a file error");
        assert_eq!(file.path(), Some(Path::new("out.csv")));
        assert!(matches!(error, tideline::Error::Connector { connector: "file", retryable: true, .. }));
    }
}
