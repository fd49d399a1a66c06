//! Opening the byte stream to a server: a plain socket, or TLS over TCP.
//! It sits above both `transport` (the seam and the plain sockets) and
//! `tls` (a stream that implements the seam), so neither knows the other.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::wire::tls::Tls;
use crate::wire::transport::{Address, Transport};

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
