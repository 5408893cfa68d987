//! The configuration: one TOML file, parsed with spans, validated into plain typed structs.
//!
//! Every rule that can reject a file lives here, so `fulcrum check`, the daemon at start and (later)
//! reload all apply the same ones. Names are the public contract in CONTRACT.md.

mod error;
mod fault;
mod limits;
mod raw;
mod strategy;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

pub use error::Error;
use error::Source;
pub use fault::{CheckKind, EjectionConfig, ExpectStatus, HealthCheckConfig, RetryOn};
pub use limits::{HttpLimits, MOST_REQUEST_HEADERS};
pub use strategy::{HashAlgorithm, HashConfig, HashKey, StrategyKind};

/// The validated configuration of the whole daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for messages and reload).
    pub path: PathBuf,
    /// Process-wide settings.
    pub runtime: RuntimeConfig,
    /// The admin endpoint, absent when not configured.
    pub admin: Option<AdminConfig>,
    /// Listeners, sorted by name.
    pub listeners: Vec<ListenerConfig>,
    /// Upstream pools, sorted by name.
    pub upstreams: Vec<UpstreamConfig>,
}

/// `[runtime]`: threads, the global connection cap and the shutdown grace period.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Worker threads; 0 in the file becomes the number of CPU cores here.
    pub worker_threads: usize,
    /// Client connections open at once over all listeners; beyond it they wait in the backlog.
    pub max_connections: u32,
    /// How long in-flight work may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
}

/// `[admin]`: where the admin HTTP endpoint listens, and what a POST must carry.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where the admin endpoint listens.
    pub bind: AdminBind,
    /// The bearer token every POST must present; `None` = POSTs are open to whoever can connect.
    pub token: Option<String>,
}

/// `admin.bind`: a TCP address, or a unix socket path (`unix:PATH`) that file permissions guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminBind {
    /// `IP:PORT`.
    Tcp(SocketAddr),
    /// `unix:PATH`: a stream socket created with mode 0600.
    Unix(PathBuf),
}

/// How a listener treats the bytes it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// L7: HTTP/1.1 and h2c, proxied request by request.
    Http,
    /// L4: one upstream connection per client connection, bytes copied both ways.
    Tcp,
}

/// `[listeners.NAME]`.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// The TOML table name: the `listener` label in logs and metrics.
    pub name: String,
    /// Addresses to bind (IPv4 and IPv6; port 0 picks a free port).
    pub binds: Vec<SocketAddr>,
    /// L7 or L4.
    pub mode: Mode,
    /// Where the traffic goes.
    pub target: Target,
    /// The listen(2) backlog.
    pub backlog: u32,
    /// One SO_REUSEPORT socket per worker (true) or one socket shared by all workers (false).
    pub reuse_port: bool,
    /// http: how long a keep-alive connection may idle between requests, and the longest silence
    /// during a request body; tcp: the longest a session may pass no byte either way.
    pub idle_timeout: std::time::Duration,
    /// http: what a request may be and how long its head may take.
    pub http: HttpLimits,
    /// http: where each request's line goes, and in which format (`None`: no access log).
    pub access_log: Option<AccessLogConfig>,
    /// http: start a W3C `traceparent` for a request that has none (or an invalid one).
    pub tracing: bool,
}

/// `access_log` and `access_log_format` of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Where the lines are written.
    pub destination: LogDestination,
    /// How each line is written.
    pub format: LogFormat,
}

/// Where an access log's lines go; listeners naming the same one share its writer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogDestination {
    /// The daemon's standard output (`access_log = "stdout"`, e.g. for journald).
    Stdout,
    /// A file, opened for appending (created when missing) and reopened on SIGUSR1.
    File(PathBuf),
}

/// `access_log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default).
    Json,
    /// The NCSA combined format, as Apache and nginx write it, with the request id appended.
    Combined,
}

/// What a listener does with a request.
#[derive(Debug, Clone)]
pub enum Target {
    /// Proxy to the named upstream.
    Upstream(String),
    /// Answer directly with a fixed response.
    Respond(RespondConfig),
}

/// A fixed response (`respond = { status, body, headers }`).
#[derive(Debug, Clone)]
pub struct RespondConfig {
    /// Status code sent.
    pub status: StatusCode,
    /// Body sent.
    pub body: Bytes,
    /// Extra headers sent.
    pub headers: HeaderMap,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The TOML table name: the `upstream` label in metrics.
    pub name: String,
    /// How servers are picked.
    pub strategy: StrategyKind,
    /// Peak EWMA's time constant (10 s unless set; only `peak_ewma` reads it).
    pub ewma_decay: Duration,
    /// The consistent hash's settings; `Some` exactly when `strategy` is `consistent_hash`.
    pub hash: Option<HashConfig>,
    /// Ceiling on one TCP connect to a server.
    pub connect_timeout: Duration,
    /// Ceiling from sending a request to receiving the response head (http mode).
    pub response_timeout: Duration,
    /// Other servers tried after a failed attempt (never the same server twice).
    pub retries: u32,
    /// Extra retry conditions for idempotent requests.
    pub retry_on: RetryOn,
    /// Retries allowed as a share of first attempts over 10 s (at least 3 per second).
    pub retry_budget: f64,
    /// How long a server that (re)enters service takes to reach its full weight; zero = off, and
    /// always zero with `consistent_hash` (a returning server gets its keys back at once).
    pub slow_start: Duration,
    /// Active checks, when configured.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection from real traffic (on by default).
    pub ejection: EjectionConfig,
    /// An idle pooled upstream connection is closed after this.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per server, per worker.
    pub pool_max_idle_per_server: usize,
    /// The servers, in file order.
    pub servers: Vec<ServerConfig>,
}

/// One entry of `servers = [...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The address as written: the server's identity in metrics, the admin API and reloads.
    pub address: String,
    /// The address resolved at load time.
    pub addr: SocketAddr,
    /// Relative share of traffic, 1..=1000.
    pub weight: u32,
    /// Takes traffic only when no primary can.
    pub backup: bool,
    /// Configured but takes no traffic.
    pub down: bool,
    /// In-flight requests (http) or connections (tcp) at once; 0 = no limit.
    pub max_connections: u32,
}

/// Where the daemon looks when `-c` is not given.
pub const DEFAULT_PATH: &str = "/etc/fulcrum/fulcrum.toml";

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text`, naming `path` in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Error> {
        let src = Source { path, text };
        let file: raw::File = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
        validate::Validator { src: &src }.config(file)
    }
}

#[cfg(test)]
mod tests;
