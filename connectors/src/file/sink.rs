//! The file sink.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tideline::sink::{Sink, SinkHandle, SinkParallelism, SinkWriter};
use tideline::{ExchangeData, Time, VecCollection};

use crate::file::{FileError, Format};

/// What a [`FileSink`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SinkMode {
    /// Every update with its diff: a `diff` column (CSV) or field (JSON). Retractions are rows
    /// with a negative diff.
    #[default]
    Changelog,
    /// Rows only (a row with multiplicity `n` is written `n` times). A retraction is an error
    /// (the sink stops and its handle reports it): use this for outputs that must never
    /// change, like final window results without late corrections.
    AppendOnly,
    /// The final contents of the collection, written when the input completes.
    Snapshot,
}

type Compare<D> = Arc<dyn Fn(&D, &D) -> Ordering + Send + Sync>;

/// Configures a [`FileSink`].
pub struct FileSinkBuilder<D> {
    path: Option<PathBuf>,
    format: Format,
    mode: SinkMode,
    header: Option<Vec<String>>,
    sort: Option<Compare<D>>,
    name: Option<String>,
}

/// Writes a collection to one CSV or JSON Lines file (on worker 0 of process 0).
///
/// Times are written in order, each once the frontier has passed it; within a time,
/// retractions come before insertions, each group sorted by the row's order. With
/// [`sort_by`](FileSinkBuilder::sort_by) the whole output is sorted when the input completes
/// instead (stable, so each row's changes stay in time order).
///
/// ```
/// use tideline::prelude::*;
/// use tideline::sink::SinkHandle;
/// use tideline_connectors::file::{FileSink, SinkMode};
///
/// let path = std::env::temp_dir().join(format!("tideline-sink-doc-{}.csv", std::process::id()));
/// let sink = FileSink::<(String, i64)>::csv(&path).header(["name", "score"]).mode(SinkMode::Changelog).build().unwrap();
/// let handle = SinkHandle::new("scores");
/// let h = handle.clone();
/// tideline::runtime::collect(1, move |scope| {
///     use tideline::differential_dataflow::input::Input;
///     let (_, rows) = scope.new_collection_from(vec![("ada".to_string(), 3i64), ("bob".to_string(), 5)]);
///     sink.write(rows.clone(), &h);
///     rows
/// });
/// handle.check().unwrap();
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), "name,score,diff\nada,3,1\nbob,5,1\n");
/// ```
pub struct FileSink<D> {
    path: Option<PathBuf>,
    format: Format,
    mode: SinkMode,
    header: Option<Vec<String>>,
    sort: Option<Compare<D>>,
    name: String,
    _marker: PhantomData<fn(D)>,
}

impl<D> Clone for FileSink<D> {
    fn clone(&self) -> Self {
        FileSink {
            path: self.path.clone(),
            format: self.format,
            mode: self.mode,
            header: self.header.clone(),
            sort: self.sort.clone(),
            name: self.name.clone(),
            _marker: PhantomData,
        }
    }
}

impl<D> FileSink<D> {
    /// A CSV file with a header line.
    pub fn csv(path: impl AsRef<Path>) -> FileSinkBuilder<D> {
        FileSinkBuilder::new(path, Format::csv())
    }

    /// A JSON Lines file.
    pub fn json_lines(path: impl AsRef<Path>) -> FileSinkBuilder<D> {
        FileSinkBuilder::new(path, Format::JsonLines)
    }

    /// CSV with a header line, to standard output (of process 0).
    pub fn csv_stdout() -> FileSinkBuilder<D> {
        FileSinkBuilder { path: None, ..FileSinkBuilder::new("-", Format::csv()) }
    }
}

impl<D> FileSinkBuilder<D> {
    fn new(path: impl AsRef<Path>, format: Format) -> Self {
        FileSinkBuilder {
            path: Some(path.as_ref().to_path_buf()),
            format,
            mode: SinkMode::default(),
            header: None,
            sort: None,
            name: None,
        }
    }

    /// Sets what is written (default [`SinkMode::Changelog`]).
    pub fn mode(mut self, mode: SinkMode) -> Self {
        self.mode = mode;
        self
    }

