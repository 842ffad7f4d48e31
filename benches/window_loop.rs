//! `window_loop`: the hand-written baseline (H) of the whole-process benchmark. A plain
//! single-threaded Rust loop that computes what
//!
//! ```text
//! window_agg --input F --out-of-orderness D (--tumbling S | --sliding S,P | --session G) \
//!            --output OUT --quiet
//! ```
//!
//! computes (allowed lateness 0, late records dropped, one final row per window or session and
//! key) and writes the same bytes. It is written as a competent engineer would write this job
//! by hand for speed: one buffered pass over the file, lines parsed by hand, keys interned once
//! into small integers, state in hash maps keyed by them, and each result written as soon as
//! the watermark completes it.
//!
//! # Semantics (Tideline's, DESIGN.md §2–4)
//!
//! - **Watermark.** The file is one partition. Before each record, `W` = the largest event time
//!   of the records before it − D (saturating at 0; 0 before any record). A record with
//!   `t ≥ W` arrives at `at = t` and raises the maximum; one with `t < W` is behind the
//!   watermark: it arrives at `at = W` and does not.
//! - **Windows** `[start, start + size)`, starts at multiples of the slide. A record counts in
//!   each window containing `t` whose end is after `at` (an allowed lateness of 0: a window is
//!   complete once `W ≥ end`); a record that no such window takes is late and dropped. Each
//!   window's row is due at `end − 1`.
//! - **Sessions** with an inclusive gap: events of a key at most `gap` apart share a session,
//!   reported as `[first, last + gap)` and complete once `W > last + gap`. A record joins (and
//!   merges) every live session of its key with `first − gap ≤ t ≤ last + gap`; one that reaches
//!   none starts a session, unless `t + gap < at` (that session would already be complete):
//!   then it is late and dropped. A session's row is due at `last + gap`.
//! - **Output**: CSV, header `window_start_ms,window_end_ms,key,count,sum,min,max`, one row per
//!   window or session and key, ordered by when it is due, then start, end and key (keys
//!   compared as strings).
//!
//! # Input
//!
//! The CSV `window_agg` reads, restricted to what a generated file holds: the header
//! `event_time_ms,key,value` in that order, and no quoted fields. Anything else is an error
//! (`window_agg` would send a malformed line to its dead letters; this loop stops instead of
//! guessing).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

use hashbrown::HashTable;

const USAGE: &str = "\
window_loop: the hand-written baseline of `window_agg` (allowed lateness 0, late records
dropped, final rows), for the whole-process benchmark (`harness --whole-process`).

  window_loop --input FILE.csv [--output OUT.csv] [--out-of-orderness 5s]
              (--tumbling 10s | --sliding 10s,2s | --session 30s) [--quiet]
";

type Fast = foldhash::fast::FixedState;

/// What to compute.
#[derive(Clone, Copy, Debug)]
enum Windows {
    /// Windows of `size` ms starting every `slide` ms (tumbling: `slide == size`).
    Sliding { size: u64, slide: u64 },
    /// Sessions with an inclusive gap of `gap` ms.
    Sessions { gap: u64 },
}

