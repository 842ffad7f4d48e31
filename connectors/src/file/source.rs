//! The file source.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use csv::ByteRecord;
use serde::de::DeserializeOwned;
use tideline::runtime::control::Broadcast;
use tideline::source::{ReadContext, ReadStatus, SourceConfig, SourceReader, SourceSetup, SourceStreams, source};
use tideline::time::late::DeadLetter;
use tideline::time::watermark::PartitionId;
use tideline::timely::dataflow::Scope;
use tideline::{EventTime, Time};

use crate::file::{FileError, Format, split_csv_line, trim_newline};

type TimeFn<D> = Arc<dyn Fn(&D) -> Time + Send + Sync>;

/// Configures a [`FileSource`]; `build()` checks the files and their headers.
pub struct FileSourceBuilder<D> {
    paths: Vec<PathBuf>,
    format: Format,
    time_field: Option<String>,
    required: Vec<String>,
    event_time: TimeFn<D>,
    split: bool,
}

/// A watermarked source over CSV or JSON Lines files.
///
/// Each file is a partition: one ordered stream with its own watermark. With a
/// [`time_field`](FileSourceBuilder::time_field) and a bounded-out-of-orderness watermark
/// strategy, each file is split into one contiguous byte range per worker; a worker starts
/// its range with the watermark of the lines before it (a first pass shares each range's
/// line count and largest event time), so lateness and results are exactly those of reading
/// the file from start to end, whatever the number of workers. Otherwise file `i` is read
/// whole by worker `i % workers`.
///
/// A line that fails to decode (wrong field count, a bad number, broken JSON, invalid
/// UTF-8) becomes a [`DeadLetter`] with the file, its line number, the raw line and the
/// reason, and is counted; reading goes on. Empty lines are skipped.
///
/// Records must not contain newlines (CSV quoting works within a line).
///
/// ```
/// use std::io::Write;
/// use tideline::prelude::*;
/// use tideline::source::SourceConfig;
/// use tideline_connectors::file::FileSource;
///
/// #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
/// struct Reading { event_time_ms: u64, sensor: String, value: i64 }
/// impl EventTime for Reading {
///     fn event_time(&self) -> Time { self.event_time_ms }
/// }
///
/// let dir = std::env::temp_dir().join(format!("tideline-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("readings.csv");
/// std::fs::write(&path, "event_time_ms,sensor,value\n1000,a,5\n2000,b,oops\n3000,a,7\n").unwrap();
///
/// let files = FileSource::<Reading>::csv([&path]).time_field("event_time_ms").build().unwrap();
/// let dead = tideline::runtime::collect(2, move |scope| files.read(scope, SourceConfig::new("readings")).dead_letters);
/// assert_eq!(dead.len(), 1);
/// assert_eq!(dead[0].0.position, 3);
/// assert!(dead[0].0.reason.contains("value"));
/// ```
pub struct FileSource<D> {
    inner: Arc<Inner<D>>,
}

impl<D> Clone for FileSource<D> {
    fn clone(&self) -> Self {
        FileSource { inner: Arc::clone(&self.inner) }
    }
}

struct FileInfo {
    path: PathBuf,
    size: u64,
    headers: Option<ByteRecord>,
    time_column: Option<usize>,
}

struct Inner<D> {
    files: Vec<FileInfo>,
    format: Format,
    time_field: Option<String>,
    event_time: TimeFn<D>,
    split: bool,
    _marker: PhantomData<fn() -> D>,
}

impl<D: EventTime> FileSource<D> {
    /// CSV files with a header line and `,` as the delimiter.
    pub fn csv<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> FileSourceBuilder<D> {
        FileSourceBuilder::new(paths, Format::csv())
    }

    /// JSON Lines files: one JSON object per line.
    pub fn json_lines<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> FileSourceBuilder<D> {
        FileSourceBuilder::new(paths, Format::JsonLines)
    }
}

