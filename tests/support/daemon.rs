//! The real `fulcrum` binary, started on a temporary config file.
//!
//! The daemon's stderr is read on a thread for its whole life: the `listening` lines tell us the ports
//! it bound (configs use port 0), and the text is kept so a failing test can print it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::POLL;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fulcrum");

/// How long the daemon may take to bind everything its config names.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(10);

/// What the stderr reader has seen so far.
#[derive(Default)]
struct Seen {
    text: String,
    listeners: HashMap<String, Vec<SocketAddr>>,
    admin: Option<SocketAddr>,
    ansi: bool,
    eof: bool,
}

/// Builds a daemon from a config text in which `${NAME}` placeholders are replaced.
pub struct DaemonBuilder {
    config: String,
    vars: Vec<(String, String)>,
    log_level: String,
    nofile: Option<u64>,
    envs: Vec<(String, String)>,
    own_pid_env: Option<String>,
}

impl DaemonBuilder {
    /// Replaces `${name}` in the config with `value`.
    pub fn var(mut self, name: &str, value: impl ToString) -> Self {
        self.vars.push((format!("${{{name}}}"), value.to_string()));
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Sets an environment variable for the daemon (e.g. `NOTIFY_SOCKET`).
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.envs.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the environment variable `name` to the daemon's own pid (as systemd sets
    /// `WATCHDOG_PID`): the daemon is started through `sh`, which execs it keeping its pid.
    pub fn own_pid_env(mut self, name: &str) -> Self {
        self.own_pid_env = Some(name.to_string());
        self
    }

    /// Starts the daemon with RLIMIT_NOFILE set to `limit` (soft and hard, so it cannot raise it).
    pub fn nofile_limit(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// The config text after substitution.
    pub fn render(&self) -> String {
        let mut text = self.config.clone();
        for (k, v) in &self.vars {
            text = text.replace(k, v);
        }
        assert!(
            !text.contains("${"),
            "unsubstituted placeholder in config:\n{text}"
        );
        text
    }

    /// Starts the daemon and waits until every listener (and the admin endpoint) is bound.
    pub async fn start(self) -> Daemon {
        match self.try_start().await {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`start`](Self::start), but a daemon that exits or never binds is an `Err` carrying
    /// its stderr.
    pub async fn try_start(self) -> Result<Daemon, String> {
        let config = self.render();
        let expected = expected_binds(&config);
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("fulcrum.toml");
        std::fs::write(&config_path, &config).expect("write config");
        let pid_file = dir.path().join("fulcrum.pid");

        let mut command = match &self.own_pid_env {
            Some(name) => {
                let mut sh = Command::new("/bin/sh");
                sh.arg("-c")
                    .arg(format!("{name}=$$; export {name}; exec \"$0\" \"$@\""))
                    .arg(BIN);
                sh
            }
            None => Command::new(BIN),
        };
        command
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--log-level")
            .arg(&self.log_level)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(limit) = self.nofile {
            set_nofile_on_exec(&mut command, limit);
        }
        let mut child = command.spawn().expect("spawn fulcrum");
        let stderr = Arc::new(Mutex::new(Seen::default()));
        let stdout = Arc::new(Mutex::new(Seen::default()));
        read_lines(child.stderr.take().expect("stderr"), stderr.clone(), true);
        read_lines(child.stdout.take().expect("stdout"), stdout.clone(), false);

        let mut daemon = Daemon {
            child,
            exit: None,
            _dir: dir,
            config_path,
            pid_file,
            stderr,
            stdout,
        };
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if daemon.all_bound(&expected) {
                return Ok(daemon);
            }
            let exited = daemon.try_exit();
            if exited.is_some() || Instant::now() >= deadline {
                // Give the reader a moment to collect the last lines.
                let stderr = daemon.stderr.clone();
                super::eventually(Duration::from_secs(1), || stderr.lock().unwrap().eof).await;
                let why = match exited {
                    Some(status) => format!("fulcrum exited during startup with {status}"),
                    None => {
                        format!("fulcrum did not bind {expected:?} within {STARTUP_DEADLINE:?}")
                    }
                };
                return Err(format!(
                    "{why}\n--- config ---\n{config}\n--- stderr ---\n{}",
                    daemon.stderr_text()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Makes `command`'s child set RLIMIT_NOFILE (soft and hard) to `limit` before it execs.
fn set_nofile_on_exec(command: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    let rlim = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: limit as libc::rlim_t,
    };
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which is
    // async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// What the config asks to bind: listener name -> number of bind addresses, and whether an admin
/// TCP address is configured.
#[derive(Debug)]
struct Expected {
    listeners: Vec<(String, usize)>,
    admin: bool,
}

fn expected_binds(config: &str) -> Expected {
    let value: toml::Value = config
        .parse()
        .unwrap_or_else(|e| panic!("test config is not TOML: {e}\n{config}"));
    let mut listeners = Vec::new();
    if let Some(table) = value.get("listeners").and_then(|l| l.as_table()) {
        for (name, l) in table {
            let n = match l.get("bind") {
                Some(toml::Value::Array(a)) => a.len(),
                Some(_) => 1,
                None => 0,
            };
            listeners.push((name.clone(), n));
        }
    }
    let admin = value
        .get("admin")
        .and_then(|a| a.get("bind"))
        .and_then(|b| b.as_str())
        .is_some_and(|b| !b.starts_with("unix:"));
    Expected { listeners, admin }
}

/// Reads `pipe` line by line until EOF, keeping the text and (for stderr) the bound addresses.
fn read_lines(pipe: impl Read + Send + 'static, seen: Arc<Mutex<Seen>>, parse: bool) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let raw = String::from_utf8_lossy(&buf);
                    let line = strip_ansi(&raw);
                    let mut s = seen.lock().unwrap();
                    s.ansi |= raw.contains('\u{1b}');
                    if parse {
                        if let Some((name, addr)) = parse_listening(&line) {
                            let addrs = s.listeners.entry(name).or_default();
                            if !addrs.contains(&addr) {
                                addrs.push(addr);
                            }
                        } else if let Some(addr) = parse_admin(&line) {
                            s.admin = Some(addr);
                        }
                    }
                    s.text.push_str(&line);
                    if !line.ends_with('\n') {
                        s.text.push('\n');
                    }
                }
            }
        }
        seen.lock().unwrap().eof = true;
    });
}

/// Removes terminal colour sequences (`ESC [ ... letter`), which the daemon should not emit anyway;
/// `cli.rs` checks that separately.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A field value: up to whitespace, without surrounding quotes (tracing quotes `&str` fields
/// recorded by value).
fn token(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or("").trim_matches('"')
}

/// `... listening listener=NAME addr=IP:PORT ...`
pub fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = &line[line.find("listening listener=")? + "listening listener=".len()..];
    let name = token(rest).to_string();
    let addr = token(&rest[rest.find("addr=")? + "addr=".len()..])
        .parse()
        .ok()?;
    Some((name, addr))
}

/// `... admin listening addr=IP:PORT ...`
pub fn parse_admin(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("admin listening")? + "admin listening".len()..];
    token(&rest[rest.find("addr=")? + "addr=".len()..])
        .parse()
        .ok()
}

/// A running `fulcrum run` process; killed (SIGKILL) on drop if it is still running.
pub struct Daemon {
    child: Child,
    exit: Option<ExitStatus>,
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    pid_file: PathBuf,
    stderr: Arc<Mutex<Seen>>,
    stdout: Arc<Mutex<Seen>>,
}

impl Daemon {
    /// A builder for `config` at log level `info`.
    pub fn builder(config: &str) -> DaemonBuilder {
        DaemonBuilder {
            config: config.to_string(),
            vars: Vec::new(),
            log_level: "info".to_string(),
            nofile: None,
            envs: Vec::new(),
            own_pid_env: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The pid file the daemon was told to write (in its temporary directory).
    pub fn pid_file(&self) -> &Path {
        &self.pid_file
    }

    /// Replaces the daemon's config file (for a reload), `${NAME}` already substituted.
    pub fn write_config(&self, text: &str) {
        assert!(
            !text.contains("${"),
            "unsubstituted placeholder in config:\n{text}"
        );
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// Runs `fulcrum reload` against this daemon; returns (exit code, stdout, stderr).
    pub fn reload_command(&self) -> (i32, String, String) {
        let out = Command::new(BIN)
            .arg("reload")
            .arg("-c")
            .arg(&self.config_path)
            .arg("--pid-file")
            .arg(&self.pid_file)
            .arg("--timeout")
            .arg("20s")
            .output()
            .expect("run fulcrum reload");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The first address listener `name` bound.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs(name)[0]
    }

    /// Every address listener `name` bound, in log order.
    pub fn addrs(&self, name: &str) -> Vec<SocketAddr> {
        let seen = self.stderr.lock().unwrap();
        match seen.listeners.get(name) {
            Some(a) if !a.is_empty() => a.clone(),
            _ => panic!(
                "listener {name:?} never logged `listening`\n--- stderr ---\n{}",
                seen.text
            ),
        }
    }

    /// The admin endpoint's TCP address.
    pub fn admin_addr(&self) -> SocketAddr {
        let seen = self.stderr.lock().unwrap();
        seen.admin
            .unwrap_or_else(|| panic!("no `admin listening` line\n--- stderr ---\n{}", seen.text))
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().text.clone()
    }

    /// Whether any stderr line carried a terminal escape (they are stripped from the kept text).
    pub fn stderr_had_ansi(&self) -> bool {
        self.stderr.lock().unwrap().ansi
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().text.clone()
    }

    /// Waits until stderr contains `needle`.
    pub async fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        super::eventually(timeout, || {
            self.stderr.lock().unwrap().text.contains(needle)
        })
        .await
    }

    /// Sends a signal (`TERM`, `INT`, `HUP`, ...) to the daemon by PID.
    pub fn signal(&self, sig: &str) {
        let number = match sig {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "HUP" => libc::SIGHUP,
            "USR1" => libc::SIGUSR1,
            "KILL" => libc::SIGKILL,
            other => panic!("unknown signal {other}"),
        };
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a child's pid and a valid signal number has no memory effects.
        let rc = unsafe { libc::kill(pid, number) };
        assert_eq!(
            rc,
            0,
            "kill -{sig} {pid} failed: {}",
            std::io::Error::last_os_error()
        );
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Waits (polling) until the process exits; `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn all_bound(&self, expected: &Expected) -> bool {
        let seen = self.stderr.lock().unwrap();
        let listeners_ok = expected
            .listeners
            .iter()
            .all(|(name, n)| seen.listeners.get(name).is_some_and(|a| a.len() >= *n));
        listeners_ok && (!expected.admin || seen.admin.is_some())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- fulcrum (pid {}) stderr ---\n{}",
                self.child.id(),
                self.stderr_text()
            );
            let out = self.stdout_text();
            if !out.is_empty() {
                eprintln!("--- fulcrum stdout ---\n{out}");
            }
        }
    }
}

/// How long a one-shot CLI command (`check`, `--version`) may take.
pub const CLI_DEADLINE: Duration = Duration::from_secs(10);

/// Runs `fulcrum ARGS` to completion: (exit code, stdout, stderr). Panics if it takes longer than
/// [`CLI_DEADLINE`] (the process is killed by PID first).
pub fn run_cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fulcrum");
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = collect(Box::new(child.stdout.take().expect("stdout")));
    let err = collect(Box::new(child.stderr.take().expect("stderr")));
    let started = tokio::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > CLI_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fulcrum did not finish within {CLI_DEADLINE:?}");
        }
        std::thread::sleep(POLL);
    };
    (
        status.code(),
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}
