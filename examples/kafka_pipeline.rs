//! `kafka_pipeline`: windowed count, sum, min and max per key, from a Kafka topic of JSON
//! readings to Kafka topics — results as upserts, late readings and malformed messages to
//! topics of their own — at least once.
//!
//! ```text
//! kafka_pipeline --brokers HOST:PORT --generate N [--input readings] [--partitions 4]
//! kafka_pipeline --brokers HOST:PORT [--input readings] [--output window-stats]
//!                [--late late-readings] [--dead-letters readings-dead-letters]
//!                [--tumbling 10s] [--out-of-orderness 5s] [--bounded] [-w N]
//! ```
//!
//! Run `kafka_pipeline --help` for every flag.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tideline::prelude::*;
use tideline::runtime::metrics::SourceMetrics;
use tideline::runtime::{CLUSTER_FLAGS_HELP, Cluster, execute};
use tideline::sink::SinkHandle;
use tideline::source::SourceConfig;
use tideline::time::late::LatePolicy;
use tideline::time::parse_duration;
use tideline::window::aggregate::AllStats;
use tideline_connectors::kafka::{
    KafkaConfig, KafkaSink, KafkaSource, SinkFormat, StartOffsets, TopicPolicy, create_topic, ensure_topic,
};
use tideline_examples::{GENERATED_PARTITIONS, InputRow, OutputRow, generated_partition};

const USAGE: &str = "\
kafka_pipeline: windowed count, sum, min and max per key, from a Kafka topic of JSON readings
to Kafka topics, at least once.

USAGE:
  kafka_pipeline --brokers HOST:PORT --generate N [--input TOPIC] [--partitions P]
  kafka_pipeline --brokers HOST:PORT [TOPICS] [WINDOWS] [--bounded] [-w N]

  --brokers HOST:PORT     bootstrap servers (comma-separated); other client properties with
                          --set KEY=VALUE (e.g. --set security.protocol=SASL_SSL, which
                          needs a build with --features kafka-ssl)

GENERATE (then exit):
  --generate N            produce N generated sensor readings to --input (the window_agg data
                          set: out of order by up to 3 s, one in a thousand 5-30 s late),
                          generated partition p to topic partition p
  --partitions P          create --input with P partitions if it does not exist (default 4);
                          when running, the output topics that do not exist are created with
                          P partitions: --output compacted (cleanup.policy=compact), the
                          others deleting by retention, stamped with their write time
  --malformed-every K     replace every K-th message of each partition by one that is not a
                          reading (default 0: none)

