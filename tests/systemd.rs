//! systemd's notify protocol through the real daemon, with the test's own `NOTIFY_SOCKET` (systemd
//! is not PID 1 here): READY once listening, RELOADING/READY around a reload, STOPPING at
//! shutdown, and WATCHDOG pings that stop while a worker thread is frozen (ptrace) and resume after.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::client::get_once;
use support::{Behaviour, Daemon, HttpBackend};
use tokio::net::UnixDatagram;
use tokio::time::Instant;

const CONFIG: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"

[upstreams.app]
servers = [ { address = "${A}" } ]
"#;

/// The test's end of `$NOTIFY_SOCKET`.
struct Notifications {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Notifications {
    fn bind() -> Notifications {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notifications {
            socket,
            _dir: dir,
            path,
        }
    }

    /// The next message, or `None` after `timeout`.
    async fn next(&self, timeout: Duration) -> Option<String> {
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(timeout, self.socket.recv(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits for a message containing `needle`; returns it, panicking with what came instead.
    async fn expect(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while let Some(message) = self.next(deadline - Instant::now()).await {
            if message.contains(needle) {
                return message;
            }
            seen.push(message);
        }
        panic!("no {needle:?} notification; got {seen:?}");
    }

    /// Counts the `WATCHDOG=1` messages that arrive within `window`.
    async fn pings_within(&self, window: Duration) -> usize {
        let end = Instant::now() + window;
        let mut pings = 0;
        while let Some(message) = self
            .next(end.saturating_duration_since(Instant::now()))
            .await
        {
            pings += usize::from(message.contains("WATCHDOG=1"));
        }
        pings
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_listening_then_reloading_ready_and_stopping() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let notify = Notifications::bind();
    let mut d = Daemon::builder(CONFIG)
        .var("A", a.addr())
        .env("NOTIFY_SOCKET", notify.path.display())
        .start()
        .await;
    let ready = notify.expect("READY=1").await;
    assert!(ready.contains("STATUS=serving"), "{ready}");
    assert_eq!(get_once(d.addr("web"), "/").await.status, StatusCode::OK);

    d.signal("HUP");
    let reloading = notify.expect("RELOADING=1").await;
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING without MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .unwrap();
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    let now_usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    assert!(
        usec <= now_usec && now_usec - usec < 10_000_000,
        "MONOTONIC_USEC={usec}, now {now_usec}"
    );
    assert!(notify.expect("READY=1").await.contains("STATUS=serving"));

    d.sigterm();
    notify.expect("STOPPING=1").await;
    assert!(d
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap()
        .success());
}

/// One thread of the daemon stopped from outside, as a wedged worker would be: ptrace attaches to
/// that thread alone (PTRACE_SEIZE + PTRACE_INTERRUPT) and the rest of the process runs on.
struct Frozen {
    release: std::sync::mpsc::Sender<()>,
    done: std::thread::JoinHandle<()>,
}

impl Frozen {
    fn thread(pid: u32, name: &str) -> Frozen {
        let tid = thread_id(pid, name);
        let (frozen_tx, frozen_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        // Every ptrace call on a tracee must come from the thread that attached.
        let done = std::thread::spawn(move || {
            // SAFETY: ptrace and waitpid on a thread of our own child; no memory of ours is lent.
            unsafe {
                assert_eq!(
                    libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                    0,
                    "PTRACE_SEIZE: {}",
                    std::io::Error::last_os_error()
                );
                assert_eq!(
                    libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0),
                    0,
                    "PTRACE_INTERRUPT: {}",
                    std::io::Error::last_os_error()
                );
                let mut status = 0;
                assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
            }
            frozen_tx.send(()).unwrap();
            let _ = release_rx.recv();
            // SAFETY: as above; the tracee is in ptrace-stop, as PTRACE_DETACH needs.
            unsafe {
                assert_eq!(
                    libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0),
                    0,
                    "PTRACE_DETACH: {}",
                    std::io::Error::last_os_error()
                );
            }
        });
        frozen_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("thread frozen");
        Frozen { release, done }
    }

    fn thaw(self) {
        self.release.send(()).unwrap();
        self.done.join().unwrap();
    }
}

/// The id of the thread called `name` in process `pid`.
fn thread_id(pid: u32, name: &str) -> i32 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap();
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return task.file_name().to_string_lossy().parse().unwrap();
        }
    }
    panic!("no thread {name} in process {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_stop_while_a_worker_is_frozen_and_resume_after() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let notify = Notifications::bind();
    // WatchdogSec=400ms: a ping every 200 ms.
    let d = Daemon::builder(CONFIG)
        .var("A", a.addr())
        .env("NOTIFY_SOCKET", notify.path.display())
        .env("WATCHDOG_USEC", 400_000)
        .own_pid_env("WATCHDOG_PID")
        .start()
        .await;
    notify.expect("READY=1").await;
    let alive = notify.pings_within(Duration::from_secs(2)).await;
    assert!(
        (5..=11).contains(&alive),
        "{alive} pings in 2 s at one per 200 ms"
    );

    let frozen = Frozen::thread(d.pid(), "fulcrum-w0");
    assert!(
        d.wait_for_stderr("withholding the watchdog ping", Duration::from_secs(5))
            .await,
        "the frozen worker went unnoticed:\n{}",
        d.stderr_text()
    );
    // Pings sent before the stall was seen are in the socket already; from now on none.
    while notify.next(Duration::from_millis(1)).await.is_some() {}
    let stalled = notify.pings_within(Duration::from_secs(2)).await;
    println!("watchdog: {alive} pings in 2 s alive, {stalled} in 2 s with fulcrum-w0 frozen");
    assert_eq!(stalled, 0, "pings went on while a worker was frozen");

    frozen.thaw();
    assert!(
        notify.pings_within(Duration::from_secs(2)).await >= 3,
        "pings did not resume"
    );
    assert!(
        d.wait_for_stderr("watchdog pings resume", Duration::from_secs(5))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_watchdog_pings_unless_systemd_asks_this_process() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let notify = Notifications::bind();
    // A watchdog meant for another process (a parent's WATCHDOG_PID) is not this one's.
    let _d = Daemon::builder(CONFIG)
        .var("A", a.addr())
        .env("NOTIFY_SOCKET", notify.path.display())
        .env("WATCHDOG_USEC", 400_000)
        .env("WATCHDOG_PID", 1)
        .start()
        .await;
    notify.expect("READY=1").await;
    assert_eq!(notify.pings_within(Duration::from_secs(1)).await, 0);
}
