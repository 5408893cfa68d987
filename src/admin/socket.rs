//! Where the admin endpoint listens: a TCP address, or a unix socket that only its owner may use.
//!
//! The unix socket must never exist with a looser mode than 0600, not even for a moment, and the
//! umask is process-wide (changing it around `bind` would race every other thread creating files).
//! So the socket is bound inside a fresh directory of mode 0700 next to the target path, given mode
//! 0600 there, and renamed into place: nobody else can reach it before the rename, and the rename
//! replaces a stale socket file atomically. A path held by a live process (a connection to it is
//! accepted) or by something that is not a socket is left alone and the start fails. The file is
//! removed when the endpoint stops, unless another process has replaced it since.

use std::fs::{self, DirBuilder};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use tracing::info;

use crate::config::AdminBind;
use crate::listener;

/// Why the admin endpoint could not listen.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The TCP address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Tcp {
        /// `admin.bind`.
        addr: SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
    /// A step of creating the unix socket failed.
    #[error("unix:{}: cannot {step}: {source}", path.display())]
    Unix {
        /// The socket path from `admin.bind`.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// Something that is not a socket is at the path.
    #[error("unix:{}: the path exists and is not a socket; not replacing it", path.display())]
    NotASocket {
        /// The socket path from `admin.bind`.
        path: PathBuf,
    },
    /// A running process answers on the path (another Fulcrum, most likely).
    #[error("unix:{}: address in use (a process accepts connections on it)", path.display())]
    InUse {
        /// The socket path from `admin.bind`.
        path: PathBuf,
    },
}

/// A bound admin socket, not yet registered with a runtime.
pub enum Bound {
    /// `admin.bind = "IP:PORT"`.
    Tcp(std::net::TcpListener),
    /// `admin.bind = "unix:PATH"`, with the file it removes when dropped.
    Unix(UnixListener, SocketFile),
}

/// Binds `admin.bind` and logs where the endpoint listens.
pub fn bind(at: &AdminBind) -> Result<Bound, BindError> {
    match at {
        AdminBind::Tcp(addr) => {
            let tcp = |source| BindError::Tcp {
                addr: *addr,
                source,
            };
            let socket = listener::bind(*addr, 128, false).map_err(tcp)?;
            info!(addr = %socket.local_addr().map_err(tcp)?, "admin listening");
            Ok(Bound::Tcp(socket))
        }
        AdminBind::Unix(path) => {
            let (socket, file) = bind_unix(path)?;
            info!(path = %path.display(), "admin listening");
            Ok(Bound::Unix(socket, file))
        }
    }
}

fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile), BindError> {
    let fail = |step| {
        move |source| BindError::Unix {
            path: path.to_path_buf(),
            step,
            source,
        }
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BindError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        // A socket nobody accepts on is left over from a run that did not stop cleanly.
        Ok(_) if UnixStream::connect(path).is_ok() => {
            return Err(BindError::InUse {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("inspect the path")(e)),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let private = parent.join(format!(".fulcrum-admin.{}", std::process::id()));
    remove_leftover(&private);
    DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(fail("create a private directory beside it"))?;
    let staged = private.join("s");
    let placed = (|| {
        let socket = UnixListener::bind(&staged).map_err(fail("bind"))?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))
            .map_err(fail("set mode 0600"))?;
        fs::rename(&staged, path).map_err(fail("move the socket into place"))?;
        let meta = fs::symlink_metadata(path).map_err(fail("inspect the path"))?;
        Ok((
            socket,
            SocketFile {
                path: path.to_path_buf(),
                identity: (meta.dev(), meta.ino()),
            },
        ))
    })();
    // Empty after a successful rename; after a failure, the staged socket goes too.
    let _ = fs::remove_file(&staged);
    let _ = fs::remove_dir(&private);
    placed
}

/// Removes the private directory a killed run with the same process id left (a container's PID 1
/// has the same id every time), but only a real directory of this user: never one someone else
/// made to have the socket bound where they can reach it.
fn remove_leftover(private: &Path) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let ours = fs::symlink_metadata(private).is_ok_and(|m| m.is_dir() && m.uid() == me);
    if ours {
        let _ = fs::remove_file(private.join("s"));
        let _ = fs::remove_dir(private);
    }
}

/// The socket file of a unix admin endpoint, removed when dropped if it is still this one.
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file as bound.
    identity: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A registered admin socket.
pub(super) enum Listener {
    Tcp(tokio::net::TcpListener),
    /// The file is held only to be removed when the endpoint stops.
    Unix {
        listener: tokio::net::UnixListener,
        _file: SocketFile,
    },
}

/// One accepted admin connection.
pub(super) enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Bound {
    /// Registers the socket with the current runtime.
    pub(super) fn into_tokio(self) -> io::Result<Listener> {
        match self {
            Bound::Tcp(socket) => Ok(Listener::Tcp(tokio::net::TcpListener::from_std(socket)?)),
            Bound::Unix(socket, file) => {
                socket.set_nonblocking(true)?;
                Ok(Listener::Unix {
                    listener: tokio::net::UnixListener::from_std(socket)?,
                    _file: file,
                })
            }
        }
    }
}

impl Listener {
    pub(super) async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix { listener: l, .. } => l.accept().await.map(|(s, _)| Stream::Unix(s)),
        }
    }
}
