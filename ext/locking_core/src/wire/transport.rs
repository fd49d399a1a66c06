//! The byte stream a connection runs over. `Transport` is the seam: the
//! codec and the pipeline executor only read and write bytes through it, so
//! a TLS stream plugs in beside the plain sockets here without touching them.
//!
//! Every method takes `&self`: an interrupt (Ruby's unblock function, on
//! another thread) shuts a transport down while its owner is blocked in a
//! read, which is what wakes that read.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::wire::tls::Tls;

pub trait Transport: Send + Sync {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()>;
    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()>;
    /// Wakes any thread blocked reading or writing; unusable afterwards.
    fn shutdown(&self);
    /// Completes a handshake (TLS) before the first command; nothing for plain sockets.
    fn handshake(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(String, u16),
    Unix(PathBuf),
}

/// `host:port`, or a socket's path, for messages.
pub fn describe(address: &Address) -> String {
    match address {
        Address::Tcp(host, port) if host.contains(':') => format!("[{host}]:{port}"),
        Address::Tcp(host, port) => format!("{host}:{port}"),
        Address::Unix(path) => path.display().to_string(),
    }
}

/// Why a transport could not be opened.
pub enum ConnectError {
    TimedOut,
    Failed(&'static str, io::Error),
}

/// Opens a stream to `address` within `timeout`: TLS over TCP when `tls`
/// is given (its handshake is run by the caller, see `Transport::handshake`).
pub fn connect(
    address: &Address,
    timeout: Duration,
    tls: Option<&Tls>,
) -> Result<Box<dyn Transport>, ConnectError> {
    let failed = |what, error: io::Error| {
        if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ConnectError::TimedOut
        } else {
            ConnectError::Failed(what, error)
        }
    };
    match address {
        Address::Tcp(host, port) => {
            let addresses = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| ConnectError::Failed("cannot resolve host", e))?;
            let mut last_error = None;
            for address in addresses {
                match TcpStream::connect_timeout(&address, timeout) {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return match tls {
                            None => Ok(Box::new(stream)),
                            Some(tls) => tls
                                .wrap(stream, host)
                                .map(|s| Box::new(s) as Box<dyn Transport>)
                                .map_err(|e| ConnectError::Failed("cannot start TLS", e)),
                        };
                    }
                    Err(error) => last_error = Some(error),
                }
            }
            Err(match last_error {
                Some(error) => failed("cannot connect", error),
                None => ConnectError::Failed(
                    "cannot connect",
                    io::Error::other("host resolved to no address"),
                ),
            })
        }
        Address::Unix(_) if tls.is_some() => Err(ConnectError::Failed(
            "cannot start TLS",
            io::Error::other("TLS over a unix socket is not supported"),
        )),
        Address::Unix(path) => match UnixStream::connect(path) {
            Ok(stream) => Ok(Box::new(stream)),
            Err(error) => Err(failed("cannot connect", error)),
        },
    }
}

/// The plain sockets: `&TcpStream` and `&UnixStream` read and write.
macro_rules! plain_transport {
    ($($stream:ty),*) => {$(
        impl Transport for $stream {
            fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
                Read::read(&mut &*self, buf)
            }
            fn write(&self, buf: &[u8]) -> io::Result<usize> {
                Write::write(&mut &*self, buf)
            }
            fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
                <$stream>::set_read_timeout(self, Some(timeout))
            }
            fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
                <$stream>::set_write_timeout(self, Some(timeout))
            }
            fn shutdown(&self) {
                let _ = <$stream>::shutdown(self, Shutdown::Both);
            }
        }
    )*};
}

plain_transport!(TcpStream, UnixStream);
