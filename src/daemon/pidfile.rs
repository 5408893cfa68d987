//! How `fulcrum reload` finds the running daemon and learns how its reload went: the daemon writes
//! its pid to the pid file (default `/run/fulcrum/fulcrum.pid`) and, beside it, a status file
//! (`fulcrum.reload`) with one line per outcome: a sequence number, `ok` or `error`, the config
//! path it reads, and a message. `fulcrum reload` validates the file, sends SIGHUP, and waits for
//! the sequence number to move.

use std::io;
use std::path::{Path, PathBuf};

/// Where `fulcrum run` writes its pid unless told otherwise (systemd's `RuntimeDirectory=fulcrum`).
pub const DEFAULT_PID_FILE: &str = "/run/fulcrum/fulcrum.pid";

/// The pid file of a running daemon; removed (with its status file) when dropped at exit.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's pid to `path`.
    pub fn create(path: &Path) -> io::Result<PidFile> {
        write_atomically(path, &format!("{}\n", std::process::id()))?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }

    /// Records a reload's outcome (or the start, as number 0) for `fulcrum reload` to read.
    pub fn record(&self, status: &ReloadStatus) -> io::Result<()> {
        write_atomically(&status_path(&self.path), &status.to_line())
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(status_path(&self.path));
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One outcome in the status file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    /// 0 at start, then one more per reload.
    pub sequence: u64,
    /// Whether the new configuration runs.
    pub ok: bool,
    /// The file the daemon reads.
    pub config: PathBuf,
    /// What happened, in one line.
    pub message: String,
}

impl ReloadStatus {
    fn to_line(&self) -> String {
        let result = if self.ok { "ok" } else { "error" };
        let message = self.message.replace(['\n', '\t'], " ");
        format!(
            "{}\t{result}\t{}\t{message}\n",
            self.sequence,
            self.config.display()
        )
    }

    fn parse(line: &str) -> Option<ReloadStatus> {
        let mut fields = line.trim_end_matches('\n').splitn(4, '\t');
        let sequence = fields.next()?.parse().ok()?;
        let ok = match fields.next()? {
            "ok" => true,
            "error" => false,
            _ => return None,
        };
        let config = PathBuf::from(fields.next()?);
        let message = fields.next().unwrap_or("").to_string();
        Some(ReloadStatus {
            sequence,
            ok,
            config,
            message,
        })
    }
}

/// The status file beside a pid file.
fn status_path(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("reload")
}

/// The pid in a pid file.
pub fn read_pid(pid_file: &Path) -> io::Result<i32> {
    let text = std::fs::read_to_string(pid_file)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("`{}` does not hold a pid", pid_file.display()),
        )
    })
}

/// The last outcome the daemon of `pid_file` recorded, if it recorded one.
pub fn read_status(pid_file: &Path) -> Option<ReloadStatus> {
    let text = std::fs::read_to_string(status_path(pid_file)).ok()?;
    ReloadStatus::parse(&text)
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`, so a reader never
/// sees half a file.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_reads_back_as_written() {
        let status = ReloadStatus {
            sequence: 7,
            ok: false,
            config: PathBuf::from("/etc/fulcrum/fulcrum.toml"),
            message: "bad\tfile\nat line 3".into(),
        };
        let back = ReloadStatus::parse(&status.to_line()).unwrap();
        assert_eq!(back.message, "bad file at line 3");
        assert_eq!((back.sequence, back.ok), (7, false));
        assert_eq!(back.config, status.config);
        assert_eq!(ReloadStatus::parse("7\tmaybe\t/x\t"), None);
    }

    #[test]
    fn the_pid_file_and_status_go_when_the_daemon_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fulcrum.pid");
        let pid = PidFile::create(&path).unwrap();
        assert_eq!(read_pid(&path).unwrap(), std::process::id() as i32);
        let status = ReloadStatus {
            sequence: 0,
            ok: true,
            config: PathBuf::from("f.toml"),
            message: "started".into(),
        };
        pid.record(&status).unwrap();
        assert_eq!(read_status(&path), Some(status));
        drop(pid);
        assert!(!path.exists());
        assert_eq!(read_status(&path), None);
    }
}
