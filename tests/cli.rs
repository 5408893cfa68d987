//! The command line: `--version`, `check` on good and bad files, the startup log lines the
//! harness relies on, and the man pages and shell completions generated from it.

mod support;

use std::path::Path;

use support::daemon::run_cli;
use support::Daemon;

const GOOD: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[admin]
bind = "127.0.0.1:0"

[listeners.web]
bind = "127.0.0.1:18080"
mode = "http"
upstream = "app"

[listeners.hello]
bind = ["127.0.0.1:18081", "127.0.0.1:18082"]
mode = "http"
respond = { status = 200, body = "hello\n", headers = { "content-type" = "text/plain" } }

[listeners.l4]
bind = "127.0.0.1:18083"
mode = "tcp"
upstream = "app"

[upstreams.app]
strategy = "round_robin"
connect_timeout = "1s"
response_timeout = "2s"
retries = 2
servers = [
  { address = "127.0.0.1:18090", weight = 1 },
  { address = "127.0.0.1:18091", weight = 2, backup = true },
  { address = "127.0.0.1:18092", down = true },
]
"#;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn version_prints_the_crate_version() {
    let (code, out, err) = run_cli(&["--version"]);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "stdout: {out:?}");
}

#[test]
fn check_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", GOOD);
    let (code, out, err) = run_cli(&["check".as_ref(), "-c".as_ref(), path.as_os_str()]);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("configuration OK"), "stdout: {out:?}");
}

/// A bad file, a needle found on the line the error must point at, and the key it must name.
struct Bad {
    name: &'static str,
    text: String,
    lines: Vec<&'static str>,
    key: &'static str,
}

fn bad_files() -> Vec<Bad> {
    let upstream = r#"
[listeners.web]
bind = "127.0.0.1:18080"
mode = "http"
upstream = "app"

[upstreams.app]
servers = [ { address = "127.0.0.1:18090" } ]
"#;
    vec![
        Bad {
            name: "zero_weight",
            text: r#"
[listeners.web]
bind = "127.0.0.1:18080"
mode = "http"
upstream = "app"

[upstreams.app]
servers = [
  { address = "127.0.0.1:18090", weight = 1 },
  { address = "127.0.0.1:18091", weight = 0 },
]
"#
            .into(),
            lines: vec!["weight = 0"],
            key: "weight",
        },
        Bad {
            name: "unknown_upstream",
            text: r#"
[listeners.web]
bind = "127.0.0.1:18080"
mode = "http"
upstream = "nope"

[upstreams.app]
servers = [ { address = "127.0.0.1:18090" } ]
"#
            .into(),
            lines: vec!["upstream = \"nope\""],
            key: "upstream",
        },
        Bad {
            name: "unknown_key",
            text: upstream.replace("mode = \"http\"", "mode = \"http\"\ncolour = \"blue\""),
            lines: vec!["colour"],
            key: "colour",
        },
        Bad {
            name: "duplicate_bind",
            text: format!(
                "{upstream}{}",
                r#"
[listeners.again]
bind = "127.0.0.1:18080"   # same address as web
mode = "http"
upstream = "app"
"#
            ),
            lines: vec!["bind = \"127.0.0.1:18080\""],
            key: "bind",
        },
        Bad {
            name: "tcp_with_respond",
            text: r#"
[listeners.l4]
bind = "127.0.0.1:18083"
mode = "tcp"
respond = { status = 200, body = "no" }
"#
            .into(),
            lines: vec!["respond ="],
            key: "respond",
        },
        Bad {
            name: "bad_duration",
            text: upstream.replace(
                "[upstreams.app]",
                "[upstreams.app]\nconnect_timeout = \"5 parsecs\"",
            ),
            lines: vec!["parsecs"],
            key: "connect_timeout",
        },
        Bad {
            name: "no_servers",
            text: upstream.replace(
                "servers = [ { address = \"127.0.0.1:18090\" } ]",
                "servers = []",
            ),
            lines: vec!["servers = []"],
            key: "servers",
        },
    ]
}