struct Args {
    input: String,
    output: Option<String>,
    bound: u64,
    windows: Windows,
    quiet: bool,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("window_loop: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    match run(&args) {
        Ok(summary) => {
            if !args.quiet {
                eprintln!(
                    "window_loop: {} events in {:.2}s, {} late dropped, {} rows",
                    summary.events,
                    started.elapsed().as_secs_f64(),
                    summary.late,
                    summary.rows
                );
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("window_loop: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: Vec<String>) -> Result<Option<Args>, String> {
    let (mut input, mut output, mut bound, mut windows, mut quiet) = (None, None, 5_000, None, false);
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--help" => return Ok(None),
            "--input" => input = Some(value()?),
            "--output" => output = Some(value()?),
            "--out-of-orderness" => bound = duration_ms(&value()?)?,
            "--tumbling" => {
                let size = window_ms(&value()?)?;
                windows = Some(Windows::Sliding { size, slide: size });
            }
            "--sliding" => {
                let text = value()?;
                let (size, slide) = text.split_once(',').ok_or("--sliding expects SIZE,SLIDE")?;
                windows = Some(Windows::Sliding { size: window_ms(size)?, slide: window_ms(slide)? });
            }
            "--session" => windows = Some(Windows::Sessions { gap: window_ms(&value()?)? }),
            "--quiet" => quiet = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let input = input.ok_or("--input is required")?;
    let windows = windows.ok_or("choose --tumbling, --sliding or --session")?;
    Ok(Some(Args { input, output, bound, windows, quiet }))
}

/// `250ms`, `10s`, `5m`, `1h` in milliseconds (the forms `window_agg` accepts).
fn duration_ms(text: &str) -> Result<u64, String> {
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| format!("bad duration {text:?}"))?;
    let unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("bad duration {text:?}: a number and ms, s, m or h")),
    };
    number.checked_mul(unit).ok_or_else(|| format!("duration {text:?} too large"))
}

fn window_ms(text: &str) -> Result<u64, String> {
    match duration_ms(text)? {
        0 => Err("a window or gap must be at least 1ms".into()),
        ms => Ok(ms),
    }
}

struct Summary {
    events: u64,
    late: u64,
    rows: u64,
}

fn run(args: &Args) -> Result<Summary, String> {
    let file = File::open(&args.input).map_err(|e| format!("{}: {e}", args.input))?;
    let mut input = Input { reader: BufReader::with_capacity(1 << 20, file), line: Vec::new(), number: 0 };
    input.header().map_err(|e| format!("{}: {e}", args.input))?;
    let sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(File::create(path).map_err(|e| format!("{path}: {e}"))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = Output { writer: BufWriter::with_capacity(1 << 20, sink), number: itoa::Buffer::new(), rows: 0 };
    out.writer.write_all(b"window_start_ms,window_end_ms,key,count,sum,min,max\n").map_err(io)?;

    let mut keys = Keys::default();
    let mut max_seen: Option<u64> = None;
    let mut events = 0;
    let mut late = 0;
    let mut state = match args.windows {
        Windows::Sliding { size, slide } => State::Windows(SlidingState::new(size, slide)),
        Windows::Sessions { gap } => State::Sessions(SessionState::new(gap)),
    };
    while let Some((t, key, value)) = input.next().map_err(|e| format!("{}: {e}", args.input))? {
        events += 1;
        let key = keys.intern(key).map_err(|e| format!("{}:{}: {e}", args.input, input.number))?;
        let watermark = max_seen.map_or(0, |m| m.saturating_sub(args.bound));
        let at = if t >= watermark {
            max_seen = Some(max_seen.map_or(t, |m| m.max(t)));
            t
        } else {
            watermark
        };
        let taken = match &mut state {
            State::Windows(windows) => windows.add(t, at, key, value),
            State::Sessions(sessions) => sessions.add(t, at, key, value),
        };
        late += u64::from(!taken);
        let new_watermark = max_seen.map_or(0, |m| m.saturating_sub(args.bound));
        if new_watermark > watermark {
            match &mut state {
                State::Windows(windows) => windows.complete(new_watermark, &keys, &mut out),
                State::Sessions(sessions) => sessions.complete(new_watermark, &keys, &mut out),
            }
            .map_err(io)?;
        }
    }
    // The end of the input: the watermark reaches the end of time and everything completes.
    match &mut state {
        State::Windows(windows) => windows.complete(u64::MAX, &keys, &mut out),
        State::Sessions(sessions) => sessions.complete(u64::MAX, &keys, &mut out),
    }
    .map_err(io)?;
    out.writer.flush().map_err(io)?;
    Ok(Summary { events, late, rows: out.rows })
}

fn io(error: std::io::Error) -> String {
    format!("writing the output: {error}")
}

/// Lines of the input file, parsed by hand.
struct Input {
    reader: BufReader<File>,
    line: Vec<u8>,
    /// The current line's number (1 is the header).
    number: u64,
}

impl Input {
    fn read_line(&mut self) -> std::io::Result<bool> {
        self.line.clear();
        self.number += 1;
        if self.reader.read_until(b'\n', &mut self.line)? == 0 {
            return Ok(false);
        }
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
        }
        Ok(true)
    }

    fn header(&mut self) -> Result<(), String> {
        if !self.read_line().map_err(|e| e.to_string())? || self.line != b"event_time_ms,key,value" {
            return Err("expected the header event_time_ms,key,value".into());
        }
        Ok(())
    }

    /// The next record: (event time, key, value).
    fn next(&mut self) -> Result<Option<(u64, &[u8], i64)>, String> {
        loop {
            if !self.read_line().map_err(|e| e.to_string())? {
                return Ok(None);
            }
            if !self.line.is_empty() {
                break;
            }
        }
        let line = &self.line[..];
        let bad = |what: &str| format!("line {}: {what}: {:?}", self.number, String::from_utf8_lossy(line));
        let first = line.iter().position(|&b| b == b',').ok_or_else(|| bad("expected 3 fields"))?;
        let last = line.iter().rposition(|&b| b == b',').ok_or_else(|| bad("expected 3 fields"))?;
        let key = &line[first + 1..last];
        if first == last || key.contains(&b',') {
            return Err(bad("expected 3 fields"));
        }
        if line.contains(&b'"') || key.contains(&b'\r') {
            return Err(bad("quoted fields are not supported"));
        }
        let time = parse_u64(&line[..first]).ok_or_else(|| bad("bad event_time_ms"))?;
        let value = match &line[last + 1..] {
            [b'-', digits @ ..] => parse_u64(digits).and_then(|v| 0i64.checked_sub_unsigned(v)),
            digits => parse_u64(digits).and_then(|v| i64::try_from(v).ok()),
        }
        .ok_or_else(|| bad("bad value"))?;
        Ok(Some((time, key, value)))
    }
}

/// A decimal number, optionally with a leading `+` (as Rust's own parser accepts).
fn parse_u64(digits: &[u8]) -> Option<u64> {
    let digits = digits.strip_prefix(b"+").unwrap_or(digits);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(d - b'0')) } else { None }
    })
}

