//! The status page in a real browser: headless Chromium (Debian's `chromium` package) renders
//! `GET /` after a drain and a disable, the DOM it dumps shows every server with its state word and
//! state colour, and its screenshot is not blank (the state colours are painted). Chromium missing
//! is a failure, never a skip.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use support::admin::action;
use support::{Behaviour, Daemon, HttpBackend};

const CONFIG: &str = r#"
[runtime]
worker_threads = 1

[admin]
bind = "127.0.0.1:0"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"

[upstreams.app]
servers = [
  { address = "${A}" },
  { address = "${B}" },
  { address = "${C}", weight = 2 },
  { address = "${D}", down = true },
]
"#;

/// How long one Chromium run may take (it usually takes about a second).
const BROWSER_DEADLINE: Duration = Duration::from_secs(60);

/// The background colours the page gives each state (see src/admin/page.rs), as RGB.
const DRAINING: [u8; 3] = [0x15, 0x65, 0xc0];
const DISABLED: [u8; 3] = [0x6a, 0x1b, 0x9a];
const UP: [u8; 3] = [0x2e, 0x7d, 0x32];

fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "tests/status_page.rs needs headless Chromium: install Debian's `chromium` package \
         (apt-get install -y chromium); neither `chromium` nor `chromium-browser` is on PATH"
    );
}

/// Runs Chromium headless on `url` with `args`; returns its stdout. Killed (by its PID, through
/// the child handle) if it outlives [`BROWSER_DEADLINE`].
fn browse(profile: &Path, args: &[String], url: &str) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let started = tokio::time::Instant::now();
    while child.try_wait().expect("wait for chromium").is_none() {
        if started.elapsed() > BROWSER_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} {url} took more than {BROWSER_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("chromium output");
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the DOM is UTF-8")
}

/// The `<tr>` of the rendered table that starts with `address`.
fn row<'a>(dom: &'a str, address: &str) -> &'a str {
    let cell = format!("<td>{address}</td>");
    let start = dom
        .find(&cell)
        .unwrap_or_else(|| panic!("no row for {address} in the rendered DOM:\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find("</tr>").unwrap_or(rest.len())]
}

/// Every distinct RGB colour of the PNG at `path`.
fn colours(path: &Path) -> std::collections::HashSet<[u8; 3]> {
    let decoder = png::Decoder::new(std::fs::File::open(path).expect("open the screenshot"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("decode the PNG");
    assert_eq!((info.width, info.height), (1200, 800), "--window-size");
    let step = info.color_type.samples();
    assert!(step >= 3, "{:?} is not a colour image", info.color_type);
    pixels[..info.buffer_size()]
        .chunks_exact(step)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_every_server_with_its_state_after_a_drain_and_a_disable() {
    let mut backends = Vec::new();
    for name in ["a", "b", "c", "d"] {
        backends.push(HttpBackend::start(name, Behaviour::Identity).await);
    }
    let addresses: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let d = Daemon::builder(CONFIG)
        .var("A", &addresses[0])
        .var("B", &addresses[1])
        .var("C", &addresses[2])
        .var("D", &addresses[3])
        .start()
        .await;
    let admin = d.admin_addr();
    for (address, verb) in [(&addresses[0], "drain"), (&addresses[1], "disable")] {
        let r = action(admin, "app", address, verb, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{verb}: {}", r.text());
    }
    let url = format!("http://{admin}/");
    let profile = tempfile::tempdir().unwrap();
    let shot = profile.path().join("status.png");
    let (dom, shot) = tokio::task::spawn_blocking(move || {
        let dom = browse(profile.path(), &["--dump-dom".into()], &url);
        let args = [
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,800".into(),
            "--hide-scrollbars".into(),
        ];
        browse(profile.path(), &args, &url);
        (dom, (colours(&shot), profile))
    })
    .await
    .unwrap();
    let (colours, _profile) = shot;

    let version = env!("CARGO_PKG_VERSION");
    assert!(
        dom.contains(&format!("<h1>fulcrum {version}</h1>")),
        "{dom}"
    );
    let expected = [
        (&addresses[0], "draining"),
        (&addresses[1], "disabled"),
        (&addresses[2], "up"),
        (&addresses[3], "config_down"),
    ];
    for (address, state) in expected {
        let row = row(&dom, address);
        assert!(
            row.contains(&format!("<span class=\"state {state}\">{state}</span>")),
            "{address} should show {state}: {row}"
        );
    }
    assert!(
        row(&dom, &addresses[2]).contains("<td class=\"n\">2</td>"),
        "weight 2 shows"
    );
    assert!(colours.len() > 1, "the screenshot is blank");
    for (colour, state) in [(DRAINING, "draining"), (DISABLED, "disabled"), (UP, "up")] {
        assert!(
            colours.contains(&colour),
            "no {state} colour {colour:02x?} in the screenshot ({} colours)",
            colours.len()
        );
    }
}
