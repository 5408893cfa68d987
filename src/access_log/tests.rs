use super::*;

fn config(path: &std::path::Path, format: LogFormat) -> AccessLogConfig {
    AccessLogConfig {
        destination: LogDestination::File(path.to_path_buf()),
        format,
    }
}

fn log_one(log: &AccessLog, path: &str) {
    let mut entry = log.entry(&Request {
        client: "127.0.0.1:5000".parse().unwrap(),
        protocol: Protocol::Http11,
        started: Instant::now(),
        method: Some(b"GET"),
        path: Some(path.as_bytes()),
        upstream: Some("app"),
        request_id: Some(b"rid"),
        trace_id: None,
        referer: None,
        user_agent: None,
    });
    entry.served("10.0.0.1:80", Duration::from_millis(1));
    entry.status(200);
    entry.sent(5);
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn listeners_naming_one_file_share_its_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let logs = AccessLogs::default();
    let a = logs.open(&config(&path, LogFormat::Json), "a").unwrap();
    let b = logs.open(&config(&path, LogFormat::Json), "b").unwrap();
    assert!(Arc::ptr_eq(&a.0.writer, &b.0.writer));
    assert_eq!(logs.live().len(), 1);
    log_one(&a, "/1");
    log_one(&b, "/2");
    logs.flush(Duration::from_secs(5));
    let got = lines(&path);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["listener"], "a");
    assert_eq!(got[1]["listener"], "b");
    assert_eq!(got[1]["path"], "/2");
    assert_eq!(got[1]["status"], 200);
    assert_eq!(got[1]["bytes"], 5);
    assert_eq!(got[1]["server"], "10.0.0.1:80");
    assert_eq!(got[1]["upstream_time"], 0.001);
}

#[test]
fn reopen_writes_to_the_path_anew() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let logs = AccessLogs::default();
    let log = logs.open(&config(&path, LogFormat::Json), "web").unwrap();
    log_one(&log, "/before");
    logs.flush(Duration::from_secs(5));
    std::fs::rename(&path, &rotated).unwrap();
    log_one(&log, "/still-old");
    logs.flush(Duration::from_secs(5));
    logs.reopen();
    log_one(&log, "/after");
    logs.flush(Duration::from_secs(5));
    let old: Vec<_> = lines(&rotated).iter().map(|v| v["path"].clone()).collect();
    assert_eq!(old, ["/before", "/still-old"]);
    let new: Vec<_> = lines(&path).iter().map(|v| v["path"].clone()).collect();
    assert_eq!(new, ["/after"]);
}

#[test]
fn a_writer_ends_with_its_last_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let logs = AccessLogs::default();
    let log = logs
        .open(&config(&path, LogFormat::Combined), "web")
        .unwrap();
    drop(log);
    assert!(logs.live().is_empty());
    let again = logs
        .open(&config(&path, LogFormat::Combined), "web")
        .unwrap();
    log_one(&again, "/x");
    logs.flush(Duration::from_secs(5));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("127.0.0.1 - - ["), "{text}");
    assert!(
        text.ends_with("\"GET /x HTTP/1.1\" 200 5 \"-\" \"-\" \"rid\"\n"),
        "{text}"
    );
}

#[test]
fn an_unopenable_file_names_the_listener_and_the_path() {
    let logs = AccessLogs::default();
    let path = std::path::Path::new("/nonexistent-dir/access.log");
    let err = logs
        .open(&config(path, LogFormat::Json), "web")
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(text.contains("listener `web`"), "{text}");
    assert!(text.contains("/nonexistent-dir/access.log"), "{text}");
}
