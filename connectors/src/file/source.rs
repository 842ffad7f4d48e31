//! The file source.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::Duration;

use csv::ByteRecord;
use serde::de::DeserializeOwned;
use tideline::runtime::control::Broadcast;
use tideline::source::{ReadContext, ReadStatus, SourceConfig, SourceReader, SourceSetup, SourceStreams, source};
use tideline::time::late::DeadLetter;
use tideline::time::watermark::PartitionId;
use tideline::timely::dataflow::Scope;
use tideline::{EventTime, Time};

use crate::file::FileError;
use crate::file::{Format, split_csv_line, trim_newline};

type TimeFn<D> = Arc<dyn Fn(&D) -> Time + Send + Sync>;

/// How much of a split file a worker reads at a time, by default.
const DEFAULT_CHUNK_BYTES: u64 = 256 * 1024;

/// How many of its chunks a worker decodes before the one it is emitting is done (the chunk
/// being emitted included). Bounds how far workers drift apart: see [`FileSource`].
const CHUNKS_AHEAD: usize = 2;

/// Lines a stream's reading thread hands over at once (fewer when no more input is ready).
const STREAM_BATCH: usize = 4096;

/// A UTF-8 byte order mark, stripped from the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Configures a [`FileSource`]; `build()` checks the files and their headers.
pub struct FileSourceBuilder<D> {
    paths: Vec<PathBuf>,
    format: Format,
    time_field: Option<String>,
    required: Vec<String>,
    event_time: TimeFn<D>,
    split: bool,
    chunk_bytes: u64,
}

/// A watermarked source over CSV or JSON Lines files, or standard input.
///
/// Each file is a partition: one ordered stream with its own watermark. Lateness and results
/// are always exactly those of reading each file from start to end, whatever the number of
/// workers and processes.
///
/// # Splitting a file across workers
///
/// With a bounded-out-of-orderness watermark strategy (`W = max seen - D`, a function of the
/// running maximum of event times) a regular file is read by all workers together, in
/// *interleaved chunks* of [`chunk_bytes`](FileSourceBuilder::chunk_bytes) (256 KiB): worker
/// `k` of `N` reads chunks `k, k + N, k + 2N, …` (shifted by the file's index). A worker
/// decodes a chunk, tells every worker its line count and largest event time, and emits its
/// records once it knows those of every chunk before it: the chunk then starts with exactly
/// the watermark and line number that reading the file in order would give at that point.
/// Each worker decodes at most one chunk ahead of the one it emits, so a worker can be at
/// most about two rounds of `N` chunks ahead of the slowest: the workers stay near the same
/// event time, and what downstream operators hold waiting for the slowest worker stays
/// bounded by a few chunks, not by the file. Other watermark strategies read file `i` whole
/// on worker `i % N`.
///
/// # Streams
///
/// `-` is standard input; a path that is not a regular file (a pipe such as `/dev/stdin` or
/// `<(command)`, a FIFO, a device) is a stream. A stream is read once, from start to end, by
/// one worker (file `i` by worker `i % N`), on a thread of its own, so a slow producer never
/// blocks the dataflow: records are emitted as lines arrive, and the watermark moves with
/// them (an unbounded input: windows close while it is read). Its header is checked when it
/// arrives; a missing column stops the source with an error in its metrics.
///
/// # Bad lines
///
/// A line that fails to decode (wrong field count, a bad number, broken JSON, invalid
/// UTF-8) becomes a [`DeadLetter`] with the file, its line number, the raw line and the
/// reason, and is counted; reading goes on. Empty lines are skipped. A UTF-8 byte order mark
/// before the first line is ignored.
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

/// What a file is to the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A regular file of this many bytes: seekable, can be split.
    Regular(u64),
    /// Standard input (`-`) or anything that is not a regular file: read once, in order.
    Stream,
}

struct FileInfo {
    path: PathBuf,
    kind: Kind,
    /// The CSV header, read by `build()` for regular files (streams: when it arrives).
    headers: Option<ByteRecord>,
}

struct Inner<D> {
    files: Vec<FileInfo>,
    format: Format,
    required: Vec<String>,
    event_time: TimeFn<D>,
    split: bool,
    chunk_bytes: u64,
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
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        }
    }
}

impl<D> FileSourceBuilder<D> {
    /// Sets the format (e.g. another CSV delimiter, or no header line).
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// The CSV column holding the event time: `build()` checks that every file's header has
    /// it. (Splitting a file across workers does not need it: workers share the event times
    /// of the records they decode.)
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

    /// Whether regular files may be split across workers (default: yes, with a
    /// bounded-out-of-orderness watermark strategy).
    pub fn split(mut self, split: bool) -> Self {
        self.split = split;
        self
    }

