//! The Kafka bench: `kafka_pipeline` end to end against a real broker.
//!
//! **Throughput** (default): produces N generated readings to a fresh topic (with
//! `kafka_pipeline --generate`), then times `kafka_pipeline --bounded` over it — the whole
//! process, from start to exit: readings/s, CPU seconds (user + system), CPU as a share of the
//! wall time, and peak RSS — for each worker count, several rounds, interleaved. Every run's
//! output topic is read back and compared with the file run of the same readings: the CSV
//! `window_agg --write-input` writes, split into one file per Kafka partition (each file a
//! partition of the file source, with its own watermark, as each Kafka partition is), through
//! the same windows. The results must be equal, or the bench fails.
//!
//! **Latency** (`--latency`): starts `kafka_pipeline` (unbounded, 100 ms tumbling windows) on
//! an idle topic, then produces readings in real time (event time = wall-clock time, one per
//! partition every 10 ms) and measures, for each window, the delay from the moment it closes
//! (the watermark passes its end: a reading at or after `end + out-of-orderness` has been
//! produced to every partition) to its last result arriving in the output topic.
//!
//! ```text
//! cargo build --release -p tideline-examples -p tideline-benches
//! target/release/kafka_bench --brokers 127.0.0.1:19092 --readings 2000000 --workers 1,2 --rounds 3
//! target/release/kafka_bench --brokers 127.0.0.1:19092 --latency
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};
use serde::{Deserialize, Serialize};

const USAGE: &str = "\
kafka_bench: kafka_pipeline end to end against a real Kafka broker.

  --brokers HOST:PORT   the broker (default: $TIDELINE_KAFKA_BROKERS, else 127.0.0.1:19092)
  --readings N          readings to produce and process (default 2000000)
  --partitions P        partitions of the input topic (default 4)
  --workers A,B         worker counts to run (default 1,2)
  --rounds R            runs per worker count, interleaved (default 3)
  --set KEY=VALUE       a client property passed to kafka_pipeline (repeatable)
  --latency             measure window latency on a live stream instead (200 windows)
  --bin-dir DIR         where kafka_pipeline and window_agg are (default: beside this program)
";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kafka_bench: error: {message}");
            ExitCode::FAILURE
        }
    }
}

struct Options {
    brokers: String,
    readings: u64,
    partitions: u32,
    workers: Vec<usize>,
    rounds: usize,
    properties: Vec<String>,
    latency: bool,
    bin_dir: PathBuf,
}

fn parse() -> Result<Option<Options>, String> {
    let mut options = Options {
        brokers: std::env::var("TIDELINE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into()),
        readings: 2_000_000,
        partitions: 4,
        workers: vec![1, 2],
        rounds: 3,
        properties: Vec::new(),
        latency: false,
        bin_dir: std::env::current_exe()
            .map_err(|e| format!("own path: {e}"))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |text: String| text.parse::<u64>().map_err(|_| format!("expected a number, got {text:?}"));
        match flag.as_str() {
            "--brokers" => options.brokers = value()?,
            "--readings" => options.readings = number(value()?)?,
            "--partitions" => options.partitions = number(value()?)? as u32,
            "--workers" => {
                options.workers =
                    value()?.split(',').map(|w| number(w.to_string()).map(|w| w as usize)).collect::<Result<_, _>>()?
            }
            "--rounds" => options.rounds = number(value()?)? as usize,
            "--set" => options.properties.push(value()?),
            "--latency" => options.latency = true,
            "--bin-dir" => options.bin_dir = PathBuf::from(value()?),
            "--help" => return Ok(None),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(Some(options))
}

fn run() -> Result<(), String> {
    let Some(options) = parse()? else {
        println!("{USAGE}");
        return Ok(());
    };
    for program in ["kafka_pipeline", "window_agg"] {
        if !options.bin_dir.join(program).is_file() {
            return Err(format!(
                "{} not found in {}: build it first (cargo build --release -p tideline-examples) or give --bin-dir",
                program,
                options.bin_dir.display()
            ));
        }
    }
    if options.latency { latency(&options) } else { throughput(&options) }
}

/// A name no other run uses.
fn unique(name: &str) -> String {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    format!("kafka-bench-{name}-{}-{millis}", std::process::id())
}

fn program(options: &Options, name: &str) -> Command {
    Command::new(options.bin_dir.join(name))
}

fn check(output: std::process::Output, what: &str) -> Result<String, String> {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() { Ok(stderr) } else { Err(format!("{what} failed ({}): {stderr}", output.status)) }
}

/// A window result, as `window_agg` writes it in CSV and `kafka_pipeline` as JSON.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct OutputRow {
    window_start_ms: u64,
    window_end_ms: u64,
    key: String,
    count: i64,
    sum: i128,
    min: i64,
    max: i64,
}

/// What one process used.
struct Usage {
    wall: Duration,
    cpu: Duration,
    peak_rss_kb: u64,
}

/// CPU time of this process's waited-for children (`cutime + cstime`), in clock ticks.
fn children_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    // cutime and cstime are fields 16 and 17 of stat, i.e. 13 and 14 after the name.
    fields.get(13).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(14).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0)
}