impl<D: EventTime> FileSourceBuilder<D> {
    fn new<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>, format: Format) -> Self {
        FileSourceBuilder {
            paths: paths.into_iter().map(|p| p.as_ref().to_path_buf()).collect(),
            format,
            time_field: None,
            required: Vec::new(),
            event_time: Arc::new(|record: &D| record.event_time()),
            split: true,
        }
    }
}

impl<D> FileSourceBuilder<D> {
    /// Sets the format (e.g. another CSV delimiter, or no header line).
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// The column (CSV) or field (JSON) holding the event time as integer milliseconds: the
    /// same time the record's event-time function returns. Lets large files be split across
    /// workers without changing results.
    pub fn time_field(mut self, name: impl Into<String>) -> Self {
        self.time_field = Some(name.into());
        self
    }

    /// CSV columns that must be present in every file's header; `build()` fails otherwise.
    pub fn require_columns<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.required = columns.into_iter().map(Into::into).collect();
        self
    }

    /// Overrides how a record's event time is read (default: [`EventTime`]).
    pub fn event_time(mut self, f: impl Fn(&D) -> Time + Send + Sync + 'static) -> Self {
        self.event_time = Arc::new(f);
        self
    }

    /// Whether large files may be split across workers (default: yes, when possible).
    pub fn split(mut self, split: bool) -> Self {
        self.split = split;
        self
    }

    /// Checks that every file exists and is readable and, for CSV with headers, that its
    /// header has the required columns and the time field.
    pub fn build(self) -> Result<FileSource<D>, FileError> {
        if self.paths.is_empty() {
            return Err(FileError::NoFiles);
        }
        let mut files = Vec::new();
        for path in self.paths {
            let file = File::open(&path).map_err(|e| FileError::io(&path, e))?;
            let metadata = file.metadata().map_err(|e| FileError::io(&path, e))?;
            if metadata.is_dir() {
                return Err(FileError::IsDirectory { path });
            }
            let (mut headers, mut time_column) = (None, None);
            if let Format::Csv { delimiter, has_headers: true } = self.format {
                let mut first = Vec::new();
                BufReader::new(file).read_until(b'\n', &mut first).map_err(|e| FileError::io(&path, e))?;
                if first.is_empty() {
                    return Err(FileError::MissingHeader { path });
                }
                let mut record = ByteRecord::new();
                split_csv_line(trim_newline(&first), delimiter, &mut record, &mut Vec::new())
                    .map_err(|reason| FileError::BadHeader { path: path.clone(), reason })?;
                let names: Vec<String> = record.iter().map(|f| String::from_utf8_lossy(f).trim().to_string()).collect();
                let mut wanted: Vec<&String> = self.required.iter().collect();
                wanted.extend(self.time_field.as_ref());
                for column in wanted {
                    if !names.iter().any(|n| n == column) {
                        return Err(FileError::MissingColumn { path, column: column.clone(), header: names });
                    }
                }
                time_column = self.time_field.as_ref().and_then(|t| names.iter().position(|n| n == t));
                headers = Some(ByteRecord::from(names));
            }
            files.push(FileInfo { path, size: metadata.len(), headers, time_column });
        }
        Ok(FileSource {
            inner: Arc::new(Inner {
                files,
                format: self.format,
                time_field: self.time_field,
                event_time: self.event_time,
                split: self.split,
                _marker: PhantomData,
            }),
        })
    }
}

impl<D> FileSource<D>
where
    D: DeserializeOwned + Clone + 'static,
{
    /// The files, in partition order (file `i` is partition `i`).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.inner.files.iter().map(|f| f.path.as_path())
    }

    /// The total size of the files in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.inner.files.iter().map(|f| f.size).sum()
    }

    /// Reads the files in `scope` as a watermarked source.
    pub fn read<'scope>(&self, scope: Scope<'scope, Time>, config: SourceConfig) -> SourceStreams<'scope, D> {
        let inner = Arc::clone(&self.inner);
        let splittable = inner.split
            && config.watermarks.out_of_orderness_ms().is_some()
            && (inner.time_field.is_some()
                && (inner.format == Format::JsonLines || inner.files.iter().all(|f| f.time_column.is_some())));
        source(scope, config, move |setup: &SourceSetup<'_>| FileReader::new(inner, setup, splittable))
    }
}

