//! The fault-tolerance keys of an upstream: `retry_on`, `retry_budget`, `slow_start`,
//! `[upstreams.NAME.health_check]` and `[upstreams.NAME.ejection]`, typed and validated.
//! Defaults are CONTRACT.md's (they match HAProxy's `check` and Envoy's outlier detection where
//! those have one).

use std::time::Duration;

use toml::Spanned;

use super::raw;
use super::validate::Validator;
use super::Error;

/// Which extra conditions send an idempotent request to another server (`retry_on`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `"5xx"`: a 502, 503 or 504 from the server.
    pub server_error: bool,
    /// `"timeout"`: `response_timeout` passed.
    pub timeout: bool,
}

/// How an active check talks to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect within the timeout.
    Tcp,
    /// `GET path HTTP/1.1` on a new connection, answered with an expected status.
    Http,
}

/// `expect_status`: status ranges, inclusive (`"200"`, `"200-399"`, `"200,204"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectStatus(Vec<(u16, u16)>);

impl ExpectStatus {
    /// Whether `status` is one of the expected ones.
    pub fn matches(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    /// `200-399`, the default: any success or redirect.
    pub fn default_range() -> Self {
        ExpectStatus(vec![(200, 399)])
    }

    fn parse(text: &str) -> Result<Self, String> {
        let code = |s: &str| -> Result<u16, String> {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| format!("`{}` is not a status code 100..=599", s.trim()))
        };
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let range = match part.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => (code(part)?, code(part)?),
            };
            if range.0 > range.1 {
                return Err(format!("range `{}` is empty", part.trim()));
            }
            ranges.push(range);
        }
        Ok(ExpectStatus(ranges))
    }
}

/// `[upstreams.NAME.health_check]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// TCP connect or HTTP request.
    pub kind: CheckKind,
    /// The request path of an HTTP check.
    pub path: String,
    /// The `Host` of an HTTP check; `None` sends the server's address.
    pub host: Option<String>,
    /// Statuses that pass an HTTP check.
    pub expect_status: ExpectStatus,
    /// Time between the starts of two checks (each shortened by up to 10 % of jitter).
    pub interval: Duration,
    /// Ceiling on one check: connect, and for HTTP the response head.
    pub timeout: Duration,
    /// Consecutive passes that bring a down server up.
    pub rise: u32,
    /// Consecutive failures that take an up server down (after its first check).
    pub fall: u32,
}

/// `[upstreams.NAME.ejection]`: passive detection from real traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct EjectionConfig {
    /// Failures in a row that eject a server; 0 turns passive ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length; the nth lasts n × this, up to `max_time`.
    pub base_time: Duration,
    /// The longest ejection.
    pub max_time: Duration,
    /// The share of an upstream's primaries that may be ejected at once (at least one).
    pub max_percent: u32,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        EjectionConfig {
            consecutive_failures: 5,
            base_time: Duration::from_secs(30),
            max_time: Duration::from_secs(300),
            max_percent: 50,
        }
    }
}