/// The clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak resident memory of a running process (`VmHWM`), in kB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `command` to completion, measuring its wall time, CPU time and peak RSS.
fn measure(mut command: Command, what: &str) -> Result<(Usage, String), String> {
    let before = children_cpu_ticks();
    let started = Instant::now();
    let mut child = command.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().map_err(|e| format!("{what}: {e}"))?;
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        }
        text
    });
    let mut peak = 0;
    let status = loop {
        if let Some(rss) = peak_rss_kb(child.id()) {
            peak = peak.max(rss);
        }
        match child.try_wait().map_err(|e| format!("{what}: {e}"))? {
            Some(status) => break status,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let wall = started.elapsed();
    let cpu = Duration::from_secs_f64((children_cpu_ticks() - before) as f64 / ticks_per_second());
    let stderr = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("{what} failed ({status}): {stderr}"));
    }
    Ok((Usage { wall, cpu, peak_rss_kb: peak }, stderr))
}

fn throughput(options: &Options) -> Result<(), String> {
    let input = unique("readings");
    let workdir = std::env::temp_dir().join(unique("files"));
    std::fs::create_dir_all(&workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
    let csv = workdir.join("readings.csv");
    let readings = options.readings.to_string();

    println!(
        "kafka_bench: {} readings, {} partitions, broker {}",
        options.readings, options.partitions, options.brokers
    );
    let mut generate = program(options, "kafka_pipeline");
    generate.args(["--brokers", &options.brokers, "--generate", &readings, "--input", &input]);
    generate.args(["--partitions", &options.partitions.to_string(), "--quiet"]);
    let (usage, _) = measure(generate, "kafka_pipeline --generate")?;
    println!("produced to {input} in {:.2} s", usage.wall.as_secs_f64());

    // The file run of the same readings: the reference.
    let output = program(options, "window_agg")
        .args(["--events", &readings, "--write-input", csv.to_str().unwrap_or_default(), "--quiet"])
        .output()
        .map_err(|e| format!("window_agg: {e}"))?;
    check(output, "window_agg --write-input")?;
    let started = Instant::now();
    let expected = file_run(&csv, options.partitions as usize, &workdir)?;
    println!(
        "file run (the same readings, one CSV file per partition, 1 worker): {:.2} s, {} results",
        started.elapsed().as_secs_f64(),
        expected.len()
    );

    println!(
        "\n{:>7} {:>5} {:>8} {:>12} {:>8} {:>6} {:>8}  exact",
        "workers", "round", "wall s", "readings/s", "CPU s", "CPU %", "RSS MB"
    );
    let mut summary: BTreeMap<usize, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for round in 1..=options.rounds {
        for &workers in &options.workers {
            let name = unique(&format!("w{workers}-r{round}"));
            let (output, late, dead, group) =
                (format!("{name}-out"), format!("{name}-late"), format!("{name}-dead"), format!("{name}-group"));
            let mut pipeline = program(options, "kafka_pipeline");
            pipeline.args(["--brokers", &options.brokers, "--input", &input, "--output", &output, "--late", &late]);
            pipeline.args(["--dead-letters", &dead, "--group", &group, "--bounded", "--quiet"]);
            pipeline.args(["-w", &workers.to_string()]);
            for property in &options.properties {
                pipeline.args(["--set", property]);
            }
            let (usage, _) = measure(pipeline, "kafka_pipeline --bounded")?;
            let results = read_results(&options.brokers, &output)?;
            let exact = results == expected;
            let wall = usage.wall.as_secs_f64();
            let rate = options.readings as f64 / wall;
            let cpu_share = usage.cpu.as_secs_f64() / wall * 100.0;
            println!(
                "{workers:>7} {round:>5} {wall:>8.2} {rate:>12.0} {:>8.2} {cpu_share:>6.0} {:>8.1}  {}",
                usage.cpu.as_secs_f64(),
                usage.peak_rss_kb as f64 / 1024.0,
                if exact {
                    "yes".to_string()
                } else {
                    format!("NO ({} results, {} expected)", results.len(), expected.len())
                }
            );
            if !exact {
                return Err(format!("the results of {output} differ from the file run's"));
            }
            summary.entry(workers).or_default().push((
                rate,
                usage.cpu.as_secs_f64(),
                usage.peak_rss_kb as f64 / 1024.0,
            ));
        }
    }
    println!();
    for (workers, runs) in summary {
        let range = |f: fn(&(f64, f64, f64)) -> f64| {
            let values: Vec<f64> = runs.iter().map(f).collect();
            (values.iter().copied().fold(f64::MAX, f64::min), values.iter().copied().fold(0.0, f64::max))
        };
        let (rate, cpu, rss) = (range(|r| r.0), range(|r| r.1), range(|r| r.2));
        println!(
            "-w {workers}: {:.0}–{:.0} readings/s, {:.2}–{:.2} CPU s, {:.0}–{:.0} MB peak RSS over {} runs",
            rate.0,
            rate.1,
            cpu.0,
            cpu.1,
            rss.0,
            rss.1,
            runs.len()
        );
    }
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(())
}

/// A reading, as `window_agg` writes it in CSV and `kafka_pipeline` as JSON.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Reading {
    event_time_ms: u64,
    key: String,
    value: i64,
}

