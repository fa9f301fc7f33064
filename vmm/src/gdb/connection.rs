//! Where gdb connects: a TCP port on 127.0.0.1 (`--gdb 1234`, gdb's `target remote
//! :1234`) or a unix socket (`--gdb unix:/tmp/vm.sock`, gdb's `target remote
//! /tmp/vm.sock`), and the byte stream gdbstub speaks over.

use gdbstub::conn::{Connection, ConnectionExt};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

/// A `--gdb` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbAddr {
    /// TCP on 127.0.0.1 (0 = any free port).
    Tcp(u16),
    /// A unix socket path.
    Unix(PathBuf),
}

/// A `--gdb` value that is neither a port nor `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--gdb {0:?}: give a TCP port (e.g. --gdb 1234) or a unix socket (--gdb unix:/tmp/vm.sock)"
)]
pub struct GdbAddrError(pub String);

impl std::str::FromStr for GdbAddr {
    type Err = GdbAddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(GdbAddrError(s.into()));
            }
            return Ok(GdbAddr::Unix(path.into()));
        }
        let port = s.strip_prefix("tcp::").or(s.strip_prefix(':')).unwrap_or(s);
        port.parse()
            .map(GdbAddr::Tcp)
            .map_err(|_| GdbAddrError(s.into()))
    }
}

/// Listening on a [`GdbAddr`] failed.
#[derive(Debug, thiserror::Error)]
pub enum GdbListenError {
    /// bind(2) failed.
    #[error("Cannot listen for gdb on {addr}: {source}; pick another --gdb port or path")]
    Bind {
        /// Where.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// accept(2) failed.
    #[error("Waiting for gdb on {addr} failed: {source}")]
    Accept {
        /// Where.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet connected, gdb socket.
#[derive(Debug)]
pub enum GdbListener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix socket (removed again on drop).
    Unix(UnixListener, PathBuf),
}

impl GdbListener {
    /// Binds `addr` (a stale unix socket file at the path is replaced).
    pub fn bind(addr: &GdbAddr) -> Result<GdbListener, GdbListenError> {
        let err = |source| GdbListenError::Bind {
            addr: describe(addr),
            source,
        };
        match addr {
            GdbAddr::Tcp(port) => TcpListener::bind(("127.0.0.1", *port))
                .map(GdbListener::Tcp)
                .map_err(err),
            GdbAddr::Unix(path) => {
                if std::fs::symlink_metadata(path)
                    .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                    .unwrap_or(false)
                {
                    let _ = std::fs::remove_file(path);
                }
                UnixListener::bind(path)
                    .map(|l| GdbListener::Unix(l, path.clone()))
                    .map_err(err)
            }
        }
    }

    /// What gdb's `target remote` takes: `127.0.0.1:PORT` or the socket path.
    pub fn local_addr(&self) -> String {
        match self {
            GdbListener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "127.0.0.1:?".into()),
            GdbListener::Unix(_, p) => p.display().to_string(),
        }
    }

    /// Waits for gdb to connect.
    pub fn accept(&self) -> Result<GdbConnection, GdbListenError> {
        let err = |source| GdbListenError::Accept {
            addr: self.local_addr(),
            source,
        };
        match self {
            GdbListener::Tcp(l) => l.accept().map(|(s, _)| GdbConnection::Tcp(s)).map_err(err),
            GdbListener::Unix(l, _) => l.accept().map(|(s, _)| GdbConnection::Unix(s)).map_err(err),
        }
    }
}

impl Drop for GdbListener {
    fn drop(&mut self) {
        if let GdbListener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn describe(addr: &GdbAddr) -> String {
    match addr {
        GdbAddr::Tcp(p) => format!("127.0.0.1:{p}"),
        GdbAddr::Unix(p) => p.display().to_string(),
    }
}

/// gdb's connection.
#[derive(Debug)]
pub enum GdbConnection {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
}

impl GdbConnection {
    /// Whether gdb sent something (or hung up) within `timeout`.
    pub fn readable(&self, timeout: Duration) -> std::io::Result<bool> {
        let fd = match self {
            GdbConnection::Tcp(s) => s.as_fd().as_raw_fd(),
            GdbConnection::Unix(s) => s.as_fd().as_raw_fd(),
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one valid pollfd on the stack for the duration of the call, and
        // `fd` is the open socket `self` owns.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
            0 => Ok(false),
            _ => Ok(true),
        }
    }

    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            GdbConnection::Tcp(s) => s,
            GdbConnection::Unix(s) => s,
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Connection for GdbConnection {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.stream().write_all(&[byte])
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.stream().write_all(buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.stream().flush()
    }

    fn on_session_start(&mut self) -> Result<(), Self::Error> {
        match self {
            GdbConnection::Tcp(s) => s.set_nodelay(true),
            GdbConnection::Unix(_) => Ok(()),
        }
    }
}

impl ConnectionExt for GdbConnection {
    fn read(&mut self) -> Result<u8, Self::Error> {
        let mut b = [0u8];
        self.stream().read_exact(&mut b)?;
        Ok(b[0])
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        if !self.readable(Duration::ZERO)? {
            return Ok(None);
        }
        let mut b = [0u8];
        let n = match self {
            GdbConnection::Tcp(s) => TcpStream::peek(s, &mut b)?,
            GdbConnection::Unix(s) => {
                // SAFETY: `b` is a valid 1-byte buffer; MSG_PEEK leaves the byte queued.
                let n =
                    unsafe { libc::recv(s.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK) };
                usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Some(b[0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_port_or_unix_path() {
        assert_eq!("1234".parse(), Ok(GdbAddr::Tcp(1234)));
        assert_eq!(":1234".parse(), Ok(GdbAddr::Tcp(1234)));
        assert_eq!("tcp::1234".parse(), Ok(GdbAddr::Tcp(1234)));
        assert_eq!(
            "unix:/tmp/x.sock".parse(),
            Ok(GdbAddr::Unix("/tmp/x.sock".into()))
        );
        let e = "localhost:99999"
            .parse::<GdbAddr>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--gdb 1234") && e.contains("unix:"), "{e}");
        assert!("unix:".parse::<GdbAddr>().is_err());
    }

    #[test]
    fn a_port_in_use_is_refused_with_the_fix() {
        let a = GdbListener::bind(&GdbAddr::Tcp(0)).unwrap();
        let port: u16 = a.local_addr().rsplit(':').next().unwrap().parse().unwrap();
        let e = GdbListener::bind(&GdbAddr::Tcp(port))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pick another --gdb port"), "{e}");
    }
}