    /// Names the CSV columns (default: the row's field names).
    pub fn header<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.header = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// Writes the whole output sorted by `compare` when the input completes (stable: changes
    /// to equal rows stay in time order).
    pub fn sort_by(mut self, compare: impl Fn(&D, &D) -> Ordering + Send + Sync + 'static) -> Self {
        self.sort = Some(Arc::new(compare));
        self
    }

    /// Names the sink (default: the file name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Checks that the file can be written (creating it if missing, without truncating: the
    /// writer truncates when it starts).
    pub fn build(self) -> Result<FileSink<D>, FileError> {
        if let Some(path) = &self.path {
            OpenOptions::new().create(true).append(true).open(path).map_err(|e| FileError::io(path, e))?;
        }
        let name = self
            .name
            .unwrap_or_else(|| self.path.as_ref().map_or_else(|| "stdout".to_string(), |p| p.display().to_string()));
        Ok(FileSink {
            path: self.path,
            format: self.format,
            mode: self.mode,
            header: self.header,
            sort: self.sort,
            name,
            _marker: PhantomData,
        })
    }
}

impl<D: ExchangeData + Serialize> FileSink<D> {
    /// Writes `collection` to the file; progress and errors go to `handle`.
    pub fn write(&self, collection: VecCollection<'_, Time, D>, handle: &SinkHandle) {
        let sink = self.clone();
        collection.sink_with(handle, SinkParallelism::Single, move |index, _peers| {
            (index == 0).then(|| FileWriter {
                sink,
                out: None,
                buffered: Vec::new(),
                snapshot: BTreeMap::new(),
                wrote_header: false,
            })
        });
    }
}

struct FileWriter<D> {
    sink: FileSink<D>,
    out: Option<Output>,
    buffered: Vec<(D, isize)>,
    snapshot: BTreeMap<D, isize>,
    wrote_header: bool,
}

impl<D: ExchangeData + Serialize> FileWriter<D> {
    fn encode_error(&self, source: impl std::error::Error + Send + Sync + 'static) -> tideline::Error {
        FileError::Encode { path: self.path(), source: Box::new(source) }.into()
    }

    fn io_error(&self, source: std::io::Error) -> tideline::Error {
        FileError::io(self.path(), source).into()
    }

    fn path(&self) -> PathBuf {
        self.sink.path.clone().unwrap_or_else(|| PathBuf::from("<stdout>"))
    }

    fn out(&mut self) -> tideline::Result<&mut Output> {
        if self.out.is_none() {
            self.out = Some(match &self.sink.path {
                Some(path) => {
                    let file = File::create(path).map_err(|e| FileError::io(path, e))?;
                    Output::File(BufWriter::with_capacity(1 << 16, file))
                }
                None => Output::Stdout(BufWriter::new(std::io::stdout())),
            });
        }
        Ok(self.out.as_mut().expect("just opened"))
    }

    fn write_row(&mut self, row: &D, diff: Option<isize>) -> tideline::Result<()> {
        let line = match self.sink.format {
            Format::Csv { delimiter, .. } => {
                if !self.wrote_header {
                    let mut names = match &self.sink.header {
                        Some(names) => names.clone(),
                        None => csv_field_names(row, delimiter).map_err(|e| self.encode_error(e))?,
                    };
                    if diff.is_some() {
                        names.push("diff".to_string());
                    }
                    let header = csv_line(&names, delimiter).map_err(|e| self.encode_error(e))?;
                    self.out()?.write_all(&header).map_err(|e| self.io_error(e))?;
                    self.wrote_header = true;
                }
                match diff {
                    Some(diff) => csv_line(&(row, diff), delimiter),
                    None => csv_line(row, delimiter),
                }
                .map_err(|e| self.encode_error(e))?
            }
            Format::JsonLines => {
                let mut value = serde_json::to_value(row).map_err(|e| self.encode_error(e))?;
                if let Some(diff) = diff {
                    value = match value {
                        serde_json::Value::Object(mut map) => {
                            map.insert("diff".into(), diff.into());
                            serde_json::Value::Object(map)
                        }
                        other => serde_json::json!({ "row": other, "diff": diff }),
                    };
                }
                let mut line = serde_json::to_vec(&value).map_err(|e| self.encode_error(e))?;
                line.push(b'\n');
                line
            }
        };
        self.out()?.write_all(&line).map_err(|e| self.io_error(e))
    }

