//! `kafka_pipeline`: windowed count, sum, min and max per key, from a Kafka topic of JSON
//! readings to Kafka topics — results as upserts, late readings and malformed messages to
//! topics of their own — at least once.
//!
//! ```text
//! kafka_pipeline --brokers HOST:PORT --generate N [--input readings] [--partitions 4]
//! kafka_pipeline --brokers HOST:PORT [--input readings] [--output window-stats]
//!                [--late late-readings] [--dead-letters readings-dead-letters]
//!                [--tumbling 10s] [--out-of-orderness 5s] [--bounded]
//!                [--checkpoint-dir DIR [--checkpoint-interval 10s] [--exactly-once]] [-w N]
//! ```
//!
//! Run `kafka_pipeline --help` for every flag.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tideline::prelude::*;
use tideline::runtime::metrics::{SourceMetrics, StateMetrics};
use tideline::runtime::{Cluster, execute};
use tideline::sink::SinkHandle;
use tideline::source::SourceConfig;
use tideline::window::aggregate::AllStats;
use tideline_connectors::kafka::{
    KafkaConfig, KafkaSink, KafkaSource, SinkFormat, StartOffsets, TopicPolicy, create_topic, ensure_topic,
};
use tideline_examples::cli::{
    ClusterArgs, HelpFlag, at_least_one, duration, open_checkpoints, positive_duration, usage_error, whole_number,
};
use tideline_examples::observe::ObserveArgs;
use tideline_examples::{GENERATED_PARTITIONS, InputRow, OutputRow, generated_partition};

/// kafka_pipeline: windowed count, sum, min and max per key, from a Kafka topic of JSON
/// readings to Kafka topics, at least once.
#[derive(Parser, Debug)]
#[command(
    name = "kafka_pipeline",
    version,
    disable_help_flag = true,
    override_usage = "kafka_pipeline --brokers HOST:PORT --generate N [--input TOPIC] [--partitions P]
       kafka_pipeline --brokers HOST:PORT [TOPICS] [WINDOWS] [--bounded] [-w N]",
    after_help = "Durations are a whole number with a unit: ms, s, m or h."
)]
struct Cli {
    #[command(flatten)]
    help: HelpFlag,
    #[command(flatten)]
    options: Options,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    observe: ObserveArgs,
}

#[derive(clap::Args, Clone, Debug)]
struct Options {
    /// Bootstrap servers (comma-separated)
    #[arg(long, value_name = "HOST:PORT", required = true)]
    brokers: String,
    /// Another client property, e.g. --set security.protocol=SASL_SSL (which needs a build
    /// with --features kafka-ssl); repeat for more
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = key_value)]
    properties: Vec<(String, String)>,
    /// Produce N generated sensor readings to --input (the window_agg data set: out of order
    /// by up to 3 s, one in a thousand 5-30 s late), generated partition p to topic partition
    /// p, then exit
    #[arg(long, value_name = "N", value_parser = whole_number, help_heading = "Generate (then exit)")]
    generate: Option<u64>,
    /// Create --input with P partitions if it does not exist; when running, the output topics
    /// that do not exist are created with P partitions: --output compacted
    /// (cleanup.policy=compact), the others deleting by retention
    #[arg(long, value_name = "P", default_value_t = GENERATED_PARTITIONS as i32, value_parser = partitions,
          help_heading = "Generate (then exit)")]
    partitions: i32,
    /// Replace every K-th message of each partition by one that is not a reading (0: none)
    #[arg(long, value_name = "K", default_value_t = 0, value_parser = whole_number, help_heading = "Generate (then exit)")]
    malformed_every: u64,
    /// JSON readings {"event_time_ms":..,"key":..,"value":..}
    #[arg(long, value_name = "TOPIC", default_value = "readings", help_heading = "Topics")]
    input: String,
    /// Window results as upserts: key KEY@WINDOW_START_MS, value JSON {window_start_ms,
    /// window_end_ms, key, count, sum, min, max}
    #[arg(long, value_name = "TOPIC", default_value = "window-stats", help_heading = "Topics")]
    output: String,
    /// Readings late for every window they belong to (their windows had expired), unchanged
    #[arg(long, value_name = "TOPIC", default_value = "late-readings", help_heading = "Topics")]
    late: String,
    /// Messages that are not readings, with headers saying where they came from and why; also
    /// output records the broker refuses (e.g. too large), described with the reason
    #[arg(long, value_name = "TOPIC", default_value = "readings-dead-letters", help_heading = "Topics")]
    dead_letters: String,
    /// Consumer group the offsets are committed to; a restart resumes from its committed
    /// offsets
    #[arg(long, value_name = "GROUP", default_value = "kafka-pipeline", help_heading = "Topics")]
    group: String,
    /// Tumbling windows of SIZE
    #[arg(long = "tumbling", value_name = "SIZE", default_value = "10s", value_parser = positive_duration,
          help_heading = "Windows")]
    window: Duration,
    /// Watermark = largest event time seen - D, per partition
    #[arg(long, value_name = "D", default_value = "5s", value_parser = duration, help_heading = "Windows")]
    out_of_orderness: Duration,
    /// Partitions silent for T stop holding the watermark [default: never]
    #[arg(long, value_name = "T", value_parser = duration, help_heading = "Windows")]
    idle_timeout: Option<Duration>,
    /// Read to the end offsets seen at the start, write everything, commit, and exit
    /// (default: run until interrupted: SIGTERM or SIGINT stops reading, lets the sinks write
    /// what follows, commits, and exits 0; windows still open are not written, a restart reads
    /// them again)
    #[arg(long, help_heading = "Windows")]
    bounded: bool,
    /// No progress on stderr
    #[arg(long)]
    quiet: bool,
    /// Checkpoint into DIR, and resume from its newest checkpoint when started again: killed
    /// at any moment, the job reads its partitions again from the checkpointed offsets with the
    /// watermarks they had, so that every window result it sends again has the value of an
    /// uninterrupted run (at least once: results after the checkpoint may be sent twice, never
    /// partial). The checkpoints are removed when a --bounded run completes
    #[arg(long, value_name = "DIR", help_heading = "Checkpoints")]
    checkpoint_dir: Option<String>,
    /// How often to checkpoint (processing time)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration, help_heading = "Checkpoints")]
    checkpoint_interval: Duration,
    /// Exactly once (needs --checkpoint-dir): each worker writes results and late readings in
    /// one Kafka transaction per checkpoint, committed once the checkpoint is complete; readers
    /// with isolation.level=read_committed see every result once. Output appears per
    /// checkpoint (its latency is --checkpoint-interval); restart with the same -w
    #[arg(long, help_heading = "Checkpoints", requires = "checkpoint_dir")]
    exactly_once: bool,
}

