use super::*;

fn parse(text: &str) -> Result<Config, Error> {
    Config::parse(Path::new("test.toml"), text)
}

fn error_of(text: &str) -> (usize, String, String) {
    match parse(text) {
        Err(Error::Invalid {
            line, key, message, ..
        }) => (line, key, message),
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

const GOOD: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[admin]
bind = "127.0.0.1:9900"

[listeners.web]
bind = ["127.0.0.1:8080", "[::1]:8080"]
mode = "http"
upstream = "app"

[listeners.hello]
bind = "127.0.0.1:9001"
mode = "http"
respond = { status = 200, body = "hi\n", headers = { "content-type" = "text/plain" } }

[upstreams.app]
connect_timeout = "500ms"
servers = [
  { address = "127.0.0.1:8081", weight = 3 },
  { address = "127.0.0.1:8082" },
  { address = "127.0.0.1:8083", backup = true },
  { address = "localhost:8084", down = true },
]
"#;

#[test]
fn a_full_config_parses_with_defaults_filled_in() {
    let config = parse(GOOD).unwrap();
    assert_eq!(config.runtime.worker_threads, 2);
    assert_eq!(config.runtime.max_connections, 65536);
    assert_eq!(config.runtime.shutdown_timeout, Duration::from_secs(5));
    let web = config.listeners.iter().find(|l| l.name == "web").unwrap();
    assert_eq!(web.binds.len(), 2);
    assert!(web.reuse_port);
    assert_eq!(web.backlog, 1024);
    let app = &config.upstreams[0];
    assert_eq!(app.strategy, StrategyKind::RoundRobin);
    assert_eq!(app.connect_timeout, Duration::from_millis(500));
    assert_eq!(app.response_timeout, Duration::from_secs(30));
    assert_eq!(app.retries, 2);
    assert_eq!(app.servers[0].weight, 3);
    assert_eq!(app.servers[1].weight, 1);
    assert!(app.servers[2].backup);
    assert!(app.servers[3].down);
    assert_eq!(app.servers[3].addr.port(), 8084);
}

#[test]
fn zero_weight_is_rejected_at_its_line() {
    let text = GOOD.replace("weight = 3", "weight = 0");
    let (line, key, message) = error_of(&text);
    assert_eq!(line, 22);
    assert_eq!(key, "upstreams.app.servers[0].weight");
    assert!(message.contains("1..=1000"), "{message}");
}

#[test]
fn a_missing_upstream_points_at_the_listeners_upstream_line() {
    let text = GOOD.replace("upstream = \"app\"", "upstream = \"nope\"");
    let (line, key, _) = error_of(&text);
    assert_eq!(line, 12);
    assert_eq!(key, "listeners.web.upstream");
}

#[test]
fn unknown_keys_are_named() {
    let text = GOOD.replace("connect_timeout", "conect_timeout");
    let (line, key, _) = error_of(&text);
    assert_eq!(line, 20);
    assert_eq!(key, "conect_timeout");
}

#[test]
fn bad_durations_are_named() {
    let text = GOOD.replace("\"500ms\"", "\"fast\"");
    let (_, key, message) = error_of(&text);
    assert_eq!(key, "upstreams.app.connect_timeout");
    assert!(message.contains("not a duration"), "{message}");
}

#[test]
fn tcp_with_respond_is_rejected() {
    let text = GOOD.replace(
        "bind = \"127.0.0.1:9001\"\nmode = \"http\"",
        "bind = \"127.0.0.1:9001\"\nmode = \"tcp\"",
    );
    let (_, key, _) = error_of(&text);
    assert_eq!(key, "listeners.hello.respond");
}

#[test]
fn two_listeners_on_one_address_are_rejected() {
    let text = GOOD.replace("127.0.0.1:9001", "127.0.0.1:8080");
    let (_, key, message) = error_of(&text);
    assert_eq!(key, "listeners.web.bind");
    assert!(message.contains("already bound"), "{message}");
}

#[test]
fn an_upstream_without_servers_is_rejected() {
    let text = r#"
[upstreams.app]
servers = []
"#;
    let (line, key, _) = error_of(text);
    assert_eq!(line, 3);
    assert_eq!(key, "upstreams.app.servers");
}

#[test]
fn reserved_keys_say_not_supported_yet() {
    let text = GOOD.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\ntrust_forwarded_from = []\n",
    );
    let (line, key, message) = error_of(&text);
    assert_eq!(line, 13);
    assert_eq!(key, "listeners.web.trust_forwarded_from");
    assert!(message.contains("not supported yet"), "{message}");
}

fn with_upstream_keys(keys: &str) -> String {
    GOOD.replace("[upstreams.app]\n", &format!("[upstreams.app]\n{keys}\n"))
}

#[test]
fn every_strategy_name_is_accepted() {
    for (name, kind) in [
        ("round_robin", StrategyKind::RoundRobin),
        ("least_connections", StrategyKind::LeastConnections),
        ("random_two_choices", StrategyKind::RandomTwoChoices),
        ("peak_ewma", StrategyKind::PeakEwma),
    ] {
        let config = parse(&with_upstream_keys(&format!("strategy = \"{name}\""))).unwrap();
        assert_eq!(config.upstreams[0].strategy, kind);
    }
}

#[test]
fn an_unknown_strategy_lists_the_known_ones() {
    let (line, key, message) = error_of(&with_upstream_keys("strategy = \"leastconn\""));
    assert_eq!((line, key.as_str()), (20, "upstreams.app.strategy"));
    assert!(message.contains("\"least_connections\""), "{message}");
}

#[test]
fn ewma_decay_defaults_to_ten_seconds_and_belongs_to_peak_ewma() {
    let config = parse(&with_upstream_keys("strategy = \"peak_ewma\"")).unwrap();
    assert_eq!(config.upstreams[0].ewma_decay, Duration::from_secs(10));
    let config = parse(&with_upstream_keys(
        "strategy = \"peak_ewma\"\newma_decay = \"1s\"",
    ))
    .unwrap();
    assert_eq!(config.upstreams[0].ewma_decay, Duration::from_secs(1));
    let (line, key, message) = error_of(&with_upstream_keys("ewma_decay = \"1s\""));
    assert_eq!((line, key.as_str()), (20, "upstreams.app.ewma_decay"));
    assert!(message.contains("peak_ewma"), "{message}");
    let (_, key, message) = error_of(&with_upstream_keys(
        "strategy = \"peak_ewma\"\newma_decay = \"0s\"",
    ));
    assert_eq!(key, "upstreams.app.ewma_decay");
    assert!(message.contains("greater than 0"), "{message}");
}

#[test]
fn unparsable_bind_addresses_are_rejected() {
    let text = GOOD.replace("\"[::1]:8080\"", "\"::1:8080\"");
    let (_, key, _) = error_of(&text);
    assert_eq!(key, "listeners.web.bind");
}

#[test]
fn a_listener_needs_exactly_one_target() {
    let text = GOOD.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\nrespond = { status = 200 }",
    );
    let (_, key, _) = error_of(&text);
    assert_eq!(key, "listeners.web.upstream");
}