/// Whether `text` says `line N` (and not `line N0`).
fn names_line(text: &str, n: usize) -> bool {
    let needle = format!("line {n}");
    text.match_indices(&needle).any(|(i, _)| {
        !text[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn check_rejects_bad_files_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for bad in bad_files() {
        let path = write(dir.path(), &format!("{}.toml", bad.name), &bad.text);
        let (code, out, err) = run_cli(&["check".as_ref(), "-c".as_ref(), path.as_os_str()]);
        // Any line holding a needle is acceptable (a duplicate bind may be reported at either).
        let lines: Vec<usize> = bad
            .text
            .lines()
            .enumerate()
            .filter(|(_, l)| bad.lines.iter().any(|n| l.contains(n)))
            .map(|(i, _)| i + 1)
            .collect();
        assert!(!lines.is_empty(), "{}: no needle in the file", bad.name);
        let mut problems = Vec::new();
        if code != Some(1) {
            problems.push(format!("exit code {code:?}, expected 1"));
        }
        if out.contains("configuration OK") {
            problems.push("stdout says configuration OK".to_string());
        }
        if !err.contains(&*path.to_string_lossy()) {
            problems.push("stderr does not name the file".to_string());
        }
        if !lines.iter().any(|n| names_line(&err, *n)) {
            problems.push(format!("stderr does not name line {lines:?}"));
        }
        if !err.contains(bad.key) {
            problems.push(format!("stderr does not name the key `{}`", bad.key));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n  stderr: {}\n  stdout: {}",
                bad.name,
                problems.join("; "),
                err.trim(),
                out.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn check_on_a_missing_file_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let (code, _out, err) = run_cli(&["check".as_ref(), "-c".as_ref(), path.as_os_str()]);
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains(&*path.to_string_lossy()), "stderr: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_each_bound_address_plainly() {
    let config = r#"
[runtime]
worker_threads = 2

[admin]
bind = "127.0.0.1:0"

[listeners.hello]
bind = ["127.0.0.1:0", "127.0.0.1:0"]
mode = "http"
respond = { status = 204, body = "" }
"#;
    let d = Daemon::builder(config).start().await;
    let addrs = d.addrs("hello");
    assert_eq!(addrs.len(), 2, "two binds, two addresses: {addrs:?}");
    assert!(addrs.iter().all(|a| a.port() != 0 && a.ip().is_loopback()));
    let text = d.stderr_text();
    for a in &addrs {
        let line = format!("listening listener=hello addr={a}");
        assert!(text.contains(&line), "no line containing {line:?}:\n{text}");
    }
    let admin = format!("admin listening addr={}", d.admin_addr());
    assert!(
        text.contains(&admin),
        "no line containing {admin:?}:\n{text}"
    );
    assert!(
        !d.stderr_had_ansi(),
        "ANSI escapes in a non-tty log:\n{text}"
    );
    for a in addrs {
        let r = support::client::get_once(a, "/").await;
        assert_eq!(r.status.as_u16(), 204);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_1_naming_the_listener_when_its_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = r#"
[listeners.web]
bind = "${ADDR}"
mode = "http"
respond = { status = 200 }
"#;
    let err = match Daemon::builder(config).var("ADDR", addr).try_start().await {
        Ok(_) => panic!("the daemon started on an address another socket holds"),
        Err(e) => e,
    };
    assert!(err.contains("exit status: 1"), "{err}");
    let wanted = format!("listener `web`: cannot bind {addr}");
    assert!(err.contains(&wanted), "no {wanted:?} in:\n{err}");
}

#[test]
fn run_exits_1_on_an_invalid_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.toml",
        &GOOD.replace("weight = 2", "weight = 1001"),
    );
    let (code, _out, err) = run_cli(&["run".as_ref(), "-c".as_ref(), path.as_os_str()]);
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(
        err.contains("upstreams.app.servers[1].weight"),
        "stderr: {err}"
    );
    assert!(err.contains(&*path.to_string_lossy()), "stderr: {err}");
}

#[test]
fn a_fatal_error_is_printed_even_with_logging_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.toml",
        "[runtime]\nworker_threads = \"many\"\n",
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("worker_threads"), "stderr: {err}");
    assert!(err.contains("line 2"), "stderr: {err}");
}

#[test]
fn rust_log_sets_the_level_when_no_flag_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        "[listeners.web]\nbind = \"{}\"\nmode = \"http\"\nrespond = {{ status = 200 }}\n",
        taken.local_addr().unwrap()
    );
    let path = write(dir.path(), "taken.toml", &config);
    let run = |filter: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .args(["run", "-c"])
            .arg(&path)
            .env("RUST_LOG", filter)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    // The "starting" line is INFO: shown at info, hidden at warn; the bind error shows either way.
    let info = run("info");
    let warn = run("warn");
    assert!(info.contains("starting"), "RUST_LOG=info:\n{info}");
    assert!(!warn.contains("starting"), "RUST_LOG=warn:\n{warn}");
    assert!(warn.contains("cannot bind"), "RUST_LOG=warn:\n{warn}");
}