    /// How many bytes of a split file a worker reads at a time (default 256 KiB, at least
    /// 1). Smaller chunks keep workers closer in event time, at more coordination per byte.
    pub fn chunk_bytes(mut self, bytes: u64) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
    }

    /// Checks that every regular file exists and is readable and, for CSV with headers, that
    /// its header has the required columns and the time field. Streams (`-`, pipes, FIFOs)
    /// are not opened here: reading them would consume them.
    pub fn build(self) -> Result<FileSource<D>, FileError> {
        if self.paths.is_empty() {
            return Err(FileError::NoFiles);
        }
        let mut required = self.required.clone();
        required.extend(self.time_field.iter().filter(|t| !self.required.contains(t)).cloned());
        let mut files = Vec::new();
        for path in self.paths {
            if is_stdin(&path) {
                files.push(FileInfo { path, kind: Kind::Stream, headers: None });
                continue;
            }
            let metadata = std::fs::metadata(&path).map_err(|e| FileError::io(&path, e))?;
            if metadata.is_dir() {
                return Err(FileError::IsDirectory { path });
            }
            if !metadata.is_file() {
                files.push(FileInfo { path, kind: Kind::Stream, headers: None });
                continue;
            }
            let file = File::open(&path).map_err(|e| FileError::io(&path, e))?;
            let mut headers = None;
            if let Format::Csv { delimiter, has_headers: true } = self.format {
                let mut first = Vec::new();
                BufReader::new(file).read_until(b'\n', &mut first).map_err(|e| FileError::io(&path, e))?;
                let names = header_names(strip_bom(&first), delimiter, &required)
                    .map_err(|message| FileError::Format { path: path.clone(), message })?;
                headers = Some(names);
            }
            files.push(FileInfo { path, kind: Kind::Regular(metadata.len()), headers });
        }
        Ok(FileSource {
            inner: Arc::new(Inner {
                files,
                format: self.format,
                required,
                event_time: self.event_time,
                split: self.split,
                chunk_bytes: self.chunk_bytes,
                _marker: PhantomData,
            }),
        })
    }
}

/// Whether `path` names standard input.
fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Removes a UTF-8 byte order mark from the start of a file's first line.
fn strip_bom(line: &[u8]) -> &[u8] {
    line.strip_prefix(BOM).unwrap_or(line)
}

/// Parses a CSV header line and checks that it names every `required` column.
fn header_names(line: &[u8], delimiter: u8, required: &[String]) -> Result<ByteRecord, String> {
    if line.is_empty() {
        return Err("is empty: expected a CSV header line naming the columns".into());
    }
    let mut record = ByteRecord::new();
    split_csv_line(trim_newline(line), delimiter, &mut record, &mut Vec::new())
        .map_err(|reason| format!("bad header line: {reason}"))?;
    let names: Vec<String> = record.iter().map(|f| String::from_utf8_lossy(f).trim().to_string()).collect();
    for column in required {
        if !names.iter().any(|n| n == column) {
            return Err(format!("header {names:?} has no column {column:?}"));
        }
    }
    Ok(ByteRecord::from(names))
}

impl<D> FileSource<D>
where
    D: DeserializeOwned + Clone + 'static,
{
    /// The files, in partition order (file `i` is partition `i`; `-` is standard input).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.inner.files.iter().map(|f| f.path.as_path())
    }

    /// The total size of the regular files in bytes (streams count 0).
    pub fn total_bytes(&self) -> u64 {
        self.inner
            .files
            .iter()
            .map(|f| match f.kind {
                Kind::Regular(size) => size,
                Kind::Stream => 0,
            })
            .sum()
    }

    /// Reads the files in `scope` as a watermarked source.
    pub fn read<'scope>(&self, scope: Scope<'scope, Time>, config: SourceConfig) -> SourceStreams<'scope, D> {
        let inner = Arc::clone(&self.inner);
        let splittable = inner.split && config.watermarks.out_of_orderness_ms().is_some();
        source(scope, config, move |setup: &SourceSetup<'_>| FileReader::new(inner, setup, splittable))
    }
}

/// A chunk's summary, sent to every worker: `(file, chunk, lines, largest event time)`.
type ChunkSummary = (usize, usize, u64, Option<Time>);

/// A decoded line of a chunk or stream: its line number within the chunk (from 0) and what
/// it became.
enum Item<D> {
    Record { line: u64, time: Time, record: D },
    Dead { line: u64, payload: Vec<u8>, reason: String },
}

/// A chunk this worker decoded, waiting to be emitted.
struct Decoded<D> {
    chunk: usize,
    items: VecDeque<Item<D>>,
    /// Whether its first record was emitted (and the watermark set for it).
    started: bool,
    /// Where it starts in the file — known once every earlier chunk's summary has arrived:
    /// `(line number of its first line, largest event time before it)`.
    start: Option<(u64, Option<Time>)>,
}

/// A worker's share of a split file: the chunks it owns, decoded a little ahead.
struct Split<D> {
    file: usize,
    reader: Option<BufReader<File>>,
    /// Own chunks not yet decoded, in order.
    own: VecDeque<usize>,
    /// Own chunks decoded and not yet fully emitted, in order (at most [`CHUNKS_AHEAD`]).
    decoded: VecDeque<Decoded<D>>,
    /// Summaries received of chunks past `next`.
    summaries: BTreeMap<usize, (u64, Option<Time>)>,
    /// The first chunk whose summary has not been folded into `lines` and `max`.
    next: usize,
    /// Lines in chunks `0..next`.
    lines: u64,
    /// Largest event time in chunks `0..next`.
    max: Option<Time>,
    /// Where own chunks start, recorded while folding summaries.
    starts: BTreeMap<usize, (u64, Option<Time>)>,
    /// How many chunks the file has.
    chunks: usize,
}

/// A file read whole by this worker: a regular file from its start, or a stream through its
/// reading thread.
struct Whole {
    file: usize,
    source: WholeSource,
    line: u64,
    /// Where the next line starts in the file.
    offset: u64,
    /// The largest event time read so far.
    max: Option<Time>,
    /// The next chunk boundary a line start has not passed yet (see [`Mark`]).
    next_chunk: u64,
    /// Restored from a checkpoint: where reading starts.
    resume: Option<Mark>,
}

