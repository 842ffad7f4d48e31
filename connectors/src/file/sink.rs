//! The file sink.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tideline::sink::{Sink, SinkHandle, SinkParallelism, SinkWriter};
use tideline::{ExchangeData, Time, VecCollection};

use crate::file::FileError;
use crate::file::Format;

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

/// How a row becomes a line: its own serde form, or a projection's (see
/// [`FileSinkBuilder::write_as`]).
struct Encoder<D> {
    /// The line for a row (with a `diff` column or field when given).
    line: Box<dyn Fn(&D, Format, Option<isize>) -> Result<Vec<u8>, String> + Send + Sync>,
    /// The CSV column names serde would write for a row.
    names: Box<dyn Fn(&D, u8) -> Result<Vec<String>, String> + Send + Sync>,
}

impl<D: Serialize + 'static> Encoder<D> {
    /// Rows as themselves.
    fn own() -> Self {
        Encoder {
            line: Box::new(encode),
            names: Box::new(|row, delimiter| csv_field_names(row, delimiter).map_err(|e| e.to_string())),
        }
    }
}

impl<D> Encoder<D> {
    fn of<R: Serialize>(project: impl Fn(&D) -> R + Clone + Send + Sync + 'static) -> Self {
        let names = project.clone();
        Encoder {
            line: Box::new(move |row, format, diff| encode(&project(row), format, diff)),
            names: Box::new(move |row, delimiter| csv_field_names(&names(row), delimiter).map_err(|e| e.to_string())),
        }
    }
}

/// Configures a [`FileSink`].
pub struct FileSinkBuilder<D> {
    path: Option<PathBuf>,
    format: Format,
    mode: SinkMode,
    header: Option<Vec<String>>,
    sort: Option<Compare<D>>,
    encoder: Option<Arc<Encoder<D>>>,
    name: Option<String>,
}

/// Writes a collection to one CSV or JSON Lines file (on worker 0 of process 0), or to
/// standard output.
///
/// Each time's updates are written, and flushed, as soon as the frontier has passed that
/// time, so a reader sees results as they complete and the sink keeps nothing but the times
/// not yet complete. Times are written in order; within a time, retractions come before
/// insertions, each group in the row's order, or, with [`sort_by`](FileSinkBuilder::sort_by),
/// sorted by the given order (retractions first among rows it finds equal).
/// [`SinkMode::Snapshot`] alone waits for the end of the input.
///
/// # Files
///
/// A path that is a regular file, or does not exist yet, is written as `PATH.partial` beside
/// it: the old `PATH` is removed when the writer starts, and the partial file is synced and
/// renamed to `PATH` when the input is complete. So `PATH` is either this run's complete output
/// or absent (with the partial output visible beside it) — never an earlier run's results
/// passing for this one's. Anything else — a FIFO, a character device such as `/dev/null`
/// or `/dev/stdout`, a symbolic link — is opened once, when the writer starts, and written in
/// place (truncated if it is a regular file behind a link); only regular files are synced.
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
    encoder: Option<Arc<Encoder<D>>>,
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
            encoder: self.encoder.clone(),
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
            encoder: None,
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

    /// Orders the rows of each time by `compare` (stable: among rows it finds equal,
    /// retractions come first). Times are still written in order, each as soon as it is
    /// complete: the output is sorted by time, then by `compare`.
    pub fn sort_by(mut self, compare: impl Fn(&D, &D) -> Ordering + Send + Sync + 'static) -> Self {
        self.sort = Some(Arc::new(compare));
        self
    }

    /// Writes `project(row)` for each row instead of the row itself — e.g. the part of a
    /// record a reader wants — while rows are still ordered as `D`s. `D` itself keeps its own
    /// serde form, which is what travels between workers and processes.
    pub fn write_as<R: Serialize>(mut self, project: impl Fn(&D) -> R + Clone + Send + Sync + 'static) -> Self {
        self.encoder = Some(Arc::new(Encoder::of(project)));
        self
    }

    /// Names the sink (default: the file name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Checks that the output can be written: an existing regular file must be writable, a
    /// new file's directory must exist, and a directory is refused. Nothing is created,
    /// truncated or opened here (opening a FIFO would block, and closing it would end its
    /// reader): the writer does that when it starts.
    pub fn build(self) -> Result<FileSink<D>, FileError> {
        if let Some(path) = &self.path {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => {
                    return Err(FileError::IsDirectory { path: path.clone() });
                }
                Ok(meta) if meta.is_file() => {
                    OpenOptions::new().append(true).open(path).map_err(|e| FileError::io(path, e))?;
                }
                Ok(_) => {} // A FIFO, a device, a socket: opened by the writer.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let parent = parent_dir(path);
                    match std::fs::metadata(&parent) {
                        Ok(meta) if meta.is_dir() => {}
                        Ok(_) => {
                            return Err(FileError::Format {
                                path: path.clone(),
                                message: format!("{} is not a directory", parent.display()),
                            });
                        }
                        Err(e) => return Err(FileError::io(path, e)),
                    }
                }
                Err(e) => return Err(FileError::io(path, e)),
            }
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
            encoder: self.encoder,
            name,
            _marker: PhantomData,
        })
    }
}