TOPICS:
  --input TOPIC           JSON readings {\"event_time_ms\":..,\"key\":..,\"value\":..}
                          (default readings)
  --output TOPIC          window results as upserts: key KEY@WINDOW_START_MS, value JSON
                          {window_start_ms, window_end_ms, key, count, sum, min, max}
                          (default window-stats)
  --late TOPIC            readings that arrived behind the watermark, unchanged
                          (default late-readings)
  --dead-letters TOPIC    messages that are not readings, with headers saying where they came
                          from and why; also output records the broker refuses (e.g. too
                          large), described with the reason (default readings-dead-letters)
  --group GROUP           consumer group the offsets are committed to (default kafka-pipeline);
                          a restart resumes from its committed offsets

WINDOWS:
  --tumbling SIZE         tumbling windows (default 10s)
  --out-of-orderness D    watermark = largest event time seen - D, per partition (default 5s)
  --idle-timeout T        partitions silent for T stop holding the watermark (default: never)
  --bounded               read to the end offsets seen at the start, write everything, commit,
                          and exit (default: run until interrupted: SIGTERM or SIGINT stops
                          reading, lets the sinks write what follows, commits, and exits 0;
                          windows still open are not written, a restart reads them again)
  --quiet                 no progress on stderr

Durations are a whole number with a unit: ms, s, m or h.

CLUSTER (timely):
";

#[derive(Clone, Debug)]
struct Options {
    brokers: String,
    properties: Vec<(String, String)>,
    generate: Option<u64>,
    partitions: i32,
    malformed_every: u64,
    input: String,
    output: String,
    late: String,
    dead_letters: String,
    group: String,
    window: Duration,
    out_of_orderness: Duration,
    idle_timeout: Option<Duration>,
    bounded: bool,
    quiet: bool,
}

fn parse(args: Vec<String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        brokers: String::new(),
        properties: Vec::new(),
        generate: None,
        partitions: GENERATED_PARTITIONS as i32,
        malformed_every: 0,
        input: "readings".into(),
        output: "window-stats".into(),
        late: "late-readings".into(),
        dead_letters: "readings-dead-letters".into(),
        group: "kafka-pipeline".into(),
        window: Duration::from_secs(10),
        out_of_orderness: Duration::from_secs(5),
        idle_timeout: None,
        bounded: false,
        quiet: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") && f != "--set" => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value =
            |name: &str| inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, text: String| {
            text.parse::<u64>().map_err(|_| format!("{name} expects a whole number, got {text:?}"))
        };
        let duration = |name: &str, text: String| parse_duration(&text).map_err(|e| format!("{name}: {e}"));
        match flag.as_str() {
            "--help" => return Ok(None),
            "--brokers" => options.brokers = value("--brokers")?,
            "--set" => {
                let text = value("--set")?;
                let (key, val) =
                    text.split_once('=').ok_or_else(|| format!("--set expects KEY=VALUE, got {text:?}"))?;
                options.properties.push((key.to_string(), val.to_string()));
            }
            "--generate" => options.generate = Some(number("--generate", value("--generate")?)?),
            "--partitions" => {
                let p = number("--partitions", value("--partitions")?)?;
                options.partitions =
                    i32::try_from(p).ok().filter(|p| *p > 0).ok_or("--partitions must be 1 or more")?;
            }
            "--malformed-every" => options.malformed_every = number("--malformed-every", value("--malformed-every")?)?,
            "--input" => options.input = value("--input")?,
            "--output" => options.output = value("--output")?,
            "--late" => options.late = value("--late")?,
            "--dead-letters" => options.dead_letters = value("--dead-letters")?,
            "--group" => options.group = value("--group")?,
            "--tumbling" => {
                options.window = duration("--tumbling", value("--tumbling")?)?;
                if options.window.is_zero() {
                    return Err("--tumbling: a window must be at least 1ms long".into());
                }
            }
            "--out-of-orderness" => {
                options.out_of_orderness = duration("--out-of-orderness", value("--out-of-orderness")?)?
            }
            "--idle-timeout" => options.idle_timeout = Some(duration("--idle-timeout", value("--idle-timeout")?)?),
            "--bounded" => options.bounded = true,
            "--quiet" => options.quiet = true,
            other if other.starts_with('-') => return Err(format!("unknown flag {other}")),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if options.brokers.is_empty() {
        return Err("give the Kafka brokers: --brokers HOST:PORT (e.g. 127.0.0.1:19092)".into());
    }
    Ok(Some(options))
}

fn main() -> ExitCode {
    let (cluster, args) = match Cluster::from_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(error) => return usage_error(&error.to_string()),
    };
    let options = match parse(args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}{CLUSTER_FLAGS_HELP}");
            return ExitCode::SUCCESS;
        }
        Err(message) => return usage_error(&message),
    };
    let result = match options.generate {
        Some(events) => generate(&options, events),
        None => run(cluster, &options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kafka_pipeline: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("kafka_pipeline: {message}\nRun kafka_pipeline --help for usage.");
    ExitCode::from(2)
}

fn kafka_config(options: &Options) -> KafkaConfig {
    options.properties.iter().fold(KafkaConfig::new(&options.brokers), |config, (k, v)| config.set(k, v))
}

/// Produces the generated data set: generated partition `p` to topic partition
/// `p % partitions`, in order, keyed by the reading's key.
fn generate(options: &Options, events: u64) -> Result<(), String> {
    let config = kafka_config(options);
    let created = create_topic(&config, &options.input, options.partitions, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let mut client = ClientConfig::new();
    for (key, value) in config.iter() {
        client.set(key, value);
    }
    let producer: BaseProducer =
        client.set("enable.idempotence", "true").create().map_err(|e| format!("creating a producer: {e}"))?;
    for p in 0..GENERATED_PARTITIONS {
        let partition = (p as i32) % options.partitions;
        for (i, row) in generated_partition(p, events).enumerate() {
            let malformed = options.malformed_every > 0 && (i as u64 + 1).is_multiple_of(options.malformed_every);
            let payload = if malformed {
                format!("not a reading: {},{},{}", row.event_time_ms, row.key, row.value).into_bytes()
            } else {
                serde_json::to_vec(&row).map_err(|e| e.to_string())?
            };
            let mut record = BaseRecord::to(&options.input).partition(partition).key(&row.key).payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(format!("producing to {}: {e}", options.input)),
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).map_err(|e| format!("delivering to {}: {e}", options.input))?;
    if !options.quiet {
        let created =
            if created { format!(" (created with {} partitions)", options.partitions) } else { String::new() };
        eprintln!("kafka_pipeline: produced {events} readings to {}{created}", options.input);
    }
    Ok(())
}

/// On SIGTERM or SIGINT: read no more, let the sinks write and acknowledge what follows from
/// what was read, commit the offsets that are then safe, and exit. Windows still open are not
/// emitted (the input has not ended); a restart from the committed offsets reads their
/// records again.
fn stop_gracefully(source: &KafkaSource<InputRow>, sinks: &[SinkHandle], options: &Options) -> Result<(), String> {
    if !options.quiet {
        eprintln!("kafka_pipeline: stopping: reading no more, committing what the sinks have written");
    }
    source.stop();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !source.is_stopped() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for sink in sinks {
        sink.check().map_err(|e| e.to_string())?;
    }
    if !source.is_stopped() {
        return Err("stopping: the offsets were not committed within 60 s; a restart reads more again".into());
    }
    if !options.quiet {
        let committed: i64 = source.stats().committed_offsets().iter().map(|(_, _, offset)| offset).sum();
        eprintln!("kafka_pipeline: stopped; {committed} readings committed in group {}", options.group);
    }
    Ok(())
}

/// The key of a window result in the output topic.
fn result_key(row: &OutputRow) -> String {
    format!("{}@{}", row.key, row.window_start_ms)
}

fn run(cluster: Cluster, options: &Options) -> Result<(), String> {
    let config = kafka_config(options);
    let mut source = KafkaSource::<InputRow>::json(config.clone())
        .topic(&options.input)
        .group_id(&options.group)
        .start(StartOffsets::Committed)
        .record_event_time()
        .dead_letter_topic(&options.dead_letters);
    if options.bounded {
        source = source.bounded();
    }
    let source = source.build().map_err(|e| e.to_string())?;
    let stopper = source.clone();
    let kafka_stats = Arc::clone(source.stats());
    let results = KafkaSink::<OutputRow>::builder(config.clone(), &options.output)
        .format(SinkFormat::Upsert)
        .key(result_key)
        .dead_letter_topic(&options.dead_letters)
        .build()
        .map_err(|e| e.to_string())?;
    let late = KafkaSink::<InputRow>::builder(config, &options.late)
        .format(SinkFormat::AppendOnly)
        .key(|row: &InputRow| row.key.clone())
        .dead_letter_topic(&options.dead_letters)
        .build()
        .map_err(|e| e.to_string())?;
    // The output topics, with the policy each needs (results: compacted upserts), or a clear
    // error if one exists with another; left to the broker, they would get its defaults.
    let timeout = Duration::from_secs(30);
    results.ensure_topic(options.partitions, timeout).map_err(|e| e.to_string())?;
    late.ensure_topic(options.partitions, timeout).map_err(|e| e.to_string())?;
    ensure_topic(&kafka_config(options), &options.dead_letters, options.partitions, TopicPolicy::Delete, timeout)
        .map_err(|e| e.to_string())?;
    let spec = WindowSpec::tumbling(options.window).map_err(|e| e.to_string())?;
    let mut watermarks = WatermarkStrategy::bounded_out_of_orderness(options.out_of_orderness);
    if let Some(timeout) = options.idle_timeout {
        watermarks = watermarks.with_idle_timeout(timeout);
    }
    let metrics = SourceMetrics::new(options.input.clone());
    let sinks = [SinkHandle::new(options.output.clone()), SinkHandle::new(options.late.clone())];

    let (worker_metrics, worker_sinks) = (Arc::clone(&metrics), sinks.clone());
    let job = std::thread::spawn(move || {
        execute(&cluster, move |worker| {
            let (source, results, late, sinks) = (source.clone(), results.clone(), late.clone(), worker_sinks.clone());
            let config = SourceConfig::new("readings")
                .watermarks(watermarks.clone())
                .late(LatePolicy::SideOutput)
                .metrics(Arc::clone(&worker_metrics));
            worker.dataflow::<Time, _, _>(move |scope| {
                let readings = source.read(scope, config);
                let stats =
                    readings.data.map(InputRow::into_event).windows(spec).name("window-stats").aggregate(AllStats).map(
                        |r| OutputRow {
                            window_start_ms: r.window.start,
                            window_end_ms: r.window.end,
                            key: r.key,
                            count: r.value.count,
                            sum: r.value.sum,
                            min: r.value.min,
                            max: r.value.max,
                        },
                    );
                results.write(stats, &sinks[0]);
                late.write(readings.late.map(|l| l.record), &sinks[1]);
            });
        })
    });

    // SIGTERM or SIGINT: stop gracefully (see `stop_gracefully`).
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(|e| format!("handling signal {signal}: {e}"))?;
    }
    let mut last = Instant::now();
    let mut errors_shown = 0;
    while !job.is_finished() {
        if stop.load(Ordering::SeqCst) {
            return stop_gracefully(&stopper, &sinks, options);
        }
        std::thread::sleep(Duration::from_millis(50));
        if !options.quiet && last.elapsed() >= Duration::from_secs(1) {
            eprintln!("kafka_pipeline: {}", metrics.progress_line());
            // An outage is shown while it lasts; other transient client errors (retried) once.
            if let Some((lasted, reason)) = kafka_stats.outage() {
                eprintln!("kafka_pipeline: Kafka brokers unreachable for {} s (retrying): {reason}", lasted.as_secs());
                errors_shown = kafka_stats.errors();
            } else if kafka_stats.errors() > errors_shown {
                errors_shown = kafka_stats.errors();
                if let Some(error) = kafka_stats.recent_errors().last() {
                    eprintln!("kafka_pipeline: Kafka (retrying): {error}");
                }
            }
            last = Instant::now();
        }
        if let Some(error) = sinks.iter().find_map(SinkHandle::error) {
            // A sink that failed stops writing; its offsets are not committed past what it
            // wrote. Restart the job to retry from there.
            return Err(error.to_string());
        }
    }
    job.join().map_err(|_| "a worker thread panicked".to_string())?.map_err(|e| e.to_string())?;
    for sink in &sinks {
        sink.check().map_err(|e| e.to_string())?;
    }
    let errors = metrics.errors();
    if !errors.is_empty() {
        return Err(format!("the input was not read completely: {}", errors.join("; ")));
    }
    if !options.quiet {
        let totals = metrics.totals();
        eprintln!(
            "kafka_pipeline: {} readings, {} late (to {}), {} malformed (to {})",
            totals.records, totals.late_side_output, options.late, totals.dead_letters, options.dead_letters
        );
    }
    Ok(())
}
