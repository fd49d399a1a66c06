//! TLS with rustls (on ring: no OpenSSL at build time or at run time).
//!
//! `TlsSettings` is what a URL or a settings Hash says (`ca_file`, `cert`,
//! `verify_mode` ...). It is turned into a rustls `ClientConfig` once, when
//! the client is configured, so a missing CA file or a bad key is a
//! configuration error, not a failure at the first lock. `TlsStream` is a
//! `Transport`: the rustls session behind a mutex over a TCP socket, with a
//! second handle on that socket so that another thread can shut it down (an
//! interrupt) while the owner is blocked in a read.

use crate::wire::transport::Transport;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the settings say about TLS for one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of the CAs to trust; the system's roots when neither this nor `ca_path`.
    pub ca_file: Option<PathBuf>,
    /// A directory of PEM CA files.
    pub ca_path: Option<PathBuf>,
    /// Client certificate (PEM chain) and key, for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `verify_mode: OpenSSL::SSL::VERIFY_NONE` turns this off (with a warning).
    pub verify_peer: bool,
    /// Whether the certificate must name the host we connect to.
    pub verify_hostname: bool,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            ca_file: None,
            ca_path: None,
            cert: None,
            key: None,
            verify_peer: true,
            verify_hostname: true,
        }
    }
}

/// A built rustls configuration, shared by every connection to one server.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Builds the rustls configuration: reads the CA, certificate and key
    /// files now. The error says which file and why.
    pub fn new(settings: &TlsSettings) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = if settings.verify_peer {
            let roots = Arc::new(roots(settings)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            let verifier: Arc<dyn ServerCertVerifier> = if settings.verify_hostname {
                webpki
            } else {
                Arc::new(Lenient {
                    chain: Some(webpki),
                    provider: Arc::clone(&provider),
                })
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    chain: None,
                    provider,
                }))
        };
        let config = match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert, "cert")?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("cannot read the TLS key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("the TLS cert and key do not go together: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("a TLS client certificate needs both cert and key".into()),
        };
        Ok(Tls {
            config: Arc::new(config),
        })
    }

    /// Starts a session over `tcp` for `host` (a name or an IP address). The
    /// handshake runs in `TlsStream::handshake`.
    pub fn wrap(&self, tcp: TcpStream, host: &str) -> io::Result<TlsStream> {
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a name TLS can verify"),
            )
        })?;
        let session = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let control = tcp.try_clone()?;
        Ok(TlsStream {
            control,
            inner: Mutex::new(Session { session, tcp }),
        })
    }
}

fn roots(settings: &TlsSettings) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    if settings.ca_file.is_none() && settings.ca_path.is_none() {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = store.add(cert);
        }
        if store.is_empty() {
            return Err(
                "no system CA certificates found (install ca-certificates, or set ssl_params ca_file)"
                    .into(),
            );
        }
        return Ok(store);
    }
    if let Some(file) = &settings.ca_file {
        for cert in certificates(file, "ca_file")? {
            store
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", file.display()))?;
        }
    }
    if let Some(dir) = &settings.ca_path {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read ca_path {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            // Hashed links, .pem and .crt files alike: whatever holds PEM certificates.
            if let Ok(certs) = certificates(&entry.path(), "ca_path") {
                for cert in certs {
                    let _ = store.add(cert);
                }
            }
        }
        if store.is_empty() {
            return Err(format!(
                "no CA certificate found in ca_path {}",
                dir.display()
            ));
        }
    }
    Ok(store)
}

fn certificates(file: &PathBuf, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the TLS {what} {}: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "no PEM certificate in the TLS {what} {}",
            file.display()
        ));
    }
    Ok(certs)
}

/// The trait's two handshake-signature checks, each the rustls function of
/// the same name over the provider's algorithms.
macro_rules! signature_checks {
    ($($check:ident),*) => {$(
        fn $check(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            rustls::crypto::$check(message, cert, dss, algorithms)
        }
    )*};
}