/// A place a file can be read again from, for checkpoints: the first line of chunk `chunk`
/// (the first line starting at or after `chunk × chunk_bytes`, as a split read defines it),
/// its line number, and the largest event time before it — which restores the watermark
/// there. Every record before it was given at a dataflow time of at most `max_before`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Mark {
    chunk: u64,
    line: u64,
    max_before: Option<Time>,
}

impl Mark {
    const START: Mark = Mark { chunk: 0, line: 1, max_before: None };
}

/// A file reader's part of a checkpoint: per file it reads, where to read again.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ReaderCheckpoint {
    chunk_bytes: u64,
    /// `(file index, path, size, mark)`.
    files: Vec<(usize, PathBuf, u64, Mark)>,
}

enum WholeSource {
    /// A regular file, opened at the first poll.
    File(Option<BufReader<File>>),
    Stream {
        lines: Option<Receiver<StreamBatch>>,
        idle_polls: u32,
    },
}

/// What a stream's reading thread sends: lines (with their newlines), or why it stopped.
type StreamBatch = Result<Vec<Vec<u8>>, String>;

struct FileReader<D> {
    inner: Arc<Inner<D>>,
    splits: Vec<Split<D>>,
    wholes: Vec<Whole>,
    /// Whether this worker has announced its partitions.
    started: bool,
    channel: Option<Broadcast<ChunkSummary>>,
    /// Per file: its CSV header (streams: once read).
    headers: Vec<Option<ByteRecord>>,
    record: ByteRecord,
    scratch: Vec<u8>,
    buffer: Vec<u8>,
    next_turn: usize,
    error: Option<FileError>,
    /// Per file, the places it can be read again from, oldest first (see [`Mark`]); the files
    /// this worker reads (whole, or its share of a split) are `mine`.
    marks: Vec<VecDeque<Mark>>,
    mine: Vec<bool>,
}

impl<D: DeserializeOwned + 'static> FileReader<D> {
    fn new(inner: Arc<Inner<D>>, setup: &SourceSetup<'_>, splittable: bool) -> Self {
        let (index, peers) = (setup.index(), setup.peers());
        let split_file = |info: &FileInfo| splittable && peers > 1 && matches!(info.kind, Kind::Regular(_));
        let mut splits = Vec::new();
        let mut wholes = Vec::new();
        for (file, info) in inner.files.iter().enumerate() {
            if split_file(info) {
                let Kind::Regular(size) = info.kind else { unreachable!("split files are regular") };
                let chunks = size.div_ceil(inner.chunk_bytes).max(1) as usize;
                let own = (0..chunks).filter(|chunk| (chunk + file) % peers == index).collect();
                splits.push(Split {
                    file,
                    reader: None,
                    own,
                    decoded: VecDeque::new(),
                    summaries: BTreeMap::new(),
                    next: 0,
                    lines: 0,
                    max: None,
                    starts: BTreeMap::new(),
                    chunks,
                });
            } else if file % peers == index {
                let source = match info.kind {
                    Kind::Regular(_) => WholeSource::File(None),
                    Kind::Stream => WholeSource::Stream { lines: None, idle_polls: 0 },
                };
                wholes.push(Whole { file, source, line: 0, offset: 0, max: None, next_chunk: 1, resume: None });
            }
        }
        // Every worker allocates the same channels: whether a file is split does not depend
        // on the worker.
        let any_split = inner.files.iter().any(split_file);
        let mut mine = vec![false; inner.files.len()];
        for file in splits.iter().map(|s| s.file).chain(wholes.iter().map(|w| w.file)) {
            mine[file] = true;
        }
        FileReader {
            marks: vec![VecDeque::from([Mark::START]); inner.files.len()],
            mine,
            channel: any_split.then(|| setup.broadcast()),
            headers: inner.files.iter().map(|f| f.headers.clone()).collect(),
            inner,
            splits,
            wholes,
            started: false,
            record: ByteRecord::new(),
            scratch: Vec::new(),
            buffer: Vec::new(),
            next_turn: 0,
            error: None,
        }
    }
}

/// What one line became, before it is numbered.
enum Line<D> {
    Skip,
    Record(Time, D),
    Dead(Vec<u8>, String),
}