#[test]
fn fault_tolerance_keys_have_the_contract_defaults() {
    let app = &parse(GOOD).unwrap().upstreams[0];
    assert_eq!(app.retry_on, RetryOn::default());
    assert_eq!(app.retry_budget, 0.2);
    assert_eq!(app.slow_start, Duration::ZERO);
    assert!(app.health_check.is_none());
    assert_eq!(app.ejection, EjectionConfig::default());
    assert_eq!(app.ejection.consecutive_failures, 5);
    assert_eq!(app.ejection.base_time, Duration::from_secs(30));
    assert_eq!(app.ejection.max_time, Duration::from_secs(300));
    assert_eq!(app.ejection.max_percent, 50);
}

#[test]
fn fault_tolerance_keys_parse() {
    let text = GOOD.replace(
        "[upstreams.app]\n",
        r#"[upstreams.app]
retry_on = ["5xx", "timeout"]
retry_budget = 0.5
slow_start = "20s"
health_check = { kind = "http", path = "/healthz", host = "app.internal", expect_status = "200,204", interval = "3s", timeout = "500ms", rise = 1, fall = 4 }
ejection = { consecutive_failures = 0, base_time = "1s", max_time = "5s", max_percent = 100 }
"#,
    );
    let app = &parse(&text).unwrap().upstreams[0];
    assert!(app.retry_on.server_error && app.retry_on.timeout);
    assert_eq!(app.retry_budget, 0.5);
    assert_eq!(app.slow_start, Duration::from_secs(20));
    let check = app.health_check.as_ref().unwrap();
    assert_eq!(check.kind, CheckKind::Http);
    assert_eq!(check.path, "/healthz");
    assert_eq!(check.host.as_deref(), Some("app.internal"));
    assert!(check.expect_status.matches(204) && !check.expect_status.matches(201));
    assert_eq!(check.interval, Duration::from_secs(3));
    assert_eq!(check.timeout, Duration::from_millis(500));
    assert_eq!((check.rise, check.fall), (1, 4));
    assert_eq!(app.ejection.consecutive_failures, 0);
    assert_eq!(app.ejection.max_percent, 100);

    let tcp = GOOD.replace(
        "[upstreams.app]\n",
        "[upstreams.app]\nhealth_check = { kind = \"tcp\" }\n",
    );
    let check = parse(&tcp).unwrap().upstreams[0]
        .health_check
        .clone()
        .unwrap();
    assert_eq!(check.kind, CheckKind::Tcp);
    assert_eq!(check.path, "/");
    assert!(check.expect_status.matches(200) && check.expect_status.matches(399));
    assert!(!check.expect_status.matches(400));
    assert_eq!(
        (check.interval, check.timeout),
        (Duration::from_secs(2), Duration::from_secs(1))
    );
    assert_eq!((check.rise, check.fall), (2, 3));
}