/// The directory a file `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Where the partial output of `path` is written until it is complete.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

impl<D: ExchangeData + Serialize> FileSink<D> {
    /// Writes `collection` to the file; progress and errors go to `handle`.
    pub fn write(&self, collection: VecCollection<'_, Time, D>, handle: &SinkHandle) {
        let sink = self.clone();
        collection.sink_with(handle, SinkParallelism::Single, move |index, _peers| {
            (index == 0).then(|| {
                let encoder = sink.encoder.clone().unwrap_or_else(|| Arc::new(Encoder::own()));
                FileWriter { sink, encoder, out: None, snapshot: BTreeMap::new(), wrote_header: false }
            })
        });
    }
}

struct FileWriter<D> {
    sink: FileSink<D>,
    encoder: Arc<Encoder<D>>,
    out: Option<Output>,
    snapshot: BTreeMap<D, isize>,
    wrote_header: bool,
}

impl<D: ExchangeData + Serialize> FileWriter<D> {
    /// A row or header that cannot be encoded.
    fn error(&self, message: impl std::fmt::Display) -> tideline::Error {
        let message = message.to_string();
        FileError::Encode { path: self.path(), source: message.into() }.into()
    }

    fn path(&self) -> PathBuf {
        self.sink.path.clone().unwrap_or_else(|| PathBuf::from("<stdout>"))
    }

    /// Opens the output when the writer starts (see [`FileSink`] for how).
    fn out(&mut self) -> tideline::Result<&mut Output> {
        if self.out.is_none() {
            self.out = Some(match &self.sink.path {
                Some(path) => Output::open(path)?,
                None => Output::Stdout(BufWriter::new(std::io::stdout())),
            });
        }
        Ok(self.out.as_mut().expect("just opened"))
    }

    fn write_header(&mut self, row: Option<&D>, diff: bool) -> tideline::Result<()> {
        let Format::Csv { delimiter, .. } = self.sink.format else { return Ok(()) };
        let mut names = match (&self.sink.header, row) {
            (Some(names), _) => names.clone(),
            (None, Some(row)) => (self.encoder.names)(row, delimiter).map_err(|e| self.error(e))?,
            (None, None) => return Ok(()),
        };
        if diff {
            names.push("diff".to_string());
        }
        let header = csv_line(&names, delimiter).map_err(|e| self.error(e))?;
        let path = self.path();
        self.out()?.write_all(&header).map_err(|e| FileError::io(path, e))?;
        self.wrote_header = true;
        Ok(())
    }

    fn write_row(&mut self, row: &D, diff: Option<isize>) -> tideline::Result<()> {
        if !self.wrote_header {
            self.write_header(Some(row), diff.is_some())?;
        }
        let line = (self.encoder.line)(row, self.sink.format, diff).map_err(|e| self.error(e))?;
        let path = self.path();
        self.out()?.write_all(&line).map_err(|e| FileError::io(path, e).into())
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
        // Retractions first, then insertions, each in row order (or the sink's order).
        if self.sink.sort.is_none() && updates.iter().all(|(_, diff)| *diff > 0) {
            // Insertions only (final results): already in row order.
            return updates.iter().try_for_each(|(row, diff)| self.emit(row, *diff));
        }
        let mut ordered: Vec<&(D, isize)> = updates.iter().collect();
        match &self.sink.sort {
            Some(compare) => ordered.sort_by(|a, b| compare(&a.0, &b.0).then((a.1 > 0).cmp(&(b.1 > 0)))),
            None => ordered.sort_by_key(|(_, diff)| *diff > 0),
        }
        for (row, diff) in ordered {
            self.emit(row, *diff)?;
        }
        Ok(())
    }