impl<D: DeserializeOwned + 'static> FileReader<D> {
    fn decode(&mut self, file: usize, line: &[u8]) -> Result<D, String> {
        match self.inner.format {
            Format::Csv { delimiter, .. } => {
                split_csv_line(line, delimiter, &mut self.record, &mut self.scratch)?;
                let headers = self.headers[file].as_ref();
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

    /// Decodes one raw line (with its newline) that is line `number` of `file` (from 1).
    /// The first line loses a byte order mark, and is the header of a CSV file with headers:
    /// a stream's header is checked here.
    fn decode_line(&mut self, file: usize, number: u64, raw: &[u8]) -> Result<Line<D>, FileError> {
        let mut text = trim_newline(raw);
        if number == 1 {
            text = strip_bom(text);
            if let Format::Csv { delimiter, has_headers: true } = self.inner.format {
                if self.headers[file].is_none() {
                    let names = header_names(text, delimiter, &self.inner.required)
                        .map_err(|message| FileError::Format { path: self.inner.files[file].path.clone(), message })?;
                    self.headers[file] = Some(names);
                }
                return Ok(Line::Skip);
            }
        }
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(Line::Skip);
        }
        Ok(match self.decode(file, text) {
            Ok(record) => Line::Record((self.inner.event_time)(&record), record),
            Err(reason) => Line::Dead(text.to_vec(), reason),
        })
    }

    fn dead_letter(&self, file: usize, position: u64, payload: Vec<u8>, reason: String) -> DeadLetter {
        DeadLetter {
            source: self.inner.files[file].path.display().to_string(),
            partition: file as PartitionId,
            position,
            key: None,
            payload,
            reason,
        }
    }

    fn start(&mut self, ctx: &mut ReadContext<'_, D>) {
        for split in &self.splits {
            ctx.add_partition(split.file as PartitionId);
            if split.own.is_empty() {
                ctx.finish_partition(split.file as PartitionId);
            }
        }
        for whole in &self.wholes {
            ctx.add_partition(whole.file as PartitionId);
            if let Some(max_before) = whole.resume.and_then(|m| m.max_before) {
                // Restored: the watermark where reading resumes.
                ctx.observe(whole.file as PartitionId, max_before);
            }
        }
        self.started = true;
    }

    /// Decodes the chunk `chunk` of split `s` and tells every worker its summary.
    fn decode_chunk(&mut self, s: usize, chunk: usize) -> Result<(), FileError> {
        let file = self.splits[s].file;
        let info = &self.inner.files[file];
        let path = info.path.clone();
        let Kind::Regular(size) = info.kind else { unreachable!("split files are regular") };
        let chunk_bytes = self.inner.chunk_bytes;
        let (start, end) = (chunk as u64 * chunk_bytes, ((chunk as u64 + 1) * chunk_bytes).min(size));
        let io = |e| FileError::io(&path, e);
        let mut reader = match self.splits[s].reader.take() {
            Some(reader) => reader,
            None => BufReader::with_capacity(1 << 18, File::open(&path).map_err(io)?),
        };
        let mut offset = start;
        if start > 0 {
            // Skip the line that straddles the chunk's start: it belongs to the chunk before.
            reader.seek(SeekFrom::Start(start - 1)).map_err(io)?;
            let mut skipped = Vec::new();
            offset = start - 1 + reader.read_until(b'\n', &mut skipped).map_err(io)? as u64;
        } else {
            reader.seek(SeekFrom::Start(0)).map_err(io)?;
        }
        let (mut lines, mut max) = (0u64, None::<Time>);
        let mut items = VecDeque::new();
        let mut buffer = std::mem::take(&mut self.buffer);
        while offset < end {
            buffer.clear();
            let n = reader.read_until(b'\n', &mut buffer).map_err(io)?;
            if n == 0 {
                break;
            }
            // Line numbers of chunk 0 are known: its header is line 1.
            let number = if offset == 0 { 1 } else { 2 };
            offset += n as u64;
            match self.decode_line(file, number, &buffer)? {
                Line::Skip => {}
                Line::Record(time, record) => {
                    max = Some(max.map_or(time, |m| m.max(time)));
                    items.push_back(Item::Record { line: lines, time, record });
                }
                Line::Dead(payload, reason) => items.push_back(Item::Dead { line: lines, payload, reason }),
            }
            lines += 1;
        }
        self.buffer = buffer;
        let split = &mut self.splits[s];
        split.reader = Some(reader);
        let start = split.starts.get(&chunk).copied();
        split.decoded.push_back(Decoded { chunk, items, started: false, start });
        let channel = self.channel.as_mut().expect("split files have a channel");
        channel.send((file, chunk, lines, max));
        Ok(())
    }

    /// Takes in the summaries that arrived and folds those now contiguous from chunk 0.
    fn receive(&mut self) {
        let Some(channel) = self.channel.as_mut() else { return };
        while let Some((file, chunk, lines, max)) = channel.recv() {
            if let Some(split) = self.splits.iter_mut().find(|s| s.file == file) {
                split.summaries.insert(chunk, (lines, max));
            }
        }
        for split in &mut self.splits {
            while let Some((lines, max)) = split.summaries.remove(&split.next) {
                let start = (1 + split.lines, split.max);
                let marks = &mut self.marks[split.file];
                if marks.back().is_none_or(|m| m.chunk < split.next as u64) {
                    marks.push_back(Mark { chunk: split.next as u64, line: start.0, max_before: start.1 });
                }
                if let Some(decoded) = split.decoded.iter_mut().find(|d| d.chunk == split.next) {
                    decoded.start = Some(start);
                }
                if split.own.contains(&split.next) {
                    split.starts.insert(split.next, start);
                }
                split.lines += lines;
                split.max = match (split.max, max) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                split.next += 1;
                if split.next == split.chunks {
                    // The end of the file: everything in it is before this mark.
                    marks.push_back(Mark { chunk: split.chunks as u64, line: 1 + split.lines, max_before: split.max });
                }
            }
        }
    }

    /// Emits what split `s` can: the decoded chunks whose start is known, in order. Returns
    /// whether anything was emitted.
    fn emit_split(&mut self, s: usize, ctx: &mut ReadContext<'_, D>) -> bool {
        let mut progress = false;
        let file = self.splits[s].file;
        let partition = file as PartitionId;
        while ctx.budget() > 0 {
            let Some(head) = self.splits[s].decoded.front_mut() else { break };
            let Some((first_line, max_before)) = head.start else { break };
            if !head.started {
                // The chunk starts with the watermark of the lines before it.
                head.started = true;
                if let Some(max_before) = max_before {
                    ctx.observe(partition, max_before);
                }
            }
            match head.items.pop_front() {
                Some(Item::Record { line, time, record }) => {
                    ctx.record(partition, first_line + line, time, record);
                    progress = true;
                }
                Some(Item::Dead { line, payload, reason }) => {
                    let letter = self.dead_letter(file, first_line + line, payload, reason);
                    ctx.dead_letter(letter);
                    progress = true;
                }
                None => {
                    let split = &mut self.splits[s];
                    split.decoded.pop_front();
                    progress = true;
                    if split.own.is_empty() && split.decoded.is_empty() {
                        ctx.finish_partition(partition);
                    }
                }
            }
        }
        progress
    }

    /// One turn of split `s`: emit what can be emitted, decode the next own chunk if there is
    /// room. Returns whether anything happened.
    fn step_split(&mut self, s: usize, ctx: &mut ReadContext<'_, D>) -> Result<bool, FileError> {
        let mut progress = self.emit_split(s, ctx);
        let split = &mut self.splits[s];
        if split.decoded.len() < CHUNKS_AHEAD
            && let Some(chunk) = split.own.pop_front()
        {
            self.decode_chunk(s, chunk)?;
            self.receive();
            self.emit_split(s, ctx);
            progress = true;
        }
        Ok(progress)
    }

    fn split_done(&self, s: usize) -> bool {
        self.splits[s].own.is_empty() && self.splits[s].decoded.is_empty()
    }

    /// Reads up to the budget of whole file `w`. Returns `(progress, done)`.
    fn step_whole(&mut self, w: usize, ctx: &mut ReadContext<'_, D>) -> Result<(bool, bool), FileError> {
        let file = self.wholes[w].file;
        let path = self.inner.files[file].path.clone();
        let mut source = std::mem::replace(&mut self.wholes[w].source, WholeSource::File(None));
        let result = self.read_whole(w, &path, &mut source, ctx);
        self.wholes[w].source = source;
        let (progress, done) = result?;
        if done {
            if self.wholes[w].line == 0
                && let Format::Csv { has_headers: true, .. } = self.inner.format
            {
                return Err(FileError::Format {
                    path,
                    message: "is empty: expected a CSV header line naming the columns".into(),
                });
            }
            ctx.finish_partition(file as PartitionId);
        }
        Ok((progress, done))
    }

    fn read_whole(
        &mut self,
        w: usize,
        path: &Path,
        source: &mut WholeSource,
        ctx: &mut ReadContext<'_, D>,
    ) -> Result<(bool, bool), FileError> {
        let mut progress = false;
        match source {
            WholeSource::File(reader) => {
                let reader = match reader {
                    Some(reader) => reader,
                    None => {
                        let mut file =
                            BufReader::with_capacity(1 << 20, File::open(path).map_err(|e| FileError::io(path, e))?);
                        if let Some(mark) = self.wholes[w].resume.filter(|m| m.chunk > 0) {
                            // Restored: skip to the first line of the chunk (the line that
                            // straddles its start belongs to the chunk before).
                            let start = mark.chunk * self.inner.chunk_bytes;
                            file.seek(SeekFrom::Start(start - 1)).map_err(|e| FileError::io(path, e))?;
                            let mut skipped = Vec::new();
                            let n = file.read_until(b'\n', &mut skipped).map_err(|e| FileError::io(path, e))?;
                            self.wholes[w].offset = start - 1 + n as u64;
                        }
                        reader.insert(file)
                    }
                };
                let mut buffer = std::mem::take(&mut self.buffer);
                while ctx.budget() > 0 {
                    buffer.clear();
                    if reader.read_until(b'\n', &mut buffer).map_err(|e| FileError::io(path, e))? == 0 {
                        self.buffer = buffer;
                        let whole = &self.wholes[w];
                        if let Kind::Regular(size) = self.inner.files[whole.file].kind {
                            let chunks = size.div_ceil(self.inner.chunk_bytes).max(1);
                            let marks = &mut self.marks[whole.file];
                            if marks.back().is_none_or(|m| m.chunk < chunks) {
                                marks.push_back(Mark { chunk: chunks, line: whole.line + 1, max_before: whole.max });
                            }
                        }
                        return Ok((progress, true));
                    }
                    self.whole_line(w, &buffer, ctx)?;
                    progress = true;
                }
                self.buffer = buffer;
                Ok((progress, false))
            }
            WholeSource::Stream { lines, idle_polls } => {
                let lines = lines.get_or_insert_with(|| read_stream(path.to_path_buf()));
                let mut done = false;
                while ctx.budget() > 0 {
                    match lines.try_recv() {
                        Ok(Ok(batch)) => {
                            for raw in batch {
                                self.whole_line(w, &raw, ctx)?;
                            }
                            progress = true;
                        }
                        Ok(Err(message)) => {
                            return Err(FileError::Format { path: path.to_path_buf(), message });
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            done = true;
                            break;
                        }
                    }
                }
                *idle_polls = if progress { 0 } else { idle_polls.saturating_add(1) };
                Ok((progress, done))
            }
        }
    }

    /// The next line of whole file `w`.
    fn whole_line(&mut self, w: usize, raw: &[u8], ctx: &mut ReadContext<'_, D>) -> Result<(), FileError> {
        let file = self.wholes[w].file;
        let whole = &mut self.wholes[w];
        whole.line += 1;
        let number = whole.line;
        let start = whole.offset;
        whole.offset += raw.len() as u64;
        if start >= whole.next_chunk * self.inner.chunk_bytes {
            // The first line of a chunk: a place to read again from.
            let chunk = start / self.inner.chunk_bytes;
            self.marks[file].push_back(Mark { chunk, line: number, max_before: whole.max });
            whole.next_chunk = chunk + 1;
        }
        match self.decode_line(file, number, raw)? {
            Line::Skip => {}
            Line::Record(time, record) => {
                let whole = &mut self.wholes[w];
                whole.max = Some(whole.max.map_or(time, |m| m.max(time)));
                ctx.record(file as PartitionId, number, time, record);
            }
            Line::Dead(payload, reason) => {
                let letter = self.dead_letter(file, number, payload, reason);
                ctx.dead_letter(letter);
            }
        }
        Ok(())
    }

    /// How long to wait before polling again when nothing happened: streams back off from
    /// 1 ms to 50 ms while their producer is silent.
    fn idle_delay(&self) -> Duration {
        let idle = self
            .wholes
            .iter()
            .filter_map(|w| match w.source {
                WholeSource::Stream { idle_polls, .. } => Some(idle_polls),
                WholeSource::File(_) => None,
            })
            .min();
        match idle {
            Some(polls) => Duration::from_millis((1u64 << polls.min(6)).min(50)),
            // Waiting for other workers' chunk summaries: their arrival schedules the source.
            None => Duration::from_millis(10),
        }
    }

    fn step(&mut self, ctx: &mut ReadContext<'_, D>) -> Result<ReadStatus, FileError> {
        if !self.started {
            self.start(ctx);
        }
        self.receive();
        let mut progress = false;
        let turns = self.splits.len() + self.wholes.len();
        let mut finished = Vec::new();
        for turn in 0..turns {
            if ctx.budget() == 0 {
                break;
            }
            let slot = (self.next_turn + turn) % turns;
            if slot < self.splits.len() {
                progress |= self.step_split(slot, ctx)?;
            } else {
                let (p, done) = self.step_whole(slot - self.splits.len(), ctx)?;
                progress |= p;
                if done {
                    finished.push(slot - self.splits.len());
                }
            }
        }
        self.next_turn = self.next_turn.wrapping_add(1);
        for w in finished.into_iter().rev() {
            self.wholes.remove(w);
        }
        let splits_done = (0..self.splits.len()).all(|s| self.split_done(s));
        Ok(if splits_done && self.wholes.is_empty() {
            ReadStatus::Done
        } else if progress {
            ReadStatus::Busy
        } else {
            ReadStatus::Waiting(self.idle_delay())
        })
    }
}

impl<D: DeserializeOwned + 'static> SourceReader for FileReader<D> {
    type Item = D;

    fn checkpoint(&mut self, replay_from: Time) -> Result<Vec<u8>, String> {
        if let Some(stream) = self.wholes.iter().find(|w| matches!(w.source, WholeSource::Stream { .. })) {
            return Err(format!(
                "{} is a stream: it cannot be read again after a crash (give a regular file)",
                self.inner.files[stream.file].path.display()
            ));
        }
        let mut files = Vec::new();
        for (file, info) in self.inner.files.iter().enumerate() {
            if !self.mine[file] {
                continue;
            }
            let Kind::Regular(size) = info.kind else {
                return Err(format!("{} is a stream: it cannot be read again after a crash", info.path.display()));
            };
            // The latest place before which every record was given below the replay time. A
            // checkpoint asks for two times (its replay time and its snapshot time), and the
            // next one's replay time may lie between them, so marks are kept (one per chunk
            // read, 256 KiB by default: a 1 GB file has 4 000).
            let marks = &self.marks[file];
            let before = |m: &Mark| m.max_before.is_none_or(|t| t < replay_from);
            let after = marks.partition_point(before);
            let mark = marks.get(after.saturating_sub(1)).or(marks.front()).copied().unwrap_or(Mark::START);
            files.push((file, info.path.clone(), size, mark));
        }
        let state = ReaderCheckpoint { chunk_bytes: self.inner.chunk_bytes, files };
        serde_json::to_vec(&state).map_err(|e| e.to_string())
    }

    fn restore(&mut self, parts: &[Vec<u8>]) -> Result<(), String> {
        let mut resume: BTreeMap<usize, Mark> = BTreeMap::new();
        for part in parts {
            let state: ReaderCheckpoint = serde_json::from_slice(part).map_err(|e| e.to_string())?;
            if state.chunk_bytes != self.inner.chunk_bytes {
                return Err(format!(
                    "it was read in chunks of {} bytes, now {}: use the same chunk size",
                    state.chunk_bytes, self.inner.chunk_bytes
                ));
            }
            for (file, path, size, mark) in state.files {
                let Some(info) = self.inner.files.get(file).filter(|info| info.path == path) else {
                    return Err(format!("it read {} as file {file}, which is not an input now", path.display()));
                };
                if info.kind != Kind::Regular(size) {
                    return Err(format!("{} changed since the checkpoint (it had {size} bytes)", path.display()));
                }
                // Workers that share a split file may know more or less of it: any of their
                // marks is a valid place to resume; the latest re-reads least.
                let entry = resume.entry(file).or_insert(mark);
                if mark.chunk > entry.chunk {
                    *entry = mark;
                }
            }
        }
        for (file, info) in self.inner.files.iter().enumerate() {
            if self.mine[file] && !resume.contains_key(&file) {
                return Err(format!("it has no position for {}", info.path.display()));
            }
        }
        for split in &mut self.splits {
            let mark = resume[&split.file];
            split.own.retain(|chunk| *chunk as u64 >= mark.chunk);
            split.next = mark.chunk as usize;
            split.lines = mark.line - 1;
            split.max = mark.max_before;
            self.marks[split.file] = VecDeque::from([mark]);
        }
        for whole in &mut self.wholes {
            let mark = resume[&whole.file];
            whole.line = mark.line - 1;
            whole.max = mark.max_before;
            whole.next_chunk = mark.chunk + 1;
            whole.resume = Some(mark);
            self.marks[whole.file] = VecDeque::from([mark]);
        }
        Ok(())
    }

    fn poll(&mut self, ctx: &mut ReadContext<'_, D>) -> ReadStatus {
        if self.error.is_some() {
            return ReadStatus::Done;
        }
        match self.step(ctx) {
            Ok(status) => status,
            Err(error) => {
                // An I/O error mid-file, or a stream without the required columns: the source
                // stops, and says why in its metrics.
                ctx.fail(format!("reading stopped: {error}"));
                self.error = Some(error);
                ReadStatus::Done
            }
        }
    }
}