impl tideline::EventTime for Reading {
    fn event_time(&self) -> tideline::Time {
        self.event_time_ms
    }
}

/// `kafka_pipeline`'s windows over the readings of `csv` (the generated data set, partitions
/// interleaved round-robin), split back into one file per partition.
fn file_run(csv: &Path, partitions: usize, dir: &Path) -> Result<Vec<OutputRow>, String> {
    use tideline::prelude::*;
    use tideline::source::SourceConfig;
    use tideline::window::aggregate::AllStats;
    use tideline_connectors::file::FileSource;

    let text = std::fs::read_to_string(csv).map_err(|e| format!("{}: {e}", csv.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let mut files: Vec<String> = vec![format!("{header}\n"); partitions];
    for (i, line) in lines.enumerate() {
        files[i % partitions].push_str(line);
        files[i % partitions].push('\n');
    }
    let mut paths = Vec::new();
    for (p, contents) in files.iter().enumerate() {
        let path = dir.join(format!("partition-{p}.csv"));
        std::fs::write(&path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
        paths.push(path);
    }
    drop(files);
    let source = FileSource::<Reading>::csv(&paths).time_field("event_time_ms").build().map_err(|e| e.to_string())?;
    let results = tideline::runtime::collect(1, move |scope| {
        let config = SourceConfig::new("readings")
            .watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5)));
        source
            .read(scope, config)
            .data
            .map(|r| Event::new(r.event_time_ms, r.key, r.value))
            .tumbling(Duration::from_secs(10))
            .aggregate(AllStats)
            .map(|r| OutputRow {
                window_start_ms: r.window.start,
                window_end_ms: r.window.end,
                key: r.key,
                count: r.value.count,
                sum: r.value.sum,
                min: r.value.min,
                max: r.value.max,
            })
    });
    let mut rows: Vec<OutputRow> = results
        .into_iter()
        .map(|(row, _, diff)| if diff == 1 { Ok(row) } else { Err(format!("a retraction in the file run: {row:?}")) })
        .collect::<Result<_, _>>()?;
    rows.sort();
    Ok(rows)
}

fn consumer(brokers: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|e| format!("a consumer: {e}"))
}

/// The latest value of every key of an upsert topic, sorted.
fn read_results(brokers: &str, topic: &str) -> Result<Vec<OutputRow>, String> {
    let consumer = consumer(brokers)?;
    let metadata =
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(|e| format!("{topic}: {e}"))?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut ends = BTreeMap::new();
    let mut list = TopicPartitionList::new();
    for &p in &partitions {
        let (_, high) =
            consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).map_err(|e| format!("{topic}: {e}"))?;
        ends.insert(p, high);
        list.add_partition_offset(topic, p, Offset::Beginning).map_err(|e| e.to_string())?;
    }
    consumer.assign(&list).map_err(|e| e.to_string())?;
    drop(list);
    let mut next: BTreeMap<i32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
    let mut latest: BTreeMap<Vec<u8>, Option<OutputRow>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while next.iter().any(|(p, n)| *n < ends[p]) {
        if Instant::now() > deadline {
            return Err(format!("reading {topic} back timed out"));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let Ok(message) = message else { continue };
        let position = next.entry(message.partition()).or_default();
        if message.offset() < *position {
            continue;
        }
        *position = message.offset() + 1;
        let key = message.key().unwrap_or_default().to_vec();
        let value = match message.payload() {
            Some(payload) => Some(serde_json::from_slice(payload).map_err(|e| format!("{topic}: {e}"))?),
            None => None,
        };
        latest.insert(key, value);
    }
    let mut rows: Vec<OutputRow> = latest.into_values().flatten().collect();
    rows.sort();
    Ok(rows)
}