#[test]
fn bad_fault_tolerance_values_are_located() {
    for (extra, want_key, want_text) in [
        (
            "retry_on = [\"5xx\", \"4xx\"]",
            "upstreams.app.retry_on",
            "4xx",
        ),
        (
            "retry_budget = 1.5",
            "upstreams.app.retry_budget",
            "between 0.0 and 1.0",
        ),
        (
            "slow_start = \"soon\"",
            "upstreams.app.slow_start",
            "not a duration",
        ),
        (
            "health_check = { kind = \"udp\" }",
            "upstreams.app.health_check.kind",
            "udp",
        ),
        (
            "health_check = { kind = \"http\", path = \"healthz\" }",
            "upstreams.app.health_check.path",
            "start with",
        ),
        (
            "health_check = { kind = \"http\", expect_status = \"2xx\" }",
            "upstreams.app.health_check.expect_status",
            "2xx",
        ),
        (
            "health_check = { kind = \"tcp\", rise = 0 }",
            "upstreams.app.health_check.rise",
            "at least 1",
        ),
        (
            "health_check = { kind = \"tcp\", interval = \"0s\" }",
            "upstreams.app.health_check.interval",
            "greater than 0",
        ),
        (
            "health_check = { kind = \"tcp\", fail = 2 }",
            "fail",
            "unknown field",
        ),
        (
            "ejection = { max_percent = 101 }",
            "upstreams.app.ejection.max_percent",
            "0..=100",
        ),
        (
            "ejection = { base_time = \"10s\", max_time = \"5s\" }",
            "upstreams.app.ejection.max_time",
            "at least base_time",
        ),
    ] {
        let text = GOOD.replace("[upstreams.app]\n", &format!("[upstreams.app]\n{extra}\n"));
        let (line, key, message) = error_of(&text);
        assert_eq!(key, want_key, "{extra}: {message}");
        assert!(message.contains(want_text), "{extra}: {message}");
        let want_line = GOOD[..GOOD.find("[upstreams.app]").unwrap()]
            .matches('\n')
            .count()
            + 2;
        assert_eq!(
            line, want_line,
            "{extra}: the error points at the key's line"
        );
    }
}

/// `GOOD` with `strategy` in the upstream and `hash` (TOML lines) as its `[upstreams.app.hash]`.
fn with_hash(strategy: &str, hash: &str) -> String {
    format!(
        "{}\n[upstreams.app.hash]\n{hash}\n",
        with_upstream_keys(&format!("strategy = \"{strategy}\""))
    )
}

/// The line of `text` where `needle` first appears.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].matches('\n').count() + 1
}

#[test]
fn consistent_hash_has_the_contract_defaults_and_no_slow_start() {
    let config = parse(&with_upstream_keys(
        "strategy = \"consistent_hash\"\nslow_start = \"20s\"",
    ))
    .unwrap();
    let app = &config.upstreams[0];
    assert_eq!(app.strategy, StrategyKind::ConsistentHash);
    assert_eq!(
        app.hash,
        Some(HashConfig {
            key: HashKey::ClientIp,
            algorithm: HashAlgorithm::Maglev,
            bounded_load: 0.0,
        })
    );
    assert_eq!(app.slow_start, Duration::ZERO);
    // Other strategies have no hash settings.
    assert_eq!(parse(GOOD).unwrap().upstreams[0].hash, None);
}