/// Reads a stream (standard input for `-`) on a thread of its own, and hands its lines over
/// in batches: as many as are ready, at most [`STREAM_BATCH`]; a batch is sent as soon as
/// reading more would wait for the producer. The channel is bounded, so a slow dataflow
/// slows the reading (and the producer) down instead of buffering the stream.
fn read_stream(path: PathBuf) -> Receiver<StreamBatch> {
    let (send, receive) = sync_channel::<StreamBatch>(16);
    let spawned = std::thread::Builder::new().name(format!("tideline-read {}", path.display())).spawn(move || {
        let input: Box<dyn Read> = if is_stdin(&path) {
            Box::new(std::io::stdin().lock())
        } else {
            match File::open(&path) {
                Ok(file) => Box::new(file),
                Err(e) => {
                    let _ = send.send(Err(e.to_string()));
                    return;
                }
            }
        };
        stream_lines(BufReader::with_capacity(1 << 16, input), &send);
    });
    if let Err(e) = spawned {
        let (send, receive) = sync_channel(1);
        let _ = send.send(Err(format!("cannot start a thread to read it: {e}")));
        return receive;
    }
    receive
}

/// The loop of [`read_stream`]'s thread.
fn stream_lines<R: Read>(mut input: BufReader<R>, send: &SyncSender<StreamBatch>) {
    let mut batch = Vec::new();
    loop {
        let mut line = Vec::new();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => batch.push(line),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = send.send(Err(e.to_string()));
                return;
            }
        }
        // Send what is ready before waiting for more input.
        if (batch.len() >= STREAM_BATCH || input.buffer().is_empty())
            && send.send(Ok(std::mem::take(&mut batch))).is_err()
        {
            return; // The source is gone.
        }
    }
    if !batch.is_empty() {
        let _ = send.send(Ok(batch));
    }
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tideline::prelude::*;
    use tideline::source::SourceConfig;

    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
    struct Reading {
        t: u64,
        k: String,
        v: i64,
    }

    impl EventTime for Reading {
        fn event_time(&self) -> Time {
            self.t
        }
    }

    const BOUND: u64 = 500;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tideline-file-source-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A CSV file of `n` readings, out of order by up to 400 ms, one in 50 late by 1-3 s,
    /// with malformed and blank lines, CRLF line ends here and there, and a byte order mark.
    fn csv_text(n: u64, seed: u64) -> String {
        let mut text = String::from("\u{feff}t,k,v\n");
        let mut x = seed;
        for i in 0..n {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let r = x >> 33;
            let clock = 10_000 + i * 7;
            let t = if r.is_multiple_of(50) { clock - 1_000 - r % 2_000 } else { clock - r % 400 };
            match r % 97 {
                3 => text.push_str(&format!("{t},k{},oops\n", r % 5)),
                5 => text.push('\n'),
                7 => text.push_str(&format!("{t},k{},{}\r\n", r % 5, i + seed * 1_000_000)),
                _ => text.push_str(&format!("{t},k{},{}\n", r % 5, i + seed * 1_000_000)),
            }
        }
        text
    }

    /// What reading `text` front to back gives: every reading at its dataflow time (its event
    /// time, or the watermark if it is behind it), how many were behind the watermark, and
    /// dead-letter line numbers.
    fn oracle(text: &str) -> (Vec<(Reading, Time)>, usize, Vec<u64>) {
        let (mut data, mut behind, mut dead) = (Vec::new(), 0, Vec::new());
        let mut max: Option<u64> = None;
        for (i, line) in text.trim_start_matches('\u{feff}').split_inclusive('\n').enumerate().skip(1) {
            let number = i as u64 + 1;
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            let (Ok(t), Ok(v)) = (fields[0].parse::<u64>(), fields[2].parse::<i64>()) else {
                dead.push(number);
                continue;
            };
            let watermark = max.map_or(0, |m| m.saturating_sub(BOUND));
            let reading = Reading { t, k: fields[1].to_string(), v };
            if t < watermark {
                behind += 1;
                data.push((reading, watermark));
            } else {
                max = Some(max.map_or(t, |m| m.max(t)));
                data.push((reading, t));
            }
        }
        (data, behind, dead)
    }

    /// Everything a source emits, in one collection.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
    enum Out {
        Data(Reading),
        Dead(u64, u64),
    }

    /// Reads `source` in one dataflow on `workers` workers: records with their dataflow times,
    /// dead letters' `(partition, line)`.
    fn read(source: FileSource<Reading>, workers: usize) -> (Vec<(Reading, Time)>, Vec<(u64, u64)>) {
        let changelog = tideline::runtime::collect(workers, move |scope| {
            let config = SourceConfig::new("readings")
                .watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(BOUND)))
                .batch_size(100);
            let streams = source.read(scope, config);
            streams.data.map(Out::Data).concat(streams.dead_letters.map(|d| Out::Dead(d.partition, d.position)))
        });
        let (mut data, mut dead) = (Vec::new(), Vec::new());
        for (out, time, diff) in changelog {
            for _ in 0..diff {
                match out.clone() {
                    Out::Data(r) => data.push((r, time)),
                    Out::Dead(p, l) => dead.push((p, l)),
                }
            }
        }
        data.sort();
        dead.sort();
        (data, dead)
    }

    #[test]
    fn split_files_read_exactly_as_front_to_back_at_every_worker_count() {
        let dir = temp_dir("split");
        let texts = [csv_text(3_000, 1), csv_text(1_000, 2)];
        let paths: Vec<PathBuf> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let path = dir.join(format!("in-{i}.csv"));
                std::fs::write(&path, text).unwrap();
                path
            })
            .collect();
        let mut want_data = Vec::new();
        let mut behind = 0;
        let mut want_dead = Vec::new();
        for (file, text) in texts.iter().enumerate() {
            let (data, file_behind, dead) = oracle(text);
            want_data.extend(data);
            behind += file_behind;
            want_dead.extend(dead.into_iter().map(|line| (file as u64, line)));
        }
        want_data.sort();
        assert!(behind > 20 && want_dead.len() > 20, "{behind} behind the watermark, {} dead", want_dead.len());
        // Chunks of 1 KiB: dozens per file, most lines straddling no boundary, some do.
        for (workers, chunk) in [(1, DEFAULT_CHUNK_BYTES), (2, 1_024), (3, 1_024), (4, 777), (2, 64 * 1024)] {
            let source = FileSource::<Reading>::csv(&paths).chunk_bytes(chunk).build().unwrap();
            let (data, dead) = read(source, workers);
            // Records behind the watermark arrive at the watermark of their position: equal
            // times mean every chunk started with the watermark of the lines before it.
            assert_eq!(data, want_data, "{workers} workers, chunks of {chunk} bytes");
            assert_eq!(dead, want_dead, "{workers} workers, chunks of {chunk} bytes");
        }
    }

    #[test]
    fn a_stream_is_read_once_by_one_worker() {
        // A FIFO is not seekable: splitting it (or a first pass over it) would lose it.
        let dir = temp_dir("fifo");
        let text = csv_text(2_000, 3);
        let file = dir.join("in.csv");
        std::fs::write(&file, &text).unwrap();
        let want = read(FileSource::<Reading>::csv([&file]).build().unwrap(), 1);
        let fifo = dir.join("in.fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let source = FileSource::<Reading>::csv([&fifo]).chunk_bytes(1_024).build().unwrap();
        assert_eq!(source.total_bytes(), 0);
        let writer = {
            let (fifo, text) = (fifo.clone(), text.clone());
            std::thread::spawn(move || {
                let mut out = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
                for line in text.split_inclusive('\n') {
                    out.write_all(line.as_bytes()).unwrap();
                }
            })
        };
        let got = read(source, 3);
        writer.join().unwrap();
        assert_eq!(got, want);
        assert!(!got.0.is_empty());
    }

    #[test]
    fn a_stream_without_the_required_columns_stops_with_an_error() {
        let dir = temp_dir("fifo-header");
        let fifo = dir.join("in.fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let source = FileSource::<Reading>::csv([&fifo]).require_columns(["t", "k", "v"]).build().unwrap();
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(&fifo, "time,k,v\n1,a,1\n").unwrap())
        };
        let metrics = tideline::runtime::metrics::SourceMetrics::new("readings");
        let m = Arc::clone(&metrics);
        let data = tideline::runtime::collect(2, move |scope| {
            source.read(scope, SourceConfig::new("readings").metrics(Arc::clone(&m))).data
        });
        writer.join().unwrap();
        assert!(data.is_empty());
        let errors = metrics.errors();
        assert!(errors.iter().any(|e| e.contains("has no column \"t\"")), "{errors:?}");
    }

    #[test]
    fn a_byte_order_mark_before_the_header_is_ignored() {
        let dir = temp_dir("bom");
        let path = dir.join("in.csv");
        std::fs::write(&path, "\u{feff}t,k,v\n1000,a,5\n").unwrap();
        let source = FileSource::<Reading>::csv([&path]).require_columns(["t", "k", "v"]).build().unwrap();
        let data = tideline::runtime::collect(1, move |scope| source.read(scope, SourceConfig::new("r")).data);
        assert_eq!(data, vec![(Reading { t: 1000, k: "a".into(), v: 5 }, 1000, 1)]);
    }
}