/// Keys interned into dense ids, their bytes kept once in an arena.
#[derive(Default)]
struct Keys {
    ids: HashTable<u32>,
    bytes: Vec<u8>,
    /// Key `i` is `bytes[ends[i - 1]..ends[i]]`.
    ends: Vec<usize>,
    hasher: Fast,
}

impl Keys {
    fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        let start = if id == 0 { 0 } else { self.ends[id - 1] };
        &self.bytes[start..self.ends[id]]
    }

    fn intern(&mut self, key: &[u8]) -> Result<u32, String> {
        let hash = self.hasher.hash_one(key);
        let Keys { ids, bytes, ends, hasher } = self;
        let slice = |id: u32| {
            let id = id as usize;
            &bytes[if id == 0 { 0 } else { ends[id - 1] }..ends[id]]
        };
        if let Some(id) = ids.find(hash, |&id| slice(id) == key) {
            return Ok(*id);
        }
        std::str::from_utf8(key).map_err(|_| "the key is not UTF-8".to_string())?;
        let id = u32::try_from(ends.len()).map_err(|_| "more than 2^32 keys".to_string())?;
        bytes.extend_from_slice(key);
        ends.push(bytes.len());
        let (bytes, ends) = (&*bytes, &*ends);
        ids.insert_unique(hash, id, |&id| {
            let id = id as usize;
            hasher.hash_one(&bytes[if id == 0 { 0 } else { ends[id - 1] }..ends[id]])
        });
        Ok(id)
    }
}

/// Count, sum, min and max of a window's or session's values.
#[derive(Clone, Copy, Debug)]
struct Stats {
    count: i64,
    sum: i128,
    min: i64,
    max: i64,
}

impl Stats {
    fn new(value: i64) -> Self {
        Stats { count: 1, sum: value.into(), min: value, max: value }
    }

    fn add(&mut self, value: i64) {
        self.count += 1;
        self.sum += i128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    fn merge(&mut self, other: &Stats) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

struct Output {
    writer: BufWriter<Box<dyn Write>>,
    number: itoa::Buffer,
    rows: u64,
}

impl Output {
    fn row(&mut self, start: u64, end: u64, key: &[u8], stats: &Stats) -> std::io::Result<()> {
        let Output { writer, number, rows } = self;
        *rows += 1;
        writer.write_all(number.format(start).as_bytes())?;
        writer.write_all(b",")?;
        writer.write_all(number.format(end).as_bytes())?;
        writer.write_all(b",")?;
        writer.write_all(key)?;
        writer.write_all(b",")?;
        writer.write_all(number.format(stats.count).as_bytes())?;
        writer.write_all(b",")?;
        writer.write_all(number.format(stats.sum).as_bytes())?;
        writer.write_all(b",")?;
        writer.write_all(number.format(stats.min).as_bytes())?;
        writer.write_all(b",")?;
        writer.write_all(number.format(stats.max).as_bytes())?;
        writer.write_all(b"\n")
    }
}

enum State {
    Windows(SlidingState),
    Sessions(SessionState),
}

/// Open windows, consecutive: `open[i]` starts at `base + i × slide`.
struct SlidingState {
    size: u64,
    slide: u64,
    base: u64,
    open: VecDeque<HashMap<u32, Stats, Fast>>,
    /// Emptied maps, kept for reuse (with their capacity).
    spare: Vec<HashMap<u32, Stats, Fast>>,
    sorted: Vec<(u32, Stats)>,
}

impl SlidingState {
    fn new(size: u64, slide: u64) -> Self {
        SlidingState { size, slide, base: 0, open: VecDeque::new(), spare: Vec::new(), sorted: Vec::new() }
    }

    /// Counts the record in its windows still open at `at`; false if none is.
    fn add(&mut self, t: u64, at: u64, key: u32, value: i64) -> bool {
        let (size, slide) = (self.size, self.slide);
        let mut taken = false;
        let mut start = t - t % slide;
        while start + size > t {
            if start + size > at {
                match self.window(start).entry(key) {
                    std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().add(value),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(Stats::new(value));
                    }
                }
                taken = true;
            }
            if start < slide {
                break;
            }
            start -= slide;
        }
        taken
    }

    fn window(&mut self, start: u64) -> &mut HashMap<u32, Stats, Fast> {
        if self.open.is_empty() {
            self.base = start;
        }
        while start < self.base {
            self.open.push_front(self.spare.pop().unwrap_or_default());
            self.base -= self.slide;
        }
        let index = ((start - self.base) / self.slide) as usize;
        while self.open.len() <= index {
            self.open.push_back(self.spare.pop().unwrap_or_default());
        }
        &mut self.open[index]
    }

    /// Writes and drops the windows whose end the watermark has reached, oldest first.
    fn complete(&mut self, watermark: u64, keys: &Keys, out: &mut Output) -> std::io::Result<()> {
        while !self.open.is_empty() && self.base + self.size <= watermark {
            let mut window = self.open.pop_front().expect("not empty");
            let (start, end) = (self.base, self.base + self.size);
            self.base += self.slide;
            self.sorted.clear();
            self.sorted.extend(window.drain());
            self.sorted.sort_unstable_by(|a, b| keys.get(a.0).cmp(keys.get(b.0)));
            for (key, stats) in &self.sorted {
                out.row(start, end, keys.get(*key), stats)?;
            }
            self.spare.push(window);
        }
        Ok(())
    }
}

/// A session of one key: `[first, last + gap)`.
#[derive(Clone, Copy, Debug)]
struct Session {
    first: u64,
    last: u64,
    stats: Stats,
}

/// Live sessions per key, and when to look at a key again.
struct SessionState {
    gap: u64,
    live: HashMap<u32, Vec<Session>, Fast>,
    /// (a session's end, its key), earliest first; an entry whose session has since grown is
    /// skipped when it comes up.
    due: BinaryHeap<Reverse<(u64, u32)>>,
    /// Completed sessions of one watermark step: (end, start, key, stats).
    completed: Vec<(u64, u64, u32, Stats)>,
}

impl SessionState {
    fn new(gap: u64) -> Self {
        SessionState { gap, live: HashMap::default(), due: BinaryHeap::new(), completed: Vec::new() }
    }

