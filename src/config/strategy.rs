//! The balancing keys of an upstream: `strategy`, `ewma_decay` and `[upstreams.NAME.hash]`, typed
//! and validated (names and defaults are CONTRACT.md's "Strategies" and "Consistent hashing").

use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::raw;
use super::validate::Validator;
use super::Error;

/// Load-balancing strategies the daemon knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyKind {
    /// Smooth weighted round robin.
    RoundRobin,
    /// The lowest in-flight count per unit of weight; ties in round-robin order.
    LeastConnections,
    /// Two weighted random draws, the less loaded wins.
    RandomTwoChoices,
    /// Two weighted random draws, the lower response-time average × load wins.
    PeakEwma,
    /// A key's hash picks the server (Maglev or a ring), optionally with bounded loads.
    ConsistentHash,
}

impl StrategyKind {
    const ALL: [StrategyKind; 5] = [
        StrategyKind::RoundRobin,
        StrategyKind::LeastConnections,
        StrategyKind::RandomTwoChoices,
        StrategyKind::PeakEwma,
        StrategyKind::ConsistentHash,
    ];

    /// The name used in the config file and in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::LeastConnections => "least_connections",
            StrategyKind::RandomTwoChoices => "random_two_choices",
            StrategyKind::PeakEwma => "peak_ewma",
            StrategyKind::ConsistentHash => "consistent_hash",
        }
    }

    fn parse(name: &str) -> Option<StrategyKind> {
        StrategyKind::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// What a consistent hash hashes (`key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP (IPv4-mapped IPv6 as IPv4), without the port.
    ClientIp,
    /// Path and query as sent.
    Uri,
    /// The path without the query.
    Path,
    /// The first value of a request header (`header:NAME`).
    Header(HeaderName),
    /// The value of one cookie (`cookie:NAME`).
    Cookie(String),
    /// The value of one query parameter, as sent (`query:NAME`).
    Query(String),
}

/// How keys map to servers (`algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// Maglev's lookup table (Eisenbud et al., NSDI 2016).
    Maglev,
    /// A ketama-style ring with weight-proportional points.
    Ring,
}

/// `[upstreams.NAME.hash]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HashConfig {
    /// What is hashed.
    pub key: HashKey,
    /// Maglev or ring.
    pub algorithm: HashAlgorithm,
    /// 0 = off; else (≥ 1.0) a server takes at most this multiple of its weight share of the
    /// upstream's in-flight requests, and the next server in the key's order takes the rest.
    pub bounded_load: f64,
}

impl Default for HashConfig {
    fn default() -> Self {
        HashConfig {
            key: HashKey::ClientIp,
            algorithm: HashAlgorithm::Maglev,
            bounded_load: 0.0,
        }
    }
}

/// The validated balancing keys of one upstream.
pub(super) struct Balancing {
    pub strategy: StrategyKind,
    pub ewma_decay: Duration,
    pub hash: Option<HashConfig>,
}

