//! The byte stream a connection runs over. `Transport` is the seam: the
//! codec and the pipeline executor only read and write bytes through it, so
//! a TLS stream (`tls`) plugs in beside the plain sockets here without this
//! file knowing it; `dial` picks which one a server is reached by.
//!
//! Every method takes `&self`: an interrupt (Ruby's unblock function, on
//! another thread) shuts a transport down while its owner is blocked in a
//! read, which is what wakes that read.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

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