    fn advance(&mut self, frontier: Option<Time>) -> tideline::Result<()> {
        // Open (and so truncate or replace) the output when the writer starts, not at the end.
        self.out()?;
        if frontier.is_none() {
            if self.sink.mode == SinkMode::Snapshot {
                let rows: Vec<(D, isize)> =
                    std::mem::take(&mut self.snapshot).into_iter().filter(|(_, r)| *r != 0).collect();
                let mut ordered: Vec<&(D, isize)> = rows.iter().collect();
                if let Some(compare) = &self.sink.sort {
                    ordered.sort_by(|a, b| compare(&a.0, &b.0));
                }
                for (row, diff) in ordered {
                    (0..*diff).try_for_each(|_| self.write_row(row, None))?;
                }
            }
            if !self.wrote_header {
                // An empty output still says what its columns are.
                self.write_header(None, self.sink.mode == SinkMode::Changelog)?;
            }
        }
        let path = self.path();
        let out = self.out.as_mut().expect("opened above");
        out.flush().map_err(|e| FileError::io(&path, e))?;
        if frontier.is_none() {
            out.complete().map_err(|e| FileError::io(&path, e))?;
        }
        Ok(())
    }

    /// The output synced, and its length: a restore truncates the file to it (as Flink's file
    /// sink truncates an in-progress part file), so that what a crashed run wrote after the
    /// checkpoint is written once, by the restored run. A snapshot sink's rows go into the
    /// checkpoint itself.
    fn checkpoint(&mut self, _id: u64) -> tideline::Result<Vec<u8>> {
        let path = self.path();
        let out = self.out()?;
        out.flush().map_err(|e| FileError::io(&path, e))?;
        let length = out.sync_len().map_err(|e| FileError::io(&path, e))?.ok_or_else(|| {
            tideline::Error::from(FileError::Format {
                path: path.clone(),
                message: "cannot be checkpointed: only a regular file can be rewound after a crash (not standard \
                          output, a FIFO, a device or a link)"
                    .into(),
            })
        })?;
        let snapshot: Vec<(&D, isize)> = self.snapshot.iter().map(|(row, diff)| (row, *diff)).collect();
        let state = WriterState { length, wrote_header: self.wrote_header, snapshot };
        serde_json::to_vec(&state).map_err(|e| self.error(e))
    }

    fn restore(&mut self, state: &[u8], written: Option<Time>) -> tideline::Result<Option<Time>> {
        let state: WriterState<D> = serde_json::from_slice(state).map_err(|e| self.error(e))?;
        let Some(path) = self.sink.path.clone() else {
            return Err(self.error("standard output cannot resume from a checkpoint"));
        };
        self.out = Some(Output::resume(&path, state.length)?);
        self.wrote_header = state.wrote_header;
        self.snapshot = state.snapshot.into_iter().collect();
        Ok(written)
    }
}

/// A [`FileWriter`]'s part of a checkpoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct WriterState<R> {
    /// The output's length: everything before it is durable.
    length: u64,
    wrote_header: bool,
    /// A [`SinkMode::Snapshot`] sink's rows so far.
    snapshot: Vec<(R, isize)>,
}

/// Where a [`FileWriter`] writes.
enum Output {
    /// A regular file written as `partial` and renamed to `path` when complete.
    Replace { file: BufWriter<File>, partial: PathBuf, path: PathBuf, done: bool },
    /// Anything else with a path (a FIFO, a device, a link), written in place.
    InPlace { file: BufWriter<File>, regular: bool },
    /// Standard output.
    Stdout(BufWriter<std::io::Stdout>),
}