#[test]
fn hash_keys_parse() {
    for (key, want) in [
        ("client_ip", HashKey::ClientIp),
        ("uri", HashKey::Uri),
        ("path", HashKey::Path),
        (
            "header:X-User-Id",
            HashKey::Header(http::HeaderName::from_static("x-user-id")),
        ),
        ("cookie:session", HashKey::Cookie("session".into())),
        ("query:user", HashKey::Query("user".into())),
    ] {
        let text = with_hash(
            "consistent_hash",
            &format!("key = \"{key}\"\nalgorithm = \"ring\"\nbounded_load = 1.25"),
        );
        let hash = parse(&text).unwrap().upstreams[0].hash.clone().unwrap();
        assert_eq!(hash.key, want);
        assert_eq!(hash.algorithm, HashAlgorithm::Ring);
        assert_eq!(hash.bounded_load, 1.25);
    }
    let text = with_hash(
        "consistent_hash",
        "algorithm = \"maglev\"\nbounded_load = 0",
    );
    let hash = parse(&text).unwrap().upstreams[0].hash.clone().unwrap();
    assert_eq!(
        (hash.key, hash.algorithm),
        (HashKey::ClientIp, HashAlgorithm::Maglev)
    );
    assert_eq!(hash.bounded_load, 0.0);
    // The inline form too.
    let text = with_upstream_keys("strategy = \"consistent_hash\"\nhash = { key = \"uri\" }");
    assert_eq!(
        parse(&text).unwrap().upstreams[0]
            .hash
            .as_ref()
            .unwrap()
            .key,
        HashKey::Uri
    );
}

#[test]
fn bad_hash_values_are_located_at_their_key() {
    for (hash, needle, want_key, want_text) in [
        (
            "bounded_load = 0.5",
            "bounded_load",
            "upstreams.app.hash.bounded_load",
            "at least 1.0",
        ),
        (
            "bounded_load = -1.0",
            "bounded_load",
            "upstreams.app.hash.bounded_load",
            "at least 1.0",
        ),
        (
            "algorithm = \"jump\"",
            "algorithm",
            "upstreams.app.hash.algorithm",
            "unknown algorithm `jump`",
        ),
        (
            "key = \"ip\"",
            "key = ",
            "upstreams.app.hash.key",
            "unknown hash key `ip`",
        ),
        (
            "key = \"header:bad name\"",
            "key = ",
            "upstreams.app.hash.key",
            "not a valid header name",
        ),
        (
            "key = \"cookie:\"",
            "key = ",
            "upstreams.app.hash.key",
            "needs a name",
        ),
    ] {
        let text = with_hash("consistent_hash", hash);
        let (line, key, message) = error_of(&text);
        assert_eq!(key, want_key, "{hash}: {message}");
        assert!(message.contains(want_text), "{hash}: {message}");
        assert_eq!(line, line_of(&text, needle), "{hash}: {message}");
    }
}

#[test]
fn a_hash_table_needs_consistent_hash() {
    let text = with_hash("round_robin", "key = \"uri\"");
    let (line, key, message) = error_of(&text);
    assert_eq!(key, "upstreams.app.hash");
    assert!(message.contains("consistent_hash"), "{message}");
    assert_eq!(line, line_of(&text, "[upstreams.app.hash]"));
    let text = with_upstream_keys("hash = { key = \"uri\" }");
    let (line, key, _) = error_of(&text);
    assert_eq!(
        (line, key.as_str()),
        (line_of(&text, "hash ="), "upstreams.app.hash")
    );
}

#[test]
fn admin_binds_tcp_or_a_unix_path_and_keeps_the_token() {
    let config = parse(GOOD).unwrap();
    let admin = config.admin.unwrap();
    assert_eq!(
        admin.bind,
        AdminBind::Tcp("127.0.0.1:9900".parse().unwrap())
    );
    assert_eq!(admin.token, None);
    let text = GOOD.replace(
        "bind = \"127.0.0.1:9900\"\n",
        "bind = \"unix:/run/fulcrum/admin.sock\"\ntoken = \"s3cret\"\n",
    );
    let admin = parse(&text).unwrap().admin.unwrap();
    assert_eq!(
        admin.bind,
        AdminBind::Unix(PathBuf::from("/run/fulcrum/admin.sock"))
    );
    assert_eq!(admin.token.as_deref(), Some("s3cret"));
}