/// Per-range facts from the first pass: lines in the range, largest event time.
type RangeStats = (usize, usize, u64, Option<Time>);

struct Range {
    file: usize,
    start: u64,
    end: u64,
}

struct OpenRange {
    file: usize,
    reader: BufReader<File>,
    offset: u64,
    end: u64,
    line: u64,
}

enum Phase {
    /// First pass (split files only): line counts and largest event times of own ranges.
    Scan { next: usize, stats: Vec<(u64, Option<Time>)> },
    /// Waiting for every worker's first-pass results.
    Wait,
    /// Opening own ranges and announcing their partitions.
    Start,
    /// Reading records.
    Read,
}

struct FileReader<D> {
    inner: Arc<Inner<D>>,
    ranges: Vec<Range>,
    peers: usize,
    index: usize,
    split: bool,
    channel: Option<Broadcast<RangeStats>>,
    received: BTreeMap<(usize, usize), (u64, Option<Time>)>,
    phase: Phase,
    open: Vec<OpenRange>,
    next_open: usize,
    buffer: Vec<u8>,
    record: ByteRecord,
    scratch: Vec<u8>,
    error: Option<FileError>,
}

impl<D: DeserializeOwned + 'static> FileReader<D> {
    fn new(inner: Arc<Inner<D>>, setup: &SourceSetup<'_>, split: bool) -> Self {
        let (index, peers) = (setup.index(), setup.peers());
        let split = split && peers > 1;
        let ranges = if split {
            inner
                .files
                .iter()
                .enumerate()
                .map(|(file, info)| {
                    let (start, end) = byte_range(info.size, index, peers);
                    Range { file, start, end }
                })
                .collect()
        } else {
            inner
                .files
                .iter()
                .enumerate()
                .filter(|(file, _)| file % peers == index)
                .map(|(file, info)| Range { file, start: 0, end: info.size })
                .collect()
        };
        FileReader {
            channel: split.then(|| setup.broadcast()),
            phase: if split { Phase::Scan { next: 0, stats: Vec::new() } } else { Phase::Start },
            inner,
            ranges,
            peers,
            index,
            split,
            received: BTreeMap::new(),
            open: Vec::new(),
            next_open: 0,
            buffer: Vec::new(),
            record: ByteRecord::new(),
            scratch: Vec::new(),
            error: None,
        }
    }

    /// Opens a range positioned at its first line start.
    fn open(&self, range: &Range, first_line: u64) -> Result<OpenRange, FileError> {
        let info = &self.inner.files[range.file];
        let file = File::open(&info.path).map_err(|e| FileError::io(&info.path, e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut offset = range.start;
        if range.start > 0 {
            // Skip the line that straddles the range's start: it belongs to the previous range.
            reader.seek(SeekFrom::Start(range.start - 1)).map_err(|e| FileError::io(&info.path, e))?;
            let mut skipped = Vec::new();
            let n = reader.read_until(b'\n', &mut skipped).map_err(|e| FileError::io(&info.path, e))?;
            offset = range.start - 1 + n as u64;
        }
        Ok(OpenRange { file: range.file, reader, offset, end: range.end, line: first_line })
    }

    /// First pass over one range: its line count and largest event time.
    fn scan(&mut self, range: usize) -> Result<(u64, Option<Time>), FileError> {
        let r = &self.ranges[range];
        let mut open = self.open(r, 1)?;
        let inner = Arc::clone(&self.inner);
        let info = &inner.files[r.file];
        let (mut lines, mut max) = (0u64, None::<Time>);
        let mut buffer = Vec::new();
        while open.offset < open.end {
            buffer.clear();
            let n = open.reader.read_until(b'\n', &mut buffer).map_err(|e| FileError::io(&info.path, e))?;
            if n == 0 {
                break;
            }
            let is_header = open.offset == 0 && info.headers.is_some();
            open.offset += n as u64;
            lines += 1;
            if is_header {
                continue;
            }
            if let Some(time) = self.scan_time(info, trim_newline(&buffer)) {
                max = Some(max.map_or(time, |m: Time| m.max(time)));
            }
        }
        Ok((lines, max))
    }

    fn scan_time(&mut self, info: &FileInfo, line: &[u8]) -> Option<Time> {
        match self.inner.format {
            Format::Csv { delimiter, .. } => {
                split_csv_line(line, delimiter, &mut self.record, &mut self.scratch).ok()?;
                let field = self.record.get(info.time_column?)?;
                std::str::from_utf8(field).ok()?.trim().parse().ok()
            }
            Format::JsonLines => {
                let value: serde_json::Value = serde_json::from_slice(line).ok()?;
                value.get(self.inner.time_field.as_deref()?)?.as_u64()
            }
        }
    }

    fn decode(&mut self, file: usize, line: &[u8]) -> Result<D, String> {
        match self.inner.format {
            Format::Csv { delimiter, .. } => {
                split_csv_line(line, delimiter, &mut self.record, &mut self.scratch)?;
                let headers = self.inner.files[file].headers.as_ref();
                if let Some(headers) = headers
                    && headers.len() != self.record.len()
                {
                    return Err(format!("expected {} fields, found {}", headers.len(), self.record.len()));
                }
                self.record.deserialize::<D>(headers).map_err(|e| describe_csv_error(&e, headers))
            }
            Format::JsonLines => serde_json::from_slice(line).map_err(|e| e.to_string()),
        }
    }

    fn start_reading(&mut self, ctx: &mut ReadContext<'_, D>) -> Result<(), FileError> {
        for i in 0..self.ranges.len() {
            let range = &self.ranges[i];
            let (first_line, prefix_max) = if self.split {
                let earlier = (0..self.index).map(|k| self.received[&(range.file, k)]);
                let lines: u64 = earlier.clone().map(|(l, _)| l).sum();
                (1 + lines, earlier.filter_map(|(_, m)| m).max())
            } else {
                (1, None)
            };
            let generator = ctx.strategy().generator_after(prefix_max);
            ctx.add_partition_with(range.file as PartitionId, generator);
            let open = self.open(range, first_line)?;
            tracing::debug!(
                file = %self.inner.files[range.file].path.display(),
                worker = self.index,
                start = range.start,
                end = range.end,
                first_line,
                "reading a file range"
            );
            self.open.push(open);
        }
        Ok(())
    }

    fn read(&mut self, ctx: &mut ReadContext<'_, D>) -> Result<ReadStatus, FileError> {
        if self.open.is_empty() {
            return Ok(ReadStatus::Done);
        }
        let share = (ctx.budget() / self.open.len()).max(1);
        let mut closed = Vec::new();
        for _ in 0..self.open.len() {
            let slot = self.next_open % self.open.len();
            self.next_open += 1;
            for _ in 0..share {
                let open = &mut self.open[slot];
                if open.offset >= open.end {
                    closed.push(slot);
                    break;
                }
                let path = &self.inner.files[open.file].path;
                self.buffer.clear();
                let n = open.reader.read_until(b'\n', &mut self.buffer).map_err(|e| FileError::io(path, e))?;
                if n == 0 {
                    closed.push(slot);
                    break;
                }
                let (file, line, at_start) = (open.file, open.line, open.offset == 0);
                open.offset += n as u64;
                open.line += 1;
                if at_start && self.inner.files[file].headers.is_some() {
                    continue;
                }
                let mut buffer = std::mem::take(&mut self.buffer);
                let text = trim_newline(&buffer);
                if !text.iter().all(u8::is_ascii_whitespace) {
                    match self.decode(file, text) {
                        Ok(record) => {
                            let time = (self.inner.event_time)(&record);
                            ctx.record(file as PartitionId, line, time, record);
                        }
                        Err(reason) => ctx.dead_letter(DeadLetter {
                            source: self.inner.files[file].path.display().to_string(),
                            partition: file as PartitionId,
                            position: line,
                            key: None,
                            payload: text.to_vec(),
                            reason,
                        }),
                    }
                }
                buffer.clear();
                self.buffer = buffer;
            }
        }
        closed.sort_unstable();
        closed.dedup();
        for slot in closed.into_iter().rev() {
            let open = self.open.remove(slot);
            tracing::debug!(
                file = %self.inner.files[open.file].path.display(),
                worker = self.index,
                last_line = open.line - 1,
                "finished a file range"
            );
            ctx.finish_partition(open.file as PartitionId);
        }
        Ok(if self.open.is_empty() { ReadStatus::Done } else { ReadStatus::Busy })
    }

    fn step(&mut self, ctx: &mut ReadContext<'_, D>) -> Result<ReadStatus, FileError> {
        loop {
            match &mut self.phase {
                Phase::Scan { next, stats } => {
                    if *next < self.ranges.len() {
                        let range = *next;
                        *next += 1;
                        let result = self.scan(range)?;
                        if let Phase::Scan { stats, .. } = &mut self.phase {
                            stats.push(result);
                        }
                        return Ok(ReadStatus::Busy);
                    }
                    let channel = self.channel.as_mut().expect("split sources have a channel");
                    for (range, (lines, max)) in self.ranges.iter().zip(stats.iter()) {
                        channel.send((range.file, self.index, *lines, *max));
                    }
                    self.phase = Phase::Wait;
                }
                Phase::Wait => {
                    let channel = self.channel.as_mut().expect("split sources have a channel");
                    while let Some((file, range, lines, max)) = channel.recv() {
                        self.received.insert((file, range), (lines, max));
                    }
                    if self.received.len() < self.inner.files.len() * self.peers {
                        return Ok(ReadStatus::Waiting(Duration::from_millis(1)));
                    }
                    self.phase = Phase::Start;
                }
                Phase::Start => {
                    self.start_reading(ctx)?;
                    self.phase = Phase::Read;
                }
                Phase::Read => return self.read(ctx),
            }
        }
    }
}

impl<D: DeserializeOwned + 'static> SourceReader for FileReader<D> {
    type Item = D;

    fn poll(&mut self, ctx: &mut ReadContext<'_, D>) -> ReadStatus {
        if self.error.is_some() {
            return ReadStatus::Done;
        }
        match self.step(ctx) {
            Ok(status) => status,
            Err(error) => {
                // An I/O error mid-file: the source stops, and says why in its metrics.
                ctx.fail(format!("reading stopped: {error}"));
                self.error = Some(error);
                ReadStatus::Done
            }
        }
    }
}

/// The byte range of worker `index` out of `peers` in a file of `size` bytes.
fn byte_range(size: u64, index: usize, peers: usize) -> (u64, u64) {
    let (index, peers) = (index as u64, peers as u64);
    (size * index / peers, size * (index + 1) / peers)
}

fn describe_csv_error(error: &csv::Error, headers: Option<&ByteRecord>) -> String {
    if let csv::ErrorKind::Deserialize { err, .. } = error.kind() {
        let column = err.field().and_then(|f| {
            headers.and_then(|h| h.get(f as usize)).map(|name| String::from_utf8_lossy(name).into_owned())
        });
        match column {
            Some(name) => format!("column {name:?}: {}", err.kind()),
            None => err.kind().to_string(),
        }
    } else {
        error.to_string()
    }
}