impl Validator<'_> {
    pub(super) fn retry_on(
        &self,
        key: &str,
        value: Option<Spanned<Vec<Spanned<String>>>>,
    ) -> Result<RetryOn, Error> {
        let mut on = RetryOn::default();
        for cond in value.map(Spanned::into_inner).unwrap_or_default() {
            match cond.get_ref().as_str() {
                "5xx" => on.server_error = true,
                "timeout" => on.timeout = true,
                other => {
                    return Err(self.err(
                        cond.span(),
                        key,
                        format!(
                            "unknown retry condition `{other}`; expected \"5xx\" or \"timeout\""
                        ),
                    ))
                }
            }
        }
        Ok(on)
    }

    pub(super) fn retry_budget(
        &self,
        key: &str,
        value: Option<Spanned<f64>>,
    ) -> Result<f64, Error> {
        match value {
            None => Ok(0.2),
            Some(v) if (0.0..=1.0).contains(v.get_ref()) => Ok(v.into_inner()),
            Some(v) => Err(self.err(
                v.span(),
                key,
                format!(
                    "must be between 0.0 and 1.0 (a share of requests), got {}",
                    v.get_ref()
                ),
            )),
        }
    }

    fn at_least_one(
        &self,
        key: &str,
        value: Option<Spanned<u32>>,
        default: u32,
    ) -> Result<u32, Error> {
        match value {
            None => Ok(default),
            Some(v) if *v.get_ref() == 0 => Err(self.err(v.span(), key, "must be at least 1")),
            Some(v) => Ok(v.into_inner()),
        }
    }

    pub(super) fn health_check(
        &self,
        key: &str,
        value: Spanned<raw::HealthCheck>,
    ) -> Result<HealthCheckConfig, Error> {
        let k = |name: &str| format!("{key}.{name}");
        let c = value.into_inner();
        let kind = match c.kind.get_ref().as_str() {
            "tcp" => CheckKind::Tcp,
            "http" => CheckKind::Http,
            other => {
                return Err(self.err(
                    c.kind.span(),
                    k("kind"),
                    format!("unknown check kind `{other}`; expected \"tcp\" or \"http\""),
                ))
            }
        };
        let path = match c.path {
            None => "/".to_string(),
            Some(p) => {
                let ok = p.get_ref().starts_with('/')
                    && p.get_ref().bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    return Err(self.err(
                        p.span(),
                        k("path"),
                        "must start with `/` and contain no spaces or control characters",
                    ));
                }
                p.into_inner()
            }
        };
        let host = match c.host {
            None => None,
            Some(h)
                if !h.get_ref().is_empty() && h.get_ref().bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(h.into_inner())
            }
            Some(h) => {
                return Err(self.err(h.span(), k("host"), "must be a host name without spaces"))
            }
        };
        let expect_status = match c.expect_status {
            None => ExpectStatus::default_range(),
            Some(e) => ExpectStatus::parse(e.get_ref()).map_err(|why| {
                self.err(
                    e.span(),
                    k("expect_status"),
                    format!("{why}; write e.g. \"200\", \"200-399\" or \"200,204\""),
                )
            })?,
        };
        Ok(HealthCheckConfig {
            kind,
            path,
            host,
            expect_status,
            interval: self.positive_duration(&k("interval"), c.interval, Duration::from_secs(2))?,
            timeout: self.positive_duration(&k("timeout"), c.timeout, Duration::from_secs(1))?,
            rise: self.at_least_one(&k("rise"), c.rise, 2)?,
            fall: self.at_least_one(&k("fall"), c.fall, 3)?,
        })
    }

    pub(super) fn ejection(
        &self,
        key: &str,
        value: Option<Spanned<raw::Ejection>>,
    ) -> Result<EjectionConfig, Error> {
        let default = EjectionConfig::default();
        let Some(value) = value else {
            return Ok(default);
        };
        let k = |name: &str| format!("{key}.{name}");
        let e = value.into_inner();
        let base_span = e.base_time.as_ref().map(|b| b.span());
        let base_time = self.positive_duration(&k("base_time"), e.base_time, default.base_time)?;
        let max_span = e.max_time.as_ref().map(|m| m.span());
        let max_time = self.positive_duration(&k("max_time"), e.max_time, default.max_time)?;
        if max_time < base_time {
            // Point at max_time when written; else base_time went past the default max_time.
            if let (None, Some(span)) = (&max_span, base_span) {
                return Err(self.err(
                    span,
                    k("base_time"),
                    format!(
                        "must be at most max_time ({max_time:?}, the default); raise max_time too"
                    ),
                ));
            }
            return Err(self.err(
                max_span.unwrap_or(0..0),
                k("max_time"),
                format!("must be at least base_time ({base_time:?})"),
            ));
        }
        let max_percent = match e.max_percent {
            None => default.max_percent,
            Some(p) if *p.get_ref() <= 100 => p.into_inner(),
            Some(p) => {
                return Err(self.err(
                    p.span(),
                    k("max_percent"),
                    format!("must be 0..=100, got {}", p.get_ref()),
                ))
            }
        };
        Ok(EjectionConfig {
            consecutive_failures: e
                .consecutive_failures
                .unwrap_or(default.consecutive_failures),
            base_time,
            max_time,
            max_percent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_status_takes_codes_ranges_and_lists() {
        let e = ExpectStatus::parse("200, 204,300-399").unwrap();
        assert!(e.matches(200) && e.matches(204) && e.matches(300) && e.matches(399));
        assert!(!e.matches(201) && !e.matches(299) && !e.matches(400));
        assert!(ExpectStatus::parse("399-200").is_err());
        assert!(ExpectStatus::parse("2xx").is_err());
        assert!(ExpectStatus::parse("99").is_err());
        assert!(ExpectStatus::parse("600").is_err());
    }
}
