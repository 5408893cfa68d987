//! The rules a parsed file must meet, each reported at the line of the key it is about.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use toml::Spanned;

use super::error::Source;
use super::raw;
use super::{
    AccessLogConfig, AdminBind, AdminConfig, Config, Error, ListenerConfig, LogDestination,
    LogFormat, Mode, RespondConfig, RuntimeConfig, ServerConfig, StrategyKind, Target,
    UpstreamConfig,
};

/// Turns the file as written into a [`Config`], or the first rule it breaks.
pub(super) struct Validator<'a> {
    pub(super) src: &'a Source<'a>,
}

impl Validator<'_> {
    pub(super) fn err(
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

    pub(super) fn duration(
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
    pub(super) fn positive_duration(
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

    pub(super) fn config(&self, file: raw::File) -> Result<Config, Error> {
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
        let text = a.bind.get_ref();
        let bind = if let Some(path) = text.strip_prefix("unix:") {
            // sun_path holds 108 bytes with the terminating NUL.
            if path.is_empty() || path.len() > 107 {
                return Err(self.err(
                    a.bind.span(),
                    "admin.bind",
                    format!("`{text}`: a unix socket path needs 1 to 107 bytes"),
                ));
            }
            AdminBind::Unix(PathBuf::from(path))
        } else {
            AdminBind::Tcp(text.parse().map_err(|_| {
                self.err(
                    a.bind.span(),
                    "admin.bind",
                    format!("`{text}` is not an IP:port address or unix:PATH"),
                )
            })?)
        };
        let token = match a.token {
            Some(t) if t.get_ref().is_empty() => {
                return Err(self.err(
                    t.span(),
                    "admin.token",
                    "an empty token would let any POST through; remove the key or set a secret",
                ))
            }
            Some(t) => Some(t.into_inner()),
            None => None,
        };
        Ok(AdminConfig { bind, token })
    }

    fn listener(
        &self,
        name: &str,
        mut l: raw::Listener,
        upstreams: &[UpstreamConfig],
        bound: &mut HashMap<SocketAddr, String>,
    ) -> Result<ListenerConfig, Error> {
        let key = |k: &str| format!("listeners.{name}.{k}");
        self.reserved(&key("trust_forwarded_from"), &l.trust_forwarded_from)?;
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
        let (idle_timeout, http) = self.limits(name, mode, &mut l)?;
        let access_log = self.access_log(&key, mode, l.access_log, l.access_log_format)?;
        let tracing = match l.tracing {
            Some(t) if mode == Mode::Tcp => {
                return Err(self.err(t.span(), key("tracing"), "`tracing` needs mode = \"http\""))
            }
            Some(t) => t.into_inner(),
            None => false,
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
            idle_timeout,
            http,
            access_log,
            tracing,
        })
    }

    /// `access_log` ("stdout" or an absolute path) and `access_log_format` ("json", the default,
    /// or "combined"); a format without a log is a mistake, reported at the format's line.
    fn access_log(
        &self,
        key: &dyn Fn(&str) -> String,
        mode: Mode,
        log: Option<Spanned<String>>,
        format: Option<Spanned<String>>,
    ) -> Result<Option<AccessLogConfig>, Error> {
        let Some(log) = log else {
            return match format {
                Some(f) => Err(self.err(
                    f.span(),
                    key("access_log_format"),
                    "`access_log_format` without `access_log`; set access_log = \"stdout\" or a path",
                )),
                None => Ok(None),
            };
        };
        if mode == Mode::Tcp {
            return Err(self.err(
                log.span(),
                key("access_log"),
                "`access_log` needs mode = \"http\" (a tcp listener has no requests to log)",
            ));
        }
        let destination = match log.get_ref().as_str() {
            "stdout" => LogDestination::Stdout,
            path if Path::new(path).is_absolute() => LogDestination::File(PathBuf::from(path)),
            other => {
                return Err(self.err(
                    log.span(),
                    key("access_log"),
                    format!("`{other}` is neither \"stdout\" nor an absolute file path"),
                ))
            }
        };
        let format = match format {
            None => LogFormat::Json,
            Some(f) => match f.get_ref().as_str() {
                "json" => LogFormat::Json,
                "combined" => LogFormat::Combined,
                other => {
                    return Err(self.err(
                        f.span(),
                        key("access_log_format"),
                        format!("unknown format `{other}`; expected \"json\" or \"combined\""),
                    ))
                }
            },
        };
        Ok(Some(AccessLogConfig {
            destination,
            format,
        }))
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
        let balancing = self.balancing(&key, u.strategy, u.ewma_decay, u.hash)?;
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
        let retry_on = self.retry_on(&key("retry_on"), u.retry_on)?;
        let retry_budget = self.retry_budget(&key("retry_budget"), u.retry_budget)?;
        let mut slow_start = self.duration(&key("slow_start"), u.slow_start, Duration::ZERO)?;
        if balancing.strategy == StrategyKind::ConsistentHash {
            // CONTRACT: slow start does not apply to consistent hashing (keys return at once).
            slow_start = Duration::ZERO;
        }
        let health_check = u
            .health_check
            .map(|c| self.health_check(&key("health_check"), c))
            .transpose()?;
        let ejection = self.ejection(&key("ejection"), u.ejection)?;
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
            strategy: balancing.strategy,
            ewma_decay: balancing.ewma_decay,
            hash: balancing.hash,
            connect_timeout,
            response_timeout,
            retries: u.retries.unwrap_or(2),
            retry_on,
            retry_budget,
            slow_start,
            health_check,
            ejection,
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
    if address.trim().is_empty() {
        return Err("the address is empty; write IP:port or host:port".to_string());
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