/// The checks a setting turns off: `verify_hostname: false` keeps the
/// chain and drops the name (`chain` set); `verify_mode: VERIFY_NONE`
/// accepts any certificate (`chain` none): encrypted, not authenticated.
/// The handshake's signatures are checked either way, with the provider's
/// algorithms, as the webpki verifier does.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    signature_checks!(verify_tls12_signature, verify_tls13_signature);

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct Session {
    session: ClientConnection,
    tcp: TcpStream,
}

impl Session {
    /// Writes out every TLS record rustls has queued.
    fn flush(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            self.session.write_tls(&mut self.tcp)?;
        }
        Ok(())
    }

    /// Reads one batch of TLS records and processes them; false at EOF.
    fn fill(&mut self) -> io::Result<bool> {
        if self.session.read_tls(&mut self.tcp)? == 0 {
            return Ok(false);
        }
        let processed = self.session.process_new_packets();
        // An alert for the server (a bad certificate ...) goes out even on failure.
        let _ = self.flush();
        processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(true)
    }
}

/// A TLS session over TCP, as a `Transport`.
pub struct TlsStream {
    /// The same socket as the session's: timeouts and cross-thread shutdown.
    control: TcpStream,
    inner: Mutex<Session>,
}

impl TlsStream {
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Transport for TlsStream {
    fn handshake(&self) -> io::Result<()> {
        let mut inner = self.session();
        while inner.session.is_handshaking() {
            inner.flush()?;
            if inner.session.is_handshaking() && inner.session.wants_read() && !inner.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the TLS handshake",
                ));
            }
        }
        inner.flush()
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut inner = self.session();
        // Records from an interrupted write go first: the reply waits on them.
        inner.flush()?;
        loop {
            match inner.session.reader().read(buf) {
                Ok(read) => return Ok(read),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if !inner.fill()? {
                        return Ok(0);
                    }
                }
                // Closed without close_notify: Redis does that; it is a close.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(error) => return Err(error),
            }
        }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self.session();
        inner.flush()?;
        let written = inner.session.writer().write(buf)?;
        match inner.flush() {
            Ok(()) => Ok(written),
            // The plaintext is taken: saying otherwise would have it sent
            // twice. Its records go out on the next write or read.
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(written),
            Err(error) => Err(error),
        }
    }

    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.control.set_read_timeout(Some(timeout))
    }

    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.control.set_write_timeout(Some(timeout))
    }

    fn shutdown(&self) {
        let _ = self.control.shutdown(Shutdown::Both);
    }
}

/// A TLS failure in words a Redis user can act on, if `error` is one.
pub fn describe(error: &io::Error, host: &str) -> Option<String> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    use rustls::AlertDescription as Alert;
    Some(match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "TLS: the server's certificate is not signed by a trusted CA (set ssl_params ca_file to the CA that signed it)"
                .into()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "TLS: the server's certificate is not valid for {host:?} (connect by a name the certificate holds, \
             or set ssl_params verify_hostname: false)"
        ),
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "TLS: the server's certificate has expired".into()
        }
        rustls::Error::InvalidCertificate(other) => {
            format!("TLS: the server's certificate was refused: {other:?}")
        }
        rustls::Error::AlertReceived(Alert::CertificateRequired | Alert::HandshakeFailure) => {
            format!(
                "TLS: the server refused the handshake ({tls}); it may require a client certificate \
                 (ssl_params cert and key)"
            )
        }
        rustls::Error::AlertReceived(
            Alert::BadCertificate | Alert::UnknownCA | Alert::CertificateUnknown | Alert::DecryptError,
        ) => format!(
            "TLS: the server refused our client certificate ({tls}): it is not signed by a CA the server trusts"
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "TLS: the server did not answer in TLS; is this a plaintext port? (use redis://, or ssl: false)".into()
        }
        other => format!("TLS: {other}"),
    })
}