impl Validator<'_> {
    /// `strategy`, `ewma_decay` and `[hash]`, each only where its strategy uses it.
    pub(super) fn balancing(
        &self,
        key: &dyn Fn(&str) -> String,
        strategy: Option<Spanned<String>>,
        ewma_decay: Option<Spanned<String>>,
        hash: Option<Spanned<raw::Hash>>,
    ) -> Result<Balancing, Error> {
        let kind = match &strategy {
            None => StrategyKind::RoundRobin,
            Some(s) => StrategyKind::parse(s.get_ref()).ok_or_else(|| {
                let known: Vec<String> = StrategyKind::ALL
                    .iter()
                    .map(|k| format!("\"{}\"", k.as_str()))
                    .collect();
                self.err(
                    s.span(),
                    key("strategy"),
                    format!(
                        "unknown strategy `{}`; expected one of {}",
                        s.get_ref(),
                        known.join(", ")
                    ),
                )
            })?,
        };
        if let (Some(decay), false) = (&ewma_decay, kind == StrategyKind::PeakEwma) {
            return Err(self.err(
                decay.span(),
                key("ewma_decay"),
                "ewma_decay applies only to strategy = \"peak_ewma\"",
            ));
        }
        let ewma_decay =
            self.positive_duration(&key("ewma_decay"), ewma_decay, Duration::from_secs(10))?;
        let hash = match (hash, kind == StrategyKind::ConsistentHash) {
            (Some(table), false) => {
                return Err(self.err(
                    table.span(),
                    key("hash"),
                    "[hash] applies only to strategy = \"consistent_hash\"",
                ))
            }
            (Some(table), true) => Some(self.hash(&key("hash"), table.into_inner())?),
            (None, true) => Some(HashConfig::default()),
            (None, false) => None,
        };
        Ok(Balancing {
            strategy: kind,
            ewma_decay,
            hash,
        })
    }

    fn hash(&self, key: &str, table: raw::Hash) -> Result<HashConfig, Error> {
        let mut config = HashConfig::default();
        if let Some(k) = table.key {
            config.key = parse_key(k.get_ref())
                .map_err(|why| self.err(k.span(), format!("{key}.key"), why))?;
        }
        if let Some(a) = table.algorithm {
            config.algorithm = match a.get_ref().as_str() {
                "maglev" => HashAlgorithm::Maglev,
                "ring" => HashAlgorithm::Ring,
                other => {
                    return Err(self.err(
                        a.span(),
                        format!("{key}.algorithm"),
                        format!("unknown algorithm `{other}`; expected \"maglev\" or \"ring\""),
                    ))
                }
            };
        }
        if let Some(b) = table.bounded_load {
            let value = *b.get_ref();
            if !(value == 0.0 || value >= 1.0) || !value.is_finite() {
                return Err(self.err(
                    b.span(),
                    format!("{key}.bounded_load"),
                    format!("bounded_load must be 0 (off) or at least 1.0, got {value}"),
                ));
            }
            config.bounded_load = value;
        }
        Ok(config)
    }
}

fn parse_key(text: &str) -> Result<HashKey, String> {
    let named = |kind: &str, name: &str| -> Result<String, String> {
        if name.is_empty() {
            Err(format!("`{kind}:` needs a name, e.g. `{kind}:user`"))
        } else {
            Ok(name.to_string())
        }
    };
    match text.split_once(':') {
        None => match text {
            "client_ip" => Ok(HashKey::ClientIp),
            "uri" => Ok(HashKey::Uri),
            "path" => Ok(HashKey::Path),
            other => Err(format!(
                "unknown hash key `{other}`; expected client_ip, uri, path, header:NAME, cookie:NAME or query:NAME"
            )),
        },
        Some(("header", name)) => {
            let name = named("header", name)?;
            HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("`{name}` is not a valid header name"))
        }
        Some(("cookie", name)) => named("cookie", name).map(HashKey::Cookie),
        Some(("query", name)) => named("query", name).map(HashKey::Query),
        Some((kind, _)) => Err(format!(
            "unknown hash key kind `{kind}:`; expected header:, cookie: or query:"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_kind_parses() {
        assert_eq!(parse_key("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(parse_key("uri"), Ok(HashKey::Uri));
        assert_eq!(parse_key("path"), Ok(HashKey::Path));
        assert_eq!(
            parse_key("header:X-User-Id"),
            Ok(HashKey::Header(HeaderName::from_static("x-user-id")))
        );
        assert_eq!(
            parse_key("cookie:session"),
            Ok(HashKey::Cookie("session".into()))
        );
        assert_eq!(parse_key("query:user"), Ok(HashKey::Query("user".into())));
    }

    #[test]
    fn bad_keys_say_what_is_expected() {
        assert!(parse_key("ip").unwrap_err().contains("expected client_ip"));
        assert!(parse_key("header:").unwrap_err().contains("needs a name"));
        assert!(parse_key("header:a b")
            .unwrap_err()
            .contains("not a valid header name"));
        assert!(parse_key("body:x").unwrap_err().contains("`body:`"));
    }

    #[test]
    fn strategy_names_round_trip() {
        for kind in StrategyKind::ALL {
            assert_eq!(StrategyKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(StrategyKind::parse("leastconn"), None);
    }
}
