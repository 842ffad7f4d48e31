//! Observability flags shared by the example programs: logs and the metrics endpoint.
//!
//! Flatten [`ObserveArgs`] into a program's clap parser and call [`ObserveArgs::install`]
//! first thing in `main`; keep the returned [`Observability`] alive for the whole run.
//!
//! ```
//! use clap::Parser;
//! use tideline_examples::observe::{LogFormat, ObserveArgs};
//!
//! /// A program with the observability flags.
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     observe: ObserveArgs,
//! }
//!
//! let cli = Cli::parse_from(["prog", "--metrics-addr", "127.0.0.1:0", "--log-format", "json"]);
//! assert_eq!(cli.observe.log_format, LogFormat::Json);
//! let observability = cli.observe.install().unwrap(); // logs to stderr, serves /metrics
//! let addr = observability.metrics_addr().unwrap();
//! assert!(addr.ip().is_loopback());
//! // ... build and run the dataflow; `observability` is dropped at the end of `main`.
//! ```

use std::net::SocketAddr;

use tideline::runtime::metrics::{self, MetricsServer};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written (to standard error).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The observability flags: `--metrics-addr HOST:PORT` and `--log-format human|json`.
///
/// Log levels come from `RUST_LOG` (`tracing_subscriber`'s `EnvFilter` syntax, e.g.
/// `RUST_LOG=info` or `RUST_LOG=tideline=debug,warn`); without it, warnings and errors only.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct ObserveArgs {
    /// Serve Prometheus metrics at http://HOST:PORT/metrics while the program runs. Every
    /// process of a cluster serves its own; processes on one host need distinct ports.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Log format on standard error (levels from RUST_LOG; default: warnings and errors).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// What [`ObserveArgs::install`] started; keep it alive while the program runs (dropping it
/// stops the metrics endpoint; the log subscriber stays).
#[derive(Debug)]
#[must_use = "dropping it stops the metrics endpoint"]
pub struct Observability {
    metrics: Option<MetricsServer>,
}

impl Observability {
    /// Where the metrics endpoint listens, if one was asked for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }
}

/// The filter when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "warn";

impl ObserveArgs {
    /// [`install`](Self::install) for a program's `main`: on failure, says so on standard
    /// error as `PROGRAM: error: …` and returns `None` (exit with a failure then).
    pub fn start(&self, program: &str) -> Option<Observability> {
        match self.install() {
            Ok(observability) => Some(observability),
            Err(error) => {
                eprintln!("{program}: error: {error}");
                None
            }
        }
    }

    /// Installs the process's log subscriber (filtered by `RUST_LOG`, in the chosen format,
    /// to standard error) and starts the metrics endpoint if `--metrics-addr` was given.
    ///
    /// A subscriber installed earlier (e.g. by a test harness) is kept. Fails if `RUST_LOG`
    /// does not parse or the endpoint cannot listen.
    pub fn install(&self) -> tideline::Result<Observability> {
        let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
            Ok(directives) => EnvFilter::try_new(&directives)
                .map_err(|e| tideline::Error::Config(format!("RUST_LOG={directives:?} does not parse: {e}")))?,
            Err(_) => EnvFilter::new(DEFAULT_FILTER),
        };
        let subscriber = self.subscriber(filter, std::io::stderr);
        if tracing::subscriber::set_global_default(subscriber).is_err() {
            tracing::debug!("a log subscriber was already installed; keeping it");
        }
        let metrics = self.metrics_addr.as_deref().map(metrics::serve).transpose()?;
        Ok(Observability { metrics })
    }

    /// The subscriber [`install`](Self::install) installs, writing to `writer`.
    fn subscriber<W>(&self, filter: EnvFilter, writer: W) -> Box<dyn tracing::Subscriber + Send + Sync>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
        match self.log_format {
            LogFormat::Human => Box::new(builder.with_ansi(false).finish()),
            LogFormat::Json => Box::new(builder.json().flatten_event(true).with_current_span(false).finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        observe: ObserveArgs,
    }

    #[test]
    fn defaults_are_human_logs_and_no_endpoint() {
        let cli = Cli::try_parse_from(["prog"]).unwrap();
        assert_eq!(cli.observe, ObserveArgs { metrics_addr: None, log_format: LogFormat::Human });
    }

    #[test]
    fn parses_both_flags_and_rejects_unknown_formats() {
        let cli = Cli::try_parse_from(["prog", "--metrics-addr", "0.0.0.0:9100", "--log-format", "json"]).unwrap();
        assert_eq!(cli.observe.metrics_addr.as_deref(), Some("0.0.0.0:9100"));
        assert_eq!(cli.observe.log_format, LogFormat::Json);
        let error = Cli::try_parse_from(["prog", "--log-format", "xml"]).unwrap_err();
        assert!(error.to_string().contains("human"), "{error}");
    }

    /// A writer the tests can read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    fn log_with(format: LogFormat, filter: &str) -> String {
        let buffer = Buffer::default();
        let args = ObserveArgs { metrics_addr: None, log_format: format };
        let subscriber = args.subscriber(EnvFilter::new(filter), buffer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(source = "readings", partition = 3, "partition idle");
            tracing::debug!("hidden below info");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_logs_are_one_object_per_line_with_the_fields() {
        let text = log_with(LogFormat::Json, "info");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let event: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(event["level"], "INFO");
        assert_eq!(event["message"], "partition idle");
        assert_eq!(event["source"], "readings");
        assert_eq!(event["partition"], 3);
    }

    #[test]
    fn human_logs_are_plain_lines_filtered_by_level() {
        let text = log_with(LogFormat::Human, "info");
        assert!(text.contains("INFO") && text.contains("partition idle") && text.contains("source=\"readings\""));
        assert!(!text.contains("hidden"));
        assert!(!text.contains('\u{1b}'), "no colour codes: logs go to files too");
        assert!(log_with(LogFormat::Human, "warn").is_empty());
    }

    #[test]
    fn install_serves_metrics_when_asked() {
        let args = ObserveArgs { metrics_addr: Some("127.0.0.1:0".into()), log_format: LogFormat::Human };
        let observability = args.install().unwrap();
        let addr = observability.metrics_addr().expect("an endpoint");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        drop(observability);
        assert!(ObserveArgs::default().install().unwrap().metrics_addr().is_none());
    }

    #[test]
    fn an_address_that_cannot_be_served_is_an_error() {
        let args = ObserveArgs { metrics_addr: Some("not-an-address".into()), log_format: LogFormat::Human };
        let error = args.install().unwrap_err();
        assert!(matches!(error, tideline::Error::MetricsEndpoint { .. }), "{error}");
    }
}