    fn emit(&mut self, row: &D, diff: isize) -> tideline::Result<()> {
        match self.sink.mode {
            SinkMode::Changelog => self.write_row(row, Some(diff)),
            SinkMode::AppendOnly if diff > 0 => (0..diff).try_for_each(|_| self.write_row(row, None)),
            SinkMode::AppendOnly => Err(FileError::NotAppendOnly { path: self.path(), row: format!("{row:?}") }.into()),
            SinkMode::Snapshot => {
                *self.snapshot.entry(row.clone()).or_insert(0) += diff;
                Ok(())
            }
        }
    }
}

impl<D: ExchangeData + Serialize> SinkWriter<D> for FileWriter<D> {
    fn write(&mut self, _time: Time, updates: &[(D, isize)]) -> tideline::Result<()> {
        // Retractions first, then insertions, each in row order.
        let ordered = updates.iter().filter(|(_, r)| *r < 0).chain(updates.iter().filter(|(_, r)| *r > 0));
        if self.sink.sort.is_some() && self.sink.mode != SinkMode::Snapshot {
            self.buffered.extend(ordered.cloned());
            return Ok(());
        }
        for (row, diff) in ordered {
            self.emit(row, *diff)?;
        }
        Ok(())
    }

    fn advance(&mut self, frontier: Option<Time>) -> tideline::Result<()> {
        if frontier.is_none() {
            let mut rows: Vec<(D, isize)> = match self.sink.mode {
                SinkMode::Snapshot => std::mem::take(&mut self.snapshot).into_iter().filter(|(_, r)| *r != 0).collect(),
                _ => std::mem::take(&mut self.buffered),
            };
            if let Some(compare) = self.sink.sort.clone() {
                rows.sort_by(|a, b| compare(&a.0, &b.0));
            }
            for (row, diff) in &rows {
                match self.sink.mode {
                    SinkMode::Snapshot => (0..*diff).try_for_each(|_| self.write_row(row, None))?,
                    _ => self.emit(row, *diff)?,
                }
            }
            self.out()?;
            if !self.wrote_header
                && let (Format::Csv { delimiter, .. }, Some(names)) = (self.sink.format, self.sink.header.clone())
            {
                // An empty output still says what its columns are.
                let mut names = names;
                if self.sink.mode == SinkMode::Changelog {
                    names.push("diff".to_string());
                }
                let header = csv_line(&names, delimiter).map_err(|e| self.encode_error(e))?;
                let path = self.path();
                self.out()?.write_all(&header).map_err(|e| FileError::io(path, e))?;
                self.wrote_header = true;
            }
        }
        let path = self.path();
        if let Some(out) = self.out.as_mut() {
            out.flush().map_err(|e| FileError::io(&path, e))?;
            if frontier.is_none()
                && let Output::File(file) = out
            {
                file.get_ref().sync_all().map_err(|e| FileError::io(&path, e))?;
            }
        }
        Ok(())
    }
}

enum Output {
    File(BufWriter<File>),
    Stdout(BufWriter<std::io::Stdout>),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::File(w) => w.write(buf),
            Output::Stdout(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::File(w) => w.flush(),
            Output::Stdout(w) => w.flush(),
        }
    }
}

fn csv_line<T: Serialize + ?Sized>(row: &T, delimiter: u8) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::WriterBuilder::new().has_headers(false).delimiter(delimiter).from_writer(Vec::new());
    writer.serialize(row)?;
    writer.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// The CSV header serde would write for `row` (its field names, flattened).
fn csv_field_names<T: Serialize>(row: &T, delimiter: u8) -> Result<Vec<String>, csv::Error> {
    let mut writer = csv::WriterBuilder::new().has_headers(true).delimiter(delimiter).from_writer(Vec::new());
    writer.serialize(row)?;
    let bytes = writer.into_inner().map_err(|e| csv::Error::from(e.into_error()))?;
    let text = String::from_utf8_lossy(&bytes);
    let first = text.lines().next().unwrap_or_default();
    let mut record = csv::ByteRecord::new();
    crate::file::split_csv_line(first.as_bytes(), delimiter, &mut record, &mut Vec::new())
        .map_err(|e| csv::Error::from(std::io::Error::other(e)))?;
    Ok(record.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect())
}
