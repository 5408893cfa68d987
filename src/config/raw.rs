//! The file as written: serde structs that keep the span of every value a later rule may need to
//! point at. Unknown keys are errors (`deny_unknown_fields`); keys the contract names but that are not
//! built yet are accepted by the parser only so that validation can reject them "not supported yet".

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;
use toml::Spanned;

/// A key the contract reserves for a feature that is not built yet.
pub type Reserved = Option<Spanned<IgnoredAny>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub runtime: Runtime,
    pub admin: Option<Admin>,
    #[serde(default)]
    pub listeners: BTreeMap<String, Listener>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub worker_threads: Option<Spanned<usize>>,
    pub max_connections: Option<Spanned<u32>>,
    pub shutdown_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub bind: Spanned<String>,
    pub token: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub bind: Spanned<OneOrMany>,
    pub mode: Spanned<String>,
    pub upstream: Option<Spanned<String>>,
    pub respond: Option<Spanned<Respond>>,
    pub backlog: Option<Spanned<u32>>,
    pub reuse_port: Option<bool>,
    pub client_header_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub access_log: Option<Spanned<String>>,
    pub access_log_format: Option<Spanned<String>>,
    pub tracing: Option<Spanned<bool>>,
    pub max_request_head_bytes: Option<Spanned<u64>>,
    pub max_request_headers: Option<Spanned<u64>>,
    pub max_uri_bytes: Option<Spanned<u64>>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub allow_underscore_headers: Option<Spanned<bool>>,
    pub trust_forwarded_from: Reserved,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    pub status: Spanned<u16>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub strategy: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub retries: Option<u32>,
    pub pool_idle_timeout: Option<Spanned<String>>,
    pub pool_max_idle_per_server: Option<usize>,
    pub servers: Spanned<Vec<Spanned<Server>>>,
    pub retry_on: Option<Spanned<Vec<Spanned<String>>>>,
    pub retry_budget: Option<Spanned<f64>>,
    pub slow_start: Option<Spanned<String>>,
    pub ewma_decay: Option<Spanned<String>>,
    pub hash: Option<Spanned<Hash>>,
    pub health_check: Option<Spanned<HealthCheck>>,
    pub ejection: Option<Spanned<Ejection>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hash {
    pub key: Option<Spanned<String>>,
    pub algorithm: Option<Spanned<String>>,
    pub bounded_load: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: Spanned<String>,
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ejection {
    pub consecutive_failures: Option<u32>,
    pub base_time: Option<Spanned<String>>,
    pub max_time: Option<Spanned<String>>,
    pub max_percent: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub address: Spanned<String>,
    pub weight: Option<Spanned<u32>>,
    #[serde(default)]
    pub backup: bool,
    #[serde(default)]
    pub down: bool,
    #[serde(default)]
    pub max_connections: u32,
}
