//! The configuration: one TOML file, parsed with spans, validated into plain typed structs.
//!
//! Every rule that can reject a file lives here, so `fulcrum check`, the daemon at start and (later)
//! reload all apply the same ones. Names are the public contract in CONTRACT.md.

mod error;
mod raw;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use toml::Spanned;

pub use error::Error;
use error::Source;

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

/// `[admin]`: where the admin HTTP endpoint listens.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The TCP address of the admin endpoint.
    pub bind: SocketAddr,
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

/// Load-balancing strategies the daemon knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyKind {
    /// Smooth weighted round robin.
    RoundRobin,
}

impl StrategyKind {
    /// The name used in the config file and in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
        }
    }
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The TOML table name: the `upstream` label in metrics.
    pub name: String,
    /// How servers are picked.
    pub strategy: StrategyKind,
    /// Ceiling on one TCP connect to a server.
    pub connect_timeout: Duration,
    /// Ceiling from sending a request to receiving the response head (http mode).
    pub response_timeout: Duration,
    /// Other servers tried after the first one fails to connect.
    pub retries: u32,
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
        Validator { src: &src }.config(file)
    }
}

struct Validator<'a> {
    src: &'a Source<'a>,
}

impl Validator<'_> {
    fn err(
        &self,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) -> Error {
        self.src.error(span.start, key, msg)
    }

    fn reserved(&self, key: &str, value: &raw::Reserved) -> Result<(), Error> {
        match value {
            Some(v) => Err(self.err(
                v.span(),
                key,
                "not supported yet in this version of fulcrum",
            )),
            None => Ok(()),
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, Error> {
        let Some(value) = value else {
            return Ok(default);
        };
        humantime::parse_duration(value.get_ref().trim()).map_err(|e| {
            self.err(
                value.span(),
                key,
                format!(
                    "`{}` is not a duration ({e}); write e.g. \"500ms\", \"2s\", \"5m\"",
                    value.get_ref()
                ),
            )
        })
    }

    /// Like [`Self::duration`], but zero is rejected (a zero timeout would fail every attempt).
    fn positive_duration(
        &self,
        key: &str,
        value: Option<Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, Error> {
        let span = value.as_ref().map(|v| v.span());
        let d = self.duration(key, value, default)?;
        match span {
            Some(span) if d.is_zero() => Err(self.err(span, key, "must be greater than 0")),
            _ => Ok(d),
        }
    }

    fn config(&self, file: raw::File) -> Result<Config, Error> {
        let runtime = self.runtime(file.runtime)?;
        let admin = file.admin.map(|a| self.admin(a)).transpose()?;
        let mut upstreams = Vec::with_capacity(file.upstreams.len());
        for (name, up) in file.upstreams {
            upstreams.push(self.upstream(name, up)?);
        }
        let mut listeners = Vec::with_capacity(file.listeners.len());
        let mut bound: HashMap<SocketAddr, String> = HashMap::new();
        for (name, l) in file.listeners {
            let listener = self.listener(&name, l, &upstreams, &mut bound)?;
            listeners.push(listener);
        }
        Ok(Config {
            path: self.src.path.to_path_buf(),
            runtime,
            admin,
            listeners,
            upstreams,
        })
    }

    fn runtime(&self, r: raw::Runtime) -> Result<RuntimeConfig, Error> {
        let worker_threads = match r.worker_threads.map(Spanned::into_inner) {
            None | Some(0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) => n,
        };
        let max_connections = match r.max_connections {
            None => 65536,
            Some(m) if *m.get_ref() == 0 => {
                return Err(self.err(m.span(), "runtime.max_connections", "must be at least 1"))
            }
            Some(m) => m.into_inner(),
        };
        let shutdown_timeout = self.duration(
            "runtime.shutdown_timeout",
            r.shutdown_timeout,
            Duration::from_secs(30),
        )?;
        Ok(RuntimeConfig {
            worker_threads,
            max_connections,
            shutdown_timeout,
        })
    }

    fn admin(&self, a: raw::Admin) -> Result<AdminConfig, Error> {
        self.reserved("admin.token", &a.token)?;
        let text = a.bind.get_ref();
        if text.starts_with("unix:") {
            return Err(self.err(
                a.bind.span(),
                "admin.bind",
                "unix sockets are not supported yet",
            ));
        }
        let bind = text.parse().map_err(|_| {
            self.err(
                a.bind.span(),
                "admin.bind",
                format!("`{text}` is not an IP:port address"),
            )
        })?;
        Ok(AdminConfig { bind })
    }

    fn listener(
        &self,
        name: &str,
        l: raw::Listener,
        upstreams: &[UpstreamConfig],
        bound: &mut HashMap<SocketAddr, String>,
    ) -> Result<ListenerConfig, Error> {
        let key = |k: &str| format!("listeners.{name}.{k}");
        for (k, v) in [
            ("client_header_timeout", &l.client_header_timeout),
            ("idle_timeout", &l.idle_timeout),
            ("access_log", &l.access_log),
            ("access_log_format", &l.access_log_format),
            ("tracing", &l.tracing),
            ("max_request_head_bytes", &l.max_request_head_bytes),
            ("max_request_headers", &l.max_request_headers),
            ("max_uri_bytes", &l.max_uri_bytes),
            ("max_body_bytes", &l.max_body_bytes),
            ("allow_underscore_headers", &l.allow_underscore_headers),
            ("trust_forwarded_from", &l.trust_forwarded_from),
        ] {
            self.reserved(&key(k), v)?;
        }
        let mode = match l.mode.get_ref().as_str() {
            "http" => Mode::Http,
            "tcp" => Mode::Tcp,
            other => {
                return Err(self.err(
                    l.mode.span(),
                    key("mode"),
                    format!("unknown mode `{other}`; expected \"http\" or \"tcp\""),
                ))
            }
        };
        let bind_span = l.bind.span();
        let texts = match l.bind.into_inner() {
            raw::OneOrMany::One(s) => vec![s],
            raw::OneOrMany::Many(v) => v,
        };
        if texts.is_empty() {
            return Err(self.err(bind_span, key("bind"), "at least one address is needed"));
        }
        let mut binds = Vec::with_capacity(texts.len());
        for text in texts {
            let addr: SocketAddr = text.parse().map_err(|_| {
                self.err(
                    bind_span.clone(),
                    key("bind"),
                    format!("`{text}` is not an IP:port address (IPv6 as \"[::]:8080\")"),
                )
            })?;
            if addr.port() != 0 {
                if let Some(other) = bound.insert(addr, name.to_string()) {
                    return Err(self.err(
                        bind_span.clone(),
                        key("bind"),
                        format!("{addr} is already bound by listener `{other}`"),
                    ));
                }
            }
            binds.push(addr);
        }
        let target = match (l.upstream, l.respond) {
            (Some(_), Some(r)) | (None, Some(r)) if mode == Mode::Tcp => {
                return Err(self.err(
                    r.span(),
                    key("respond"),
                    "`respond` needs mode = \"http\"; a tcp listener needs `upstream`",
                ))
            }
            (Some(u), Some(_)) => {
                return Err(self.err(
                    u.span(),
                    key("upstream"),
                    "set exactly one of `upstream` and `respond`, not both",
                ))
            }
            (None, None) => {
                return Err(self.err(
                    bind_span,
                    name.to_string(),
                    "a listener needs `upstream` or `respond`",
                ))
            }
            (Some(u), None) => {
                if !upstreams.iter().any(|up| up.name == *u.get_ref()) {
                    return Err(self.err(
                        u.span(),
                        key("upstream"),
                        format!(
                            "no upstream named `{}` ([upstreams.{}] is missing)",
                            u.get_ref(),
                            u.get_ref()
                        ),
                    ));
                }
                Target::Upstream(u.into_inner())
            }
            (None, Some(r)) => Target::Respond(self.respond(&key("respond"), r)?),
        };
        let backlog = match l.backlog {
            Some(b) if *b.get_ref() == 0 => {
                return Err(self.err(b.span(), key("backlog"), "must be at least 1"))
            }
            Some(b) => b.into_inner(),
            None => 1024,
        };
        Ok(ListenerConfig {
            name: name.to_string(),
            binds,
            mode,
            target,
            backlog,
            reuse_port: l.reuse_port.unwrap_or(true),
        })
    }

    fn respond(&self, key: &str, r: Spanned<raw::Respond>) -> Result<RespondConfig, Error> {
        let span = r.span();
        let r = r.into_inner();
        let status = StatusCode::from_u16(*r.status.get_ref())
            .ok()
            .filter(|s| !s.is_informational())
            .ok_or_else(|| {
                self.err(
                    r.status.span(),
                    format!("{key}.status"),
                    "status must be 200..=599",
                )
            })?;
        let mut headers = HeaderMap::with_capacity(r.headers.len());
        for (name, value) in r.headers {
            let bad = || {
                self.err(
                    span.clone(),
                    format!("{key}.headers.{name}"),
                    "not a valid HTTP header",
                )
            };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(&value).map_err(|_| bad())?;
            headers.append(name, value);
        }
        Ok(RespondConfig {
            status,
            body: Bytes::from(r.body),
            headers,
        })
    }

    fn upstream(&self, name: String, u: raw::Upstream) -> Result<UpstreamConfig, Error> {
        let key = |k: &str| format!("upstreams.{name}.{k}");
        for (k, v) in [
            ("retry_on", &u.retry_on),
            ("retry_budget", &u.retry_budget),
            ("slow_start", &u.slow_start),
            ("hash", &u.hash),
            ("health_check", &u.health_check),
            ("ejection", &u.ejection),
        ] {
            self.reserved(&key(k), v)?;
        }
        let strategy = match &u.strategy {
            None => StrategyKind::RoundRobin,
            Some(s) => match s.get_ref().as_str() {
                "round_robin" => StrategyKind::RoundRobin,
                "least_connections" | "random_two_choices" | "consistent_hash" => {
                    return Err(self.err(
                        s.span(),
                        key("strategy"),
                        format!("strategy `{}` is not supported yet", s.get_ref()),
                    ))
                }
                other => {
                    return Err(self.err(
                        s.span(),
                        key("strategy"),
                        format!("unknown strategy `{other}`; expected \"round_robin\""),
                    ))
                }
            },
        };
        let connect_timeout = self.positive_duration(
            &key("connect_timeout"),
            u.connect_timeout,
            Duration::from_secs(2),
        )?;
        let response_timeout = self.positive_duration(
            &key("response_timeout"),
            u.response_timeout,
            Duration::from_secs(30),
        )?;
        let pool_idle_timeout = self.positive_duration(
            &key("pool_idle_timeout"),
            u.pool_idle_timeout,
            Duration::from_secs(4),
        )?;
        let servers_span = u.servers.span();
        let raw_servers = u.servers.into_inner();
        if raw_servers.is_empty() {
            return Err(self.err(
                servers_span,
                key("servers"),
                "an upstream needs at least one server",
            ));
        }
        let mut servers: Vec<ServerConfig> = Vec::with_capacity(raw_servers.len());
        for (i, s) in raw_servers.into_iter().enumerate() {
            let skey = |k: &str| key(&format!("servers[{i}].{k}"));
            let s = s.into_inner();
            let weight = match s.weight {
                None => 1,
                Some(w) if (1..=1000).contains(w.get_ref()) => w.into_inner(),
                Some(w) => {
                    return Err(self.err(
                        w.span(),
                        skey("weight"),
                        format!("weight must be 1..=1000, got {}", w.get_ref()),
                    ))
                }
            };
            let address = s.address.get_ref().clone();
            if servers.iter().any(|other| other.address == address) {
                return Err(self.err(
                    s.address.span(),
                    skey("address"),
                    format!("server `{address}` is listed twice"),
                ));
            }
            let addr = resolve(&address)
                .map_err(|why| self.err(s.address.span(), skey("address"), why))?;
            servers.push(ServerConfig {
                address,
                addr,
                weight,
                backup: s.backup,
                down: s.down,
                max_connections: s.max_connections,
            });
        }
        Ok(UpstreamConfig {
            name,
            strategy,
            connect_timeout,
            response_timeout,
            retries: u.retries.unwrap_or(2),
            pool_idle_timeout,
            pool_max_idle_per_server: u.pool_max_idle_per_server.unwrap_or(32),
            servers,
        })
    }
}

/// Resolves `IP:port` or `host:port` once, at load time (never on the request path).
fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    if !address.contains(':') {
        return Err(format!("`{address}` needs a port (IP:port or host:port)"));
    }
    address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{address}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{address}` resolves to no address"))
}

#[cfg(test)]
mod tests;
