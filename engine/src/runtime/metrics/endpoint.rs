//! The `/metrics` HTTP endpoint.
//!
//! `tiny_http` answers on its own threads (an accept thread and one per connection); one more
//! thread here renders [`encode_text`](super::encode_text) for each request. No async runtime:
//! a scrape every few seconds needs none, and workers never wait for it.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use tiny_http::{Header, Method, Response, Server};

use crate::error::{Error, Result};

/// A running metrics endpoint; dropping it (or [`shutdown`](Self::shutdown)) stops it.
#[must_use = "the endpoint stops when its handle is dropped"]
pub struct MetricsServer {
    server: Arc<Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer").field("addr", &self.addr).finish()
    }
}

/// Serves this process's metrics in the Prometheus text format at `http://ADDR/metrics`
/// until the returned handle is dropped.
///
/// Opt-in: nothing is served unless a program calls this. Every process of a cluster serves
/// its own metrics on its own address (nothing is forwarded between processes); Prometheus
/// scrapes each process as one target, and adds an `instance` label that tells them apart.
/// Processes on one host need distinct ports. Port 0 picks a free port:
/// [`MetricsServer::local_addr`] says which.
///
/// `GET /metrics` gets the exposition ([`encode_text`](super::encode_text)), `GET /` a line
/// pointing there, anything else 404.
///
/// ```
/// use std::io::{Read, Write};
///
/// let server = tideline::runtime::metrics::serve("127.0.0.1:0").unwrap();
/// let mut stream = std::net::TcpStream::connect(server.local_addr()).unwrap();
/// stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
/// let mut reply = String::new();
/// stream.read_to_string(&mut reply).unwrap();
/// assert!(reply.starts_with("HTTP/1.1 200"));
/// ```
pub fn serve(addr: impl ToSocketAddrs + std::fmt::Display) -> Result<MetricsServer> {
    let fail = |source| Error::MetricsEndpoint { addr: addr.to_string(), source };
    let listener = TcpListener::bind(&addr).map_err(fail)?;
    let local = listener.local_addr().map_err(fail)?;
    let server = Server::from_listener(listener, None).map_err(|e| fail(std::io::Error::other(e.to_string())))?;
    let server = Arc::new(server);
    let serving = Arc::clone(&server);
    let thread =
        std::thread::Builder::new().name("tideline-metrics".into()).spawn(move || answer(&serving)).map_err(fail)?;
    tracing::info!(addr = %local, "serving metrics at http://{local}/metrics");
    Ok(MetricsServer { server, addr: local, thread: Some(thread) })
}

fn answer(server: &Server) {
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or_default();
        let result = match (request.method(), path) {
            (Method::Get, "/metrics") => {
                let header = Header::from_bytes("Content-Type", CONTENT_TYPE).expect("a valid header");
                request.respond(Response::from_string(super::encode_text()).with_header(header))
            }
            (Method::Get, "/") => request.respond(Response::from_string("Tideline: metrics at /metrics\n")),
            _ => request.respond(Response::from_string("not found\n").with_status_code(404)),
        };
        if let Err(error) = result {
            tracing::debug!(%error, "metrics endpoint: answering a request failed");
        }
    }
}

impl MetricsServer {
    /// The address the endpoint listens on (with the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the serving thread to finish.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.server.unblock();
            if thread.join().is_err() {
                tracing::warn!("the metrics endpoint's thread panicked");
            }
            tracing::debug!(addr = %self.addr, "metrics endpoint stopped");
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