/// `--set KEY=VALUE`.
fn key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    Ok((key.to_string(), value.to_string()))
}

/// `--partitions`: a partition count as Kafka takes it.
fn partitions(text: &str) -> Result<i32, String> {
    i32::try_from(at_least_one(text)?).map_err(|_| format!("at most {} partitions", i32::MAX))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs (RUST_LOG, --log-format) and the metrics endpoint (--metrics-addr), for the whole run.
    let Some(_observability) = cli.observe.start("kafka_pipeline") else { return ExitCode::FAILURE };
    let cluster = cli.cluster.to_cluster().unwrap_or_else(|message| usage_error::<Cli>(message));
    let options = cli.options;
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
    let mut results = KafkaSink::<OutputRow>::builder(config.clone(), &options.output)
        .format(SinkFormat::Upsert)
        .key(result_key)
        .dead_letter_topic(&options.dead_letters);
    let mut late = KafkaSink::<InputRow>::builder(config, &options.late)
        .format(SinkFormat::AppendOnly)
        .key(|row: &InputRow| row.key.clone())
        .dead_letter_topic(&options.dead_letters);
    if options.exactly_once {
        // Stable transactional ids per pipeline (its group) and sink.
        results = results.exactly_once(format!("{}-results", options.group));
        late = late.exactly_once(format!("{}-late", options.group));
    }
    let results = results.build().map_err(|e| e.to_string())?;
    let late = late.build().map_err(|e| e.to_string())?;
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
    // Checkpoints: one instance per directory (process 0 holds its lock for the whole run).
    let (checkpoints, _lock) = open_checkpoints(
        "kafka_pipeline",
        options.checkpoint_dir.as_deref(),
        options.checkpoint_interval,
        cluster.process,
        options.quiet,
    )?;
    let metrics = SourceMetrics::new(options.input.clone());
    let sinks = [SinkHandle::new(options.output.clone()), SinkHandle::new(options.late.clone())];

    let state = StateMetrics::new();
    let (worker_metrics, worker_sinks, worker_state) = (Arc::clone(&metrics), sinks.clone(), Arc::clone(&state));
    let job = std::thread::spawn(move || {
        execute(&cluster, move |worker| {
            let (source, results, late, sinks) = (source.clone(), results.clone(), late.clone(), worker_sinks.clone());
            let config =
                SourceConfig::new("readings").watermarks(watermarks.clone()).metrics(Arc::clone(&worker_metrics));
            let window_state = Arc::clone(&worker_state);
            let checkpoints = checkpoints.clone();
            worker.dataflow::<Time, _, _>(move |scope| {
                if let Some(checkpoints) = &checkpoints {
                    checkpoints.install(scope);
                }
                let readings = source.read(scope, config);
                let (stats, late_readings) = readings
                    .data
                    .map(InputRow::into_event)
                    .windows(spec)
                    .name("window-stats")
                    .state_metrics(window_state)
                    .aggregate_with_late(AllStats);
                let stats = stats.map(OutputRow::from);
                results.write(stats, &sinks[0]);
                late.write(late_readings.map(InputRow::from_event), &sinks[1]);
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
            "kafka_pipeline: {} readings ({} behind the watermark), {} late for every window (to {}), {} malformed (to {})",
            totals.records,
            totals.behind_watermark,
            state.late_skipped(),
            options.late,
            totals.dead_letters,
            options.dead_letters
        );
    }
    Ok(())
}