#[test]
fn an_empty_admin_token_is_rejected_at_its_line() {
    let text = GOOD.replace(
        "bind = \"127.0.0.1:9900\"\n",
        "bind = \"127.0.0.1:9900\"\ntoken = \"\"\n",
    );
    let (line, key, message) = error_of(&text);
    assert_eq!((line, key.as_str()), (8, "admin.token"), "{message}");
}

#[test]
fn bad_admin_binds_are_located() {
    for bind in ["unix:", "localhost:9900"] {
        let text = GOOD.replace("\"127.0.0.1:9900\"", &format!("\"{bind}\""));
        let (line, key, message) = error_of(&text);
        assert_eq!((line, key.as_str()), (7, "admin.bind"), "{bind}: {message}");
    }
}

fn with_listener_keys(keys: &str) -> String {
    GOOD.replace(
        "upstream = \"app\"\n",
        &format!("upstream = \"app\"\n{keys}\n"),
    )
}

#[test]
fn access_log_keys_are_parsed() {
    let web = |keys: &str| {
        parse(&with_listener_keys(keys))
            .unwrap()
            .listeners
            .into_iter()
            .find(|l| l.name == "web")
            .unwrap()
    };
    let plain = web("");
    assert_eq!(plain.access_log, None);
    assert!(!plain.tracing);
    let stdout = web("access_log = \"stdout\"\ntracing = true");
    assert_eq!(
        stdout.access_log,
        Some(AccessLogConfig {
            destination: LogDestination::Stdout,
            format: LogFormat::Json
        })
    );
    assert!(stdout.tracing);
    let file =
        web("access_log = \"/var/log/fulcrum/access.log\"\naccess_log_format = \"combined\"");
    assert_eq!(
        file.access_log,
        Some(AccessLogConfig {
            destination: LogDestination::File(PathBuf::from("/var/log/fulcrum/access.log")),
            format: LogFormat::Combined
        })
    );
}

#[test]
fn bad_access_log_keys_are_reported_at_their_line() {
    for (keys, key, says) in [
        ("access_log = \"relative.log\"", "access_log", "absolute"),
        ("access_log = \"\"", "access_log", "absolute"),
        (
            "access_log = \"stdout\"\naccess_log_format = \"xml\"",
            "access_log_format",
            "json",
        ),
        (
            "access_log_format = \"json\"",
            "access_log_format",
            "without `access_log`",
        ),
    ] {
        let (line, got_key, message) = error_of(&with_listener_keys(keys));
        let expected_line = 13 + keys.lines().position(|l| l.starts_with(key)).unwrap();
        assert_eq!(line, expected_line, "{keys}: {message}");
        assert_eq!(got_key, format!("listeners.web.{key}"), "{keys}");
        assert!(message.contains(says), "{keys}: {message}");
    }
}

#[test]
fn access_log_values_of_the_wrong_type_are_located() {
    for keys in [
        "access_log = 3",
        "tracing = \"yes\"",
        "access_log = \"stdout\"\naccess_log_format = true",
    ] {
        let text = with_listener_keys(keys);
        let (line, _, message) = error_of(&text);
        let last = keys.lines().last().unwrap();
        assert_eq!(
            line,
            1 + text.lines().position(|l| l == last).unwrap(),
            "{keys}: {message}"
        );
    }
}

#[test]
fn a_tcp_listener_takes_no_access_log_nor_tracing() {
    for key in ["access_log = \"stdout\"", "tracing = true"] {
        let text = GOOD.replace(
            "[listeners.hello]",
            &format!("[listeners.raw]\nbind = \"127.0.0.1:9002\"\nmode = \"tcp\"\nupstream = \"app\"\n{key}\n\n[listeners.hello]"),
        );
        let (line, got_key, message) = error_of(&text);
        let name = key.split(' ').next().unwrap();
        assert_eq!(
            line,
            1 + text.lines().position(|l| l == key).unwrap(),
            "{key}"
        );
        assert_eq!(got_key, format!("listeners.raw.{name}"));
        assert!(message.contains("mode = \"http\""), "{message}");
    }
}