impl Output {
    fn open(path: &Path) -> tideline::Result<Output> {
        let io = |e| tideline::Error::from(FileError::io(path, e));
        let replace = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta.is_file(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io(e)),
        };
        if replace {
            let partial = partial_path(path);
            let file = File::create(&partial).map_err(|e| FileError::io(&partial, e))?;
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
            let file = BufWriter::with_capacity(1 << 16, file);
            Ok(Output::Replace { file, partial, path: path.to_path_buf(), done: false })
        } else {
            // `create` truncates a regular file behind a link; FIFOs and devices ignore it.
            let file = File::create(path).map_err(io)?;
            let regular = file.metadata().map_err(io)?.is_file();
            Ok(Output::InPlace { file: BufWriter::with_capacity(1 << 16, file), regular })
        }
    }

    /// Continues the partial output of `path` from a checkpoint: truncated to `length`, written
    /// from there. If the partial file is gone because the run had completed and renamed it
    /// (the crash came before its checkpoints were removed), the complete file is taken back.
    fn resume(path: &Path, length: u64) -> tideline::Result<Output> {
        let partial = partial_path(path);
        let io = |e| tideline::Error::from(FileError::io(&partial, e));
        if !partial.exists() && path.is_file() {
            std::fs::rename(path, &partial).map_err(io)?;
        }
        let mut file = OpenOptions::new().write(true).open(&partial).map_err(|e| {
            tideline::Error::from(FileError::Format {
                path: partial.clone(),
                message: format!(
                    "cannot resume the output from its checkpoint ({e}): the partial output was removed; \
                     start again with an empty checkpoint directory"
                ),
            })
        })?;
        let current = file.metadata().map_err(io)?.len();
        if current < length {
            return Err(FileError::Format {
                path: partial.clone(),
                message: format!(
                    "is shorter ({current} bytes) than its checkpoint says it was ({length}): it was changed since; \
                     start again with an empty checkpoint directory"
                ),
            }
            .into());
        }
        file.set_len(length).map_err(io)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        file.sync_all().map_err(io)?;
        let file = BufWriter::with_capacity(1 << 16, file);
        Ok(Output::Replace { file, partial, path: path.to_path_buf(), done: false })
    }

    /// Syncs a flushed output and returns its length, for a checkpoint; `None` for outputs that
    /// cannot be rewound (standard output, FIFOs, devices, links).
    fn sync_len(&mut self) -> std::io::Result<Option<u64>> {
        match self {
            Output::Replace { file, done: false, .. } => {
                let file = file.get_ref();
                file.sync_data()?;
                Ok(Some(file.metadata()?.len()))
            }
            Output::Replace { done: true, path, .. } => Ok(Some(std::fs::metadata(path)?.len())),
            Output::InPlace { .. } | Output::Stdout(_) => Ok(None),
        }
    }

    /// The input is complete and flushed: make the output durable and put it in place.
    fn complete(&mut self) -> std::io::Result<()> {
        match self {
            Output::Replace { file, partial, path, done } => {
                if !*done {
                    file.get_ref().sync_all()?;
                    std::fs::rename(&*partial, &*path)?;
                    // The rename itself is durable once the directory is synced.
                    File::open(parent_dir(path))?.sync_all()?;
                    *done = true;
                }
                Ok(())
            }
            Output::InPlace { file, regular: true } => file.get_ref().sync_all(),
            Output::InPlace { .. } | Output::Stdout(_) => Ok(()),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Replace { file, .. } | Output::InPlace { file, .. } => file.write(buf),
            Output::Stdout(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Replace { file, .. } | Output::InPlace { file, .. } => file.flush(),
            Output::Stdout(w) => w.flush(),
        }
    }
}

/// A row as a line of `format`, with a `diff` column or field when given.
fn encode<T: Serialize>(row: &T, format: Format, diff: Option<isize>) -> Result<Vec<u8>, String> {
    match format {
        Format::Csv { delimiter, .. } => match diff {
            Some(diff) => csv_line(&(row, diff), delimiter),
            None => csv_line(row, delimiter),
        }
        .map_err(|e| e.to_string()),
        Format::JsonLines => {
            let mut value = serde_json::to_value(row).map_err(|e| e.to_string())?;
            if let Some(diff) = diff {
                value = match value {
                    serde_json::Value::Object(mut map) => {
                        map.insert("diff".into(), diff.into());
                        serde_json::Value::Object(map)
                    }
                    other => serde_json::json!({ "row": other, "diff": diff }),
                };
            }
            let mut line = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
            line.push(b'\n');
            Ok(line)
        }
    }
}

/// Where a thread's reusable CSV line writer puts its bytes.
#[derive(Clone, Default)]
struct LineBuffer(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl std::io::Write for LineBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// One CSV writer per thread and delimiter, reused for every line: a `csv::Writer` per
    /// line allocated and zeroed its 8 KiB buffer for each row written (a fifth of
    /// `window_agg`'s time on a sliding-window query). Flexible: the rows of different sinks
    /// have different numbers of fields.
    static LINE_WRITERS: std::cell::RefCell<Vec<(u8, LineBuffer, csv::Writer<LineBuffer>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn csv_line<T: Serialize + ?Sized>(row: &T, delimiter: u8) -> Result<Vec<u8>, csv::Error> {
    LINE_WRITERS.with(|writers| {
        let mut writers = writers.borrow_mut();
        let index = match writers.iter().position(|(d, _, _)| *d == delimiter) {
            Some(index) => index,
            None => {
                let buffer = LineBuffer::default();
                let writer = csv::WriterBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .delimiter(delimiter)
                    .buffer_capacity(1024)
                    .from_writer(buffer.clone());
                writers.push((delimiter, buffer, writer));
                writers.len() - 1
            }
        };
        let (_, buffer, writer) = &mut writers[index];
        let written = writer.serialize(row).and_then(|()| writer.flush().map_err(csv::Error::from));
        let line = std::mem::take(&mut *buffer.0.borrow_mut());
        if written.is_err() {
            // It may hold part of the row: start the next line with a fresh writer.
            writers.swap_remove(index);
        }
        written.map(|()| line)
    })
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