/// The subcommands `fulcrum --help` lists (but `help`), so that one added later is checked too.
fn subcommands() -> Vec<String> {
    let (code, out, err) = run_cli(&["--help"]);
    assert_eq!(code, Some(0), "stderr: {err}");
    let names: Vec<String> = out
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    for wanted in ["run", "check", "completions"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n == "generate-man"),
        "the package build's generator is listed: {names:?}"
    );
    names
}

#[test]
fn generate_man_writes_a_page_per_subcommand_that_the_main_page_names() {
    let subs = subcommands();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let (code, out, err) = run_cli(&[
        "generate-man".as_ref(),
        "--date".as_ref(),
        "2026-01-02".as_ref(),
        out_dir.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "stderr: {err}");
    let mut expected: Vec<String> = subs.iter().map(|s| format!("fulcrum-{s}.1")).collect();
    expected.push("fulcrum.1".to_string());
    expected.sort();
    let mut written: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, expected, "the files in {}", out_dir.display());
    let mut listed: Vec<String> = out
        .lines()
        .map(|l| {
            Path::new(l)
                .strip_prefix(&out_dir)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    listed.sort();
    assert_eq!(listed, expected, "stdout lists what was written");

    let version = env!("CARGO_PKG_VERSION");
    let main = std::fs::read_to_string(out_dir.join("fulcrum.1")).unwrap();
    let title = format!(".TH FULCRUM 1 2026-01-02 \"fulcrum {version}\" \"User Commands\"\n");
    assert!(main.contains(&title), "no {title:?} in:\n{main}");
    for section in ["SYNOPSIS", "OPTIONS", "SUBCOMMANDS", "FILES", "ENVIRONMENT"] {
        assert!(
            main.contains(&format!(".SH {section}\n")),
            "no {section}:\n{main}"
        );
    }
    assert!(main.contains("/etc/fulcrum/fulcrum.toml"), "{main}");
    for sub in &subs {
        // roff writes a hyphen as `\-`.
        let reference = format!("\nfulcrum\\-{sub}(1)\n");
        assert!(main.contains(&reference), "no {reference:?} in:\n{main}");
        let page = std::fs::read_to_string(out_dir.join(format!("fulcrum-{sub}.1"))).unwrap();
        let title = format!(
            ".TH FULCRUM-{} 1 2026-01-02 \"fulcrum {version}\"",
            sub.to_uppercase()
        );
        assert!(page.contains(&title), "no {title:?} in:\n{page}");
        let synopsis = format!(".SH SYNOPSIS\n\\fBfulcrum {sub}\\fR");
        assert!(page.contains(&synopsis), "no {synopsis:?} in:\n{page}");
    }
    let run = std::fs::read_to_string(out_dir.join("fulcrum-run.1")).unwrap();
    assert!(run.contains("\\fB\\-\\-config\\fR"), "{run}");
    assert!(
        run.contains("[default: /etc/fulcrum/fulcrum.toml]"),
        "{run}"
    );
}

/// The words bash's completion of `fulcrum` offers for the command line `words` (the last one is
/// being completed), found by running the generated script in bash.
fn bash_offers(script: &str, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let run = format!(
        "{script}\nCOMP_WORDS=({words}); COMP_CWORD={cword}\n_fulcrum fulcrum '{cur}' '{prev}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words = quoted.join(" "),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let output = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &run])
        .output()
        .expect("run bash");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && err.is_empty(), "bash: {err}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn completions_bash_is_a_bash_script_that_completes_the_subcommands() {
    let subs = subcommands();
    let (code, script, err) = run_cli(&["completions", "bash"]);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(script.starts_with("_fulcrum() {\n"), "{script}");
    assert!(script.contains("complete -F _fulcrum "), "{script}");

    let offered = bash_offers(&script, &["fulcrum", ""]);
    for sub in &subs {
        assert!(offered.contains(sub), "{sub} not offered: {offered:?}");
    }
    assert!(
        !offered.iter().any(|w| w == "generate-man"),
        "the hidden generator is offered: {offered:?}"
    );
    let offered = bash_offers(&script, &["fulcrum", "run", "--c"]);
    assert_eq!(offered, ["--config"]);
}

#[test]
fn completions_cover_zsh_and_fish_and_refuse_an_unknown_shell() {
    let (code, zsh, err) = run_cli(&["completions", "zsh"]);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(zsh.starts_with("#compdef fulcrum\n"), "{zsh}");
    let (code, fish, err) = run_cli(&["completions", "fish"]);
    assert_eq!(code, Some(0), "stderr: {err}");
    for sub in subcommands() {
        let line = format!("-f -a \"{sub}\"");
        assert!(fish.contains(&line), "no {line:?} in:\n{fish}");
    }
    let (code, out, err) = run_cli(&["completions", "tcsh"]);
    assert_eq!(code, Some(2), "stdout: {out}");
    assert!(err.contains("invalid value 'tcsh'"), "stderr: {err}");
}

#[test]
fn check_names_the_exact_line_and_column_of_a_duplicate_server_and_a_zero_weight() {
    let dir = tempfile::tempdir().unwrap();
    let listener =
        "[listeners.web]\nbind = \"127.0.0.1:18080\"\nmode = \"http\"\nupstream = \"app\"\n";
    for (name, upstream, wanted) in [
        (
            "duplicate",
            "[upstreams.app]\nservers = [\n  { address = \"127.0.0.1:18090\" },\n  { address = \"127.0.0.1:18090\" },\n]\n",
            "line 9, column 15, key `upstreams.app.servers[1].address`: server `127.0.0.1:18090` is listed twice",
        ),
        (
            "zero_weight",
            "[[upstreams.app.servers]]\naddress = \"127.0.0.1:18090\"\n\n[[upstreams.app.servers]]\naddress = \"127.0.0.1:18091\"\nweight = 0\n",
            "line 11, column 10, key `upstreams.app.servers[1].weight`: weight must be 1..=1000, got 0",
        ),
    ] {
        let path = write(dir.path(), &format!("{name}.toml"), &format!("{listener}\n{upstream}"));
        let (code, out, err) = run_cli(&["check".as_ref(), "-c".as_ref(), path.as_os_str()]);
        assert_eq!(code, Some(1), "{name}: stdout: {out}");
        let wanted = format!("error in {} at {wanted}\n", path.display());
        assert_eq!(err, wanted, "{name}");
    }
}