/// An invalid file's error as (line, column, key, message).
fn located_error(text: &str) -> (usize, usize, String, String) {
    match parse(text) {
        Err(Error::Invalid {
            line,
            column,
            key,
            message,
            ..
        }) => (line, column, key, message),
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

/// The 1-based line and column (in characters) where `needle` first appears in `text`; `nth`
/// skips that many earlier occurrences.
fn position_of(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let (at, _) = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("no {needle:?} #{nth} in {text}"));
    let before = &text[..at];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

const LISTENER: &str = r#"
[listeners.web]
bind = "127.0.0.1:8080"
mode = "http"
upstream = "app"
"#;

#[test]
fn a_server_listed_twice_is_rejected_at_the_second_entry() {
    let inline = format!(
        r#"{LISTENER}
[upstreams.app]
servers = [
  {{ address = "127.0.0.1:8081" }},
  {{ address = "127.0.0.1:8082" }},
  {{ address = "127.0.0.1:8081", weight = 2 }},
]
"#
    );
    let (line, column, key, message) = located_error(&inline);
    assert_eq!(
        (line, column),
        position_of(&inline, "\"127.0.0.1:8081\"", 1)
    );
    assert_eq!((line, column), (11, 15));
    assert_eq!(key, "upstreams.app.servers[2].address");
    assert_eq!(message, "server `127.0.0.1:8081` is listed twice");

    let tables = format!(
        r#"{LISTENER}
[[upstreams.app.servers]]
address = "127.0.0.1:8081"

[[upstreams.app.servers]]
weight = 3
address = "127.0.0.1:8081"
"#
    );
    let (line, column, key, message) = located_error(&tables);
    assert_eq!((line, column), (12, 11));
    assert_eq!(
        (line, column),
        position_of(&tables, "\"127.0.0.1:8081\"", 1)
    );
    assert_eq!(key, "upstreams.app.servers[1].address");
    assert!(message.contains("listed twice"), "{message}");

    // The same address string: a name and the IP it resolves to are two entries.
    let text = inline.replace(
        "{ address = \"127.0.0.1:8081\", weight = 2 }",
        "{ address = \"localhost:8081\", weight = 2 }",
    );
    assert_eq!(parse(&text).unwrap().upstreams[0].servers.len(), 3);
}

#[test]
fn zero_weight_on_its_own_line_of_a_server_table_is_located_there() {
    // TOML 1.0 inline tables cannot span lines, so a server written over several lines is a
    // [[upstreams.NAME.servers]] table.
    let text = format!(
        r#"{LISTENER}
[upstreams.app]
connect_timeout = "1s"

[[upstreams.app.servers]]
address = "127.0.0.1:8081"

[[upstreams.app.servers]]
address = "127.0.0.1:8082"
backup = true
    weight = 0
"#
    );
    let (line, column, key, message) = located_error(&text);
    assert_eq!((line, column), (16, 14), "at the 0 of `weight = 0`");
    assert_eq!(
        (line, column - "weight = ".len()),
        position_of(&text, "weight", 0)
    );
    assert_eq!(key, "upstreams.app.servers[1].weight");
    assert_eq!(message, "weight must be 1..=1000, got 0");

    // The same server as a multi-line inline table is a syntax error at the end of its first line,
    // which says how to write it instead.
    let text = format!(
        r#"{LISTENER}
[upstreams.app]
servers = [
  {{ address = "127.0.0.1:8081",
    weight = 0 }},
]
"#
    );
    let (line, column, key, message) = located_error(&text);
    assert_eq!((line, column), (9, 31), "after the comma ending the line");
    assert_eq!(key, "servers");
    assert!(message.starts_with("invalid inline table"), "{message}");
    assert!(message.contains("[[upstreams.NAME.servers]]"), "{message}");
}

#[test]
fn every_server_and_upstream_rule_points_at_the_value_it_is_about() {
    // (the upstream's lines, the text the error must point at, which occurrence, key, message)
    let cases: &[(&str, &str, usize, &str, &str)] = &[
        (
            "servers = [ { address = \"127.0.0.1:8081\", weight = 1001 } ]",
            "1001",
            0,
            "upstreams.app.servers[0].weight",
            "weight must be 1..=1000, got 1001",
        ),
        (
            "servers = [\n  { address = \"127.0.0.1:8081\" },\n  { address = \"localhost\" },\n]",
            "\"localhost\"",
            0,
            "upstreams.app.servers[1].address",
            "`localhost` needs a port (IP:port or host:port)",
        ),
        (
            "servers = [ { address = \"\" } ]",
            "\"\"",
            0,
            "upstreams.app.servers[0].address",
            "the address is empty; write IP:port or host:port",
        ),
        (
            "servers = [ ]",
            "[ ]",
            0,
            "upstreams.app.servers",
            "an upstream needs at least one server",
        ),
        (
            "strategy = \"leastconn\"\nservers = [ { address = \"127.0.0.1:8081\" } ]",
            "\"leastconn\"",
            0,
            "upstreams.app.strategy",
            "unknown strategy",
        ),
        (
            "response_timeout = \"0s\"\nservers = [ { address = \"127.0.0.1:8081\" } ]",
            "\"0s\"",
            0,
            "upstreams.app.response_timeout",
            "must be greater than 0",
        ),
        (
            "pool_idle_timeout = \"soon\"\nservers = [ { address = \"127.0.0.1:8081\" } ]",
            "\"soon\"",
            0,
            "upstreams.app.pool_idle_timeout",
            "not a duration",
        ),
        (
            "servers = [ { address = \"127.0.0.1:8081\" } ]\n\n[upstreams.app.ejection]\nbase_time = \"10s\"\nmax_time = \"5s\"",
            "\"5s\"",
            0,
            "upstreams.app.ejection.max_time",
            "at least base_time",
        ),
        (
            "servers = [ { address = \"127.0.0.1:8081\" } ]\n\n[upstreams.app.health_check]\nkind = \"http\"\npath = \"healthz\"",
            "\"healthz\"",
            0,
            "upstreams.app.health_check.path",
            "must start with `/`",
        ),
        // Type errors and missing fields, found by the TOML parser.
        (
            "servers = [ { address = \"127.0.0.1:8081\", weight = -1 } ]",
            "-1",
            0,
            "weight",
            "invalid value: integer `-1`, expected u32",
        ),
        (
            "retries = -1\nservers = [ { address = \"127.0.0.1:8081\" } ]",
            "-1",
            0,
            "retries",
            "invalid value: integer `-1`",
        ),
        (
            "servers = [ { address = \"127.0.0.1:8081\", wieght = 2 } ]",
            "wieght",
            0,
            "wieght",
            "unknown field `wieght`",
        ),
        (
            "servers = [ { address = \"127.0.0.1:8081\" }, { weight = 2 } ]",
            "{ weight",
            0,
            "address",
            "missing field `address`",
        ),
        (
            "retries = 1",
            "[upstreams.app]",
            0,
            "upstreams.app.servers",
            "missing field `servers`",
        ),
        (
            "retries = 1\n\n[[upstreams.app.servers]]\naddress = \"127.0.0.1:8081\"\n\n[[upstreams.app.servers]]\nweight = 2",
            "[[upstreams.app.servers]]",
            1,
            "upstreams.app.servers[1].address",
            "missing field `address`",
        ),
    ];
    for &(lines, needle, nth, want_key, want_message) in cases {
        let text = format!("{LISTENER}\n[upstreams.app]\n{lines}\n");
        let (line, column, key, message) = located_error(&text);
        assert_eq!(
            (line, column),
            position_of(&text, needle, nth),
            "{lines}: {key}: {message}"
        );
        assert_eq!(key, want_key, "{lines}: {message}");
        assert!(message.contains(want_message), "{lines}: {message}");
    }
}

#[test]
fn a_base_time_past_the_default_max_time_is_reported_at_base_time() {
    let text = "[upstreams.app]\nservers = [{ address = \"127.0.0.1:1\" }]\n[upstreams.app.ejection]\nbase_time = \"600s\"\n";
    let (line, column, key, message) = located_error(text);
    assert_eq!(
        (line, column, key.as_str()),
        (4, 13, "upstreams.app.ejection.base_time"),
        "{message}"
    );
    assert!(message.contains("raise max_time"), "{message}");
    let both = format!("{text}max_time = \"60s\"\n");
    let (line, _, key, _) = located_error(&both);
    assert_eq!((line, key.as_str()), (5, "upstreams.app.ejection.max_time"));
}