    /// Adds the record to its key's sessions (merging those it bridges) or starts one; false
    /// if its session would already be complete.
    fn add(&mut self, t: u64, at: u64, key: u32, value: i64) -> bool {
        let gap = self.gap;
        let touches = |s: &Session| s.first.saturating_sub(gap) <= t && t <= s.last + gap;
        let sessions = match self.live.get_mut(&key) {
            Some(sessions) => sessions,
            None if t + gap < at => return false,
            None => {
                self.live.insert(key, vec![Session { first: t, last: t, stats: Stats::new(value) }]);
                self.due.push(Reverse((t + gap, key)));
                return true;
            }
        };
        let end = match sessions.iter().position(touches) {
            // The common case: one session, extended.
            Some(i) if sessions.len() == 1 || !sessions[i + 1..].iter().any(touches) => {
                let s = &mut sessions[i];
                let old_end = s.last + gap;
                (s.first, s.last) = (s.first.min(t), s.last.max(t));
                s.stats.add(value);
                (s.last + gap > old_end).then_some(s.last + gap)
            }
            Some(_) => {
                let mut merged = Session { first: t, last: t, stats: Stats::new(value) };
                sessions.retain(|s| {
                    if touches(s) {
                        (merged.first, merged.last) = (merged.first.min(s.first), merged.last.max(s.last));
                        merged.stats.merge(&s.stats);
                    }
                    !touches(s)
                });
                sessions.push(merged);
                Some(merged.last + gap)
            }
            None if t + gap < at => return false,
            None => {
                sessions.push(Session { first: t, last: t, stats: Stats::new(value) });
                Some(t + gap)
            }
        };
        if let Some(end) = end {
            self.due.push(Reverse((end, key)));
        }
        true
    }

    /// Writes and drops the sessions the watermark has passed (`W > last + gap`), in the
    /// order they are due.
    fn complete(&mut self, watermark: u64, keys: &Keys, out: &mut Output) -> std::io::Result<()> {
        let gap = self.gap;
        while let Some(&Reverse((end, key))) = self.due.peek() {
            if end >= watermark {
                break;
            }
            self.due.pop();
            let Some(sessions) = self.live.get_mut(&key) else { continue };
            let completed = &mut self.completed;
            sessions.retain(|s| {
                let done = s.last + gap < watermark;
                if done {
                    completed.push((s.last + gap, s.first, key, s.stats));
                }
                !done
            });
            if sessions.is_empty() {
                self.live.remove(&key);
            }
        }
        // Every session completed now ends in [previous watermark, watermark): after every
        // earlier row.
        self.completed
            .sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| keys.get(a.2).cmp(keys.get(b.2))));
        for (end, start, key, stats) in self.completed.drain(..) {
            out.row(start, end, keys.get(key), &stats)?;
        }
        Ok(())
    }
}