/// Stops a child on drop (a failed bench must not leave a pipeline running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn latency(options: &Options) -> Result<(), String> {
    const WINDOW_MS: u64 = 100;
    const OUT_OF_ORDERNESS_MS: u64 = 0;
    const TICK: Duration = Duration::from_millis(10);
    const WINDOWS: usize = 200;
    let (input, output) = (unique("live"), unique("live-out"));
    let config = tideline_connectors::kafka::KafkaConfig::new(&options.brokers);
    tideline_connectors::kafka::create_topic(&config, &input, options.partitions as i32, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    // The results are upserts: kafka_pipeline refuses an output topic that is not compacted.
    let compact = tideline_connectors::kafka::TopicPolicy::Compact;
    tideline_connectors::kafka::ensure_topic(&config, &output, 1, compact, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("linger.ms", "0")
        .create()
        .map_err(|e| format!("a producer: {e}"))?;
    let mut pipeline = program(options, "kafka_pipeline");
    pipeline.args(["--brokers", &options.brokers, "--input", &input, "--output", &output]);
    pipeline.args(["--late", &unique("live-late"), "--dead-letters", &unique("live-dead"), "--group", &unique("live")]);
    pipeline.args(["--tumbling", &format!("{WINDOW_MS}ms"), "--out-of-orderness", &format!("{OUT_OF_ORDERNESS_MS}ms")]);
    pipeline.args(["--quiet", "-w", &options.workers.first().copied().unwrap_or(1).to_string()]);
    for property in &options.properties {
        pipeline.args(["--set", property]);
    }
    let mut pipeline =
        Running(pipeline.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|e| e.to_string())?);

    let results = consumer(&options.brokers)?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&output, 0, Offset::Beginning).map_err(|e| e.to_string())?;
    results.assign(&list).map_err(|e| e.to_string())?;
    drop(list);

    // Produce on a thread of its own, in real time; windows closing from `measure_from` on count.
    let warmup = Duration::from_secs(3);
    let started = now_ms();
    let measure_from = (started + warmup.as_millis() as u64).div_ceil(WINDOW_MS) * WINDOW_MS;
    let stop_at = measure_from + (WINDOWS as u64 + 2) * WINDOW_MS;
    let (brokers_topic, partitions) = (input.clone(), options.partitions as i32);
    let producing = std::thread::spawn(move || -> Result<(), String> {
        let mut n = 0u64;
        while now_ms() < stop_at + 500 {
            let time = now_ms();
            for p in 0..partitions {
                let key = format!("sensor-{p:02}");
                let payload = format!(r#"{{"event_time_ms":{time},"key":"{key}","value":{}}}"#, n % 100);
                let record = BaseRecord::to(&brokers_topic).partition(p).key(&key).payload(&payload);
                producer.send(record).map_err(|(e, _)| format!("producing: {e}"))?;
                n += 1;
            }
            producer.poll(Duration::ZERO);
            std::thread::sleep(TICK);
        }
        producer.flush(Duration::from_secs(10)).map_err(|e| e.to_string())
    });
    // The last result of each window: when it arrived (ms).
    let mut arrived: BTreeMap<u64, u64> = BTreeMap::new();
    let deadline =
        Instant::now() + warmup + Duration::from_millis((WINDOWS as u64 + 2) * WINDOW_MS) + Duration::from_secs(20);
    while arrived.range(measure_from..).count() < WINDOWS && Instant::now() < deadline {
        let Some(Ok(message)) = results.poll(Duration::from_millis(50)) else { continue };
        let at = now_ms();
        let Some(start) = message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.rsplit_once('@'))
            .and_then(|(_, s)| s.parse::<u64>().ok())
        else {
            continue;
        };
        let entry = arrived.entry(start).or_insert(at);
        *entry = (*entry).max(at);
    }
    producing.join().map_err(|_| "the producer thread panicked".to_string())??;
    let mut delays: Vec<u64> = arrived
        .range(measure_from..)
        .take(WINDOWS)
        .map(|(start, at)| at.saturating_sub(start + WINDOW_MS + OUT_OF_ORDERNESS_MS))
        .collect();
    if delays.len() < WINDOWS {
        let exited = pipeline.0.try_wait().ok().flatten();
        let mut stderr = String::new();
        if exited.is_some()
            && let Some(mut pipe) = pipeline.0.stderr.take()
        {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        return Err(format!("only {} of {WINDOWS} windows arrived; kafka_pipeline: {exited:?} {stderr}", delays.len()));
    }
    delays.sort_unstable();
    let at = |q: f64| delays[((delays.len() as f64 * q) as usize).min(delays.len() - 1)];
    println!(
        "kafka_bench --latency: {} windows of {WINDOW_MS} ms, {} partitions, a reading per partition every {} ms: \
         from a window closing to its last result in the output topic: p50 {} ms, p99 {} ms, max {} ms",
        delays.len(),
        options.partitions,
        TICK.as_millis(),
        at(0.5),
        at(0.99),
        delays[delays.len() - 1]
    );
    Ok(())
}
