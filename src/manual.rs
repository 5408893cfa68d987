//! The man pages and shell completions, rendered from the clap definitions in `cli` (clap_mangen,
//! clap_complete) so they always describe the binary that prints them.
//!
//! clap_mangen writes NAME, SYNOPSIS, DESCRIPTION, OPTIONS, SUBCOMMANDS and VERSION from the doc
//! comments; the sections a command line cannot express (FILES the package installs, ENVIRONMENT,
//! EXAMPLES, SEE ALSO) are appended here, in roff built by the `roff` crate, which escapes them.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use roff::{bold, italic, roman, Roff};

use crate::cli::Cli;

/// The manual the pages belong to, printed in their header.
const MANUAL: &str = "User Commands";

/// Writes `fulcrum.1` and `fulcrum-SUBCOMMAND.1` for every visible subcommand into `dir`, dated
/// `date` when given; returns the paths written.
pub fn write_man_pages(dir: &Path, date: Option<&str>) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut root = Cli::command().disable_help_subcommand(true);
    // Builds the subcommands too, naming them `fulcrum-run` etc. (their page and file names).
    root.build();
    let mut written = Vec::new();
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut see_also = Roff::new();
        see_also
            .control("SH", ["SEE ALSO"])
            .text([bold("fulcrum"), roman("(1)")]);
        written.push(write_page(dir, sub.clone(), date, &see_also)?);
    }
    written.push(write_page(dir, root, date, &root_sections())?);
    Ok(written)
}

/// Writes the completion script for `shell` to standard output (built first: clap_complete panics
/// on a write error such as a closed pipe).
pub fn write_completions(shell: Shell) -> io::Result<()> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    io::stdout().write_all(&script)
}

fn write_page(
    dir: &Path,
    cmd: clap::Command,
    date: Option<&str>,
    extra: &Roff,
) -> io::Result<PathBuf> {
    let title = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_uppercase();
    let mut man = Man::new(cmd)
        .title(title)
        .source(concat!("fulcrum ", env!("CARGO_PKG_VERSION")))
        .manual(MANUAL);
    if let Some(date) = date {
        man = man.date(date);
    }
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    // Without a second copy of the apostrophe preamble `render` already wrote.
    page.extend_from_slice(extra.to_roff().as_bytes());
    std::fs::write(&path, page)?;
    Ok(path)
}

/// FILES, ENVIRONMENT, EXAMPLES and SEE ALSO of `fulcrum(1)`.
fn root_sections() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["FILES"]);
    r.control("TP", [])
        .text([italic("/etc/fulcrum/fulcrum.toml")])
        .text([
            roman("The configuration: "),
            bold("[runtime]"),
            roman(", "),
            bold("[admin]"),
            roman(", "),
            bold("[listeners.NAME]"),
            roman(" and "),
            bold("[upstreams.NAME]"),
            roman("; unknown keys are errors. The package installs a commented example."),
        ]);
    r.control("TP", [])
        .text([italic("/lib/systemd/system/fulcrum.service")])
        .text([roman(
            "The systemd unit (Type=notify, with a watchdog and ExecReload): it runs the daemon \
             as a dynamic user with only CAP_NET_BIND_SERVICE.",
        )]);
    r.control("TP", [])
        .text([italic("/usr/share/doc/fulcrum/README.md.gz")])
        .text([roman(
            "The full configuration reference, the admin endpoint and the metrics.",
        )]);
    r.control("SH", ["ENVIRONMENT"]);
    r.control("TP", []).text([bold("RUST_LOG")]).text([
        roman("The log filter when "),
        bold("--log-level"),
        roman(" is not given; without either, "),
        bold("info"),
        roman("."),
    ]);
    r.control("SH", ["EXAMPLES"]);
    r.text([roman(
        "Validate an edited configuration, then restart the service (the old process drains \
         first):",
    )]);
    example(
        &mut r,
        "fulcrum check -c /etc/fulcrum/fulcrum.toml && systemctl restart fulcrum",
    );
    r.text([roman(
        "Ask the admin endpoint (when [admin] binds 127.0.0.1:9900) for the servers' state:",
    )]);
    example(&mut r, "curl http://127.0.0.1:9900/status");
    r.control("SH", ["SEE ALSO"]).text([
        bold("systemctl"),
        roman("(1), "),
        bold("journalctl"),
        roman("(1), "),
        bold("systemd.service"),
        roman("(5)"),
    ]);
    r
}

/// A command line set apart, unfilled, as man pages show examples.
fn example(r: &mut Roff, line: &str) {
    r.control("PP", [])
        .control("RS", [])
        .control("nf", [])
        .text([roman(line)])
        .control("fi", [])
        .control("RE", [])
        .control("PP", []);
}
