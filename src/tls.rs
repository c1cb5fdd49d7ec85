//! TLS on each of the proxy's three sides, with rustls: its listeners (a certificate and key,
//! and optionally clients' certificates checked against a CA), its connections to Redis nodes,
//! and its connections to sentinels (a CA, the name to verify, optionally a certificate of its
//! own). Each side's files are read into a rustls configuration held in an `ArcSwap`: a
//! handshake takes the configuration current when it starts, so replacing one never touches an
//! open connection. [`Material::refresh`] re-reads the files and swaps only when they changed
//! and load; a file that does not load is reported and the configuration in use stays.
//!
//! On the data path, every TLS connection (a client of a TLS port, a connection to a TLS node)
//! is read and written by its session itself, on its own socket ([`Link`]): no second hop. The
//! control plane's own client (`sentinel/client.rs`) uses the same `Link`, through its
//! `AsyncRead` and `AsyncWrite`.

mod der;
mod expiry;
mod identity;
mod link;
pub(crate) mod refresh;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

pub use identity::{CertUser, names as certificate_names};
pub use link::Link;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// What a listener presents, and whom it lets in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must show a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// The CA's list of revoked client certificates (a CRL, PEM).
    pub client_crl: Option<PathBuf>,
}

/// How the proxy reaches one kind of peer (Redis nodes, or sentinels) over TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFiles {
    /// The CA that signed the peers' certificates.
    pub ca: PathBuf,
    /// The proxy's own certificate and key, for peers that ask for one (`tls-auth-clients`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name to verify in every peer's certificate, instead of the address or host name the
    /// proxy connects to.
    pub server_name: Option<String>,
}

/// A set of TLS files and the rustls configuration they make.
pub trait Files: fmt::Debug + PartialEq {
    type Config;
    fn paths(&self) -> Vec<&Path>;
    /// Build from the files' contents, in the order of [`Files::paths`].
    fn build(&self, contents: &[Vec<u8>]) -> Result<Self::Config, TlsError>;
    /// When the certificate the proxy presents expires (Unix seconds), if it presents one.
    fn not_after(&self, _contents: &[Vec<u8>]) -> Option<i64> {
        None
    }
}

/// Files, their configuration, and what the files held when last read (to tell a change).
pub struct Material<F: Files> {
    pub files: F,
    current: ArcSwap<F::Config>,
    /// The files' contents at the last read, or why they could not be read.
    seen: Mutex<Result<Vec<Vec<u8>>, String>>,
    /// `Files::not_after` of the files in use; 0: none.
    not_after: std::sync::atomic::AtomicI64,
}

pub type TlsServer = Material<ServerFiles>;
pub type TlsClient = Material<ClientFiles>;

impl<F: Files> Material<F> {
    /// Load the files; an error names the file and what is wrong with it.
    pub fn load(files: F) -> Result<Material<F>, TlsError> {
        let contents = read_all(&files.paths())?;
        let config = files.build(&contents)?;
        let not_after = files.not_after(&contents).unwrap_or(0);
        Ok(Material {
            files,
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(Ok(contents)),
            not_after: not_after.into(),
        })
    }

    /// Re-read the files: `Ok(true)` if they changed and the new configuration is in use,
    /// `Ok(false)` if they are as at the last call, `Err` (the old configuration stays) if they
    /// changed and do not load. So each change is reported once, however often this is called.
    pub fn refresh(&self) -> Result<bool, TlsError> {
        let now = read_all(&self.files.paths());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let same = match (&*seen, &now) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => *a == b.to_string(),
            _ => false,
        };
        if same {
            return Ok(false);
        }
        *seen = now.as_ref().map(Clone::clone).map_err(ToString::to_string);
        let now = now?;
        let config = self.files.build(&now)?;
        self.current.store(Arc::new(config));
        self.not_after.store(
            self.files.not_after(&now).unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(true)
    }

    /// When the certificate in use expires (Unix seconds), if the files present one.
    pub fn not_after(&self) -> Option<i64> {
        Some(self.not_after.load(std::sync::atomic::Ordering::Relaxed)).filter(|&t| t != 0)
    }

    pub fn config(&self) -> Arc<F::Config> {
        self.current.load_full()
    }
}

impl<F: Files> fmt::Debug for Material<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.files.fmt(f) // paths only: never a key
    }
}

impl<F: Files> PartialEq for Material<F> {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files
    }
}

impl<F: Files> Eq for Material<F> {}

fn read_all(paths: &[&Path]) -> Result<Vec<Vec<u8>>, TlsError> {
    paths
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| file_error(p, e)))
        .collect()
}

fn file_error(path: &Path, e: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| file_error(path, format!("private key: {e}")))
}

fn crls(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, TlsError> {
    let list = rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("revocation list: {e}")))?;
    if list.is_empty() {
        return Err(file_error(
            path,
            "no revocation list (X509 CRL) in the file",
        ));
    }
    Ok(list)
}

fn roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path, pem)? {
        roots.add(cert).map_err(|e| file_error(path, e))?;
    }
    Ok(roots)
}

impl Files for ServerFiles {
    type Config = ServerConfig;

    fn paths(&self) -> Vec<&Path> {
        let mut p = vec![self.cert.as_path(), self.key.as_path()];
        p.extend(self.client_ca.as_deref());
        p.extend(self.client_crl.as_deref());
        p
    }

    fn build(&self, c: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
        let chain = certs(&self.cert, &c[0])?;
        let key = key(&self.key, &c[1])?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca {
            Some(path) => {
                let mut verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(path, &c[2])?),
                    provider(),
                );
                if let Some(crl_path) = &self.client_crl {
                    // The client's own certificate is checked against the CA's list (an
                    // intermediate's status is not asked for: the list is the issuing CA's).
                    verifier = verifier
                        .with_crls(crls(crl_path, &c[3])?)
                        .only_check_end_entity_revocation();
                }
                let verifier = verifier.build().map_err(|e| file_error(path, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        // rustls checks that the key belongs to the certificate: a half-rotated pair is refused.
        builder
            .with_single_cert(chain, key)
            .map_err(|e| file_error(&self.key, e))
    }

    fn not_after(&self, c: &[Vec<u8>]) -> Option<i64> {
        let chain = certs(&self.cert, &c[0]).ok()?;
        expiry::not_after(chain.first()?)
    }
}

impl Files for ClientFiles {
    type Config = ClientConfig;

    fn paths(&self) -> Vec<&Path> {
        let mut p = vec![self.ca.as_path()];
        p.extend(self.cert.as_deref());
        p.extend(self.key.as_deref());
        p
    }

    fn build(&self, c: &[Vec<u8>]) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(&self.ca, &c[0])?);
        match (&self.cert, &self.key) {
            (Some(cert), Some(key_path)) => {
                let chain = certs(cert, &c[1])?;
                let key = key(key_path, &c[2])?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| file_error(key_path, e))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

impl TlsClient {
    /// The name a peer's certificate must carry: the override, else the host the proxy
    /// connects to (an address, or the name a sentinel or the operator gave).
    fn server_name(&self, host: &str) -> io::Result<ServerName<'static>> {
        let name = self.files.server_name.as_deref().unwrap_or(host);
        match name.parse::<IpAddr>() {
            Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
            Err(_) => ServerName::try_from(name.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)),
        }
    }

    /// The TLS handshake on a connected socket to `host`. An address that a sentinel gave as
    /// a host name (and the proxy resolved) is verified by that name.
    pub async fn handshake(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let announced = match host.parse::<IpAddr>() {
            Ok(_) => tcp.peer_addr().ok().and_then(announced_name),
            Err(_) => None,
        };
        let name = self.server_name(announced.as_deref().unwrap_or(host))?;
        tokio_rustls::TlsConnector::from(self.config())
            .connect(name, tcp)
            .await
    }
}

/// Host names sentinels gave, by the address the proxy resolved each to (`client::resolve`):
/// a node's certificate is then verified for the name it is known by, as Sentinel announces it
/// (`announce-hostnames`), not for the address. Kept small: cleared when it grows past a bound
/// (names are learned again at the next resolve).
static ANNOUNCED: std::sync::LazyLock<Mutex<HashMap<SocketAddr, Arc<str>>>> =
    std::sync::LazyLock::new(Default::default);

const ANNOUNCED_MAX: usize = 4096;

/// `addr` was resolved from the host name `host`.
pub fn remember_name(addr: SocketAddr, host: &str) {
    let mut names = ANNOUNCED.lock().unwrap_or_else(|p| p.into_inner());
    if names.get(&addr).is_some_and(|n| &**n == host) {
        return;
    }
    if names.len() >= ANNOUNCED_MAX {
        names.clear();
    }
    names.insert(addr, Arc::from(host));
}

fn announced_name(addr: SocketAddr) -> Option<Arc<str>> {
    let names = ANNOUNCED.lock().unwrap_or_else(|p| p.into_inner());
    names.get(&addr).cloned()
}

/// A connection to a Redis node at `addr` for the data path: the socket, with `tls` TLS on it
/// as its session reads and writes it ([`Link`]), the handshake done. The socket gets the
/// options of every connection of the data path (`sockopt.rs`).
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    keepalive: std::time::Duration,
) -> io::Result<Link> {
    let tcp = TcpStream::connect(addr).await?;
    crate::sockopt::tune(&tcp, keepalive);
    open(tcp, &addr.ip().to_string(), tls).await
}

/// Over the connected socket `tcp` to `host` (a name or an address): the socket itself, or with
/// `tls` TLS on it, the handshake done and the peer verified for `host` ([`TlsClient::handshake`]).
/// The data path's connections to nodes ([`connect`]) and the control plane's to sentinels and
/// nodes (`sentinel/client.rs`) alike.
pub async fn open(tcp: TcpStream, host: &str, tls: Option<&TlsClient>) -> io::Result<Link> {
    let Some(tls) = tls else {
        return Ok(Link::Plain(tcp));
    };
    let (tcp, conn) = tls.handshake(host, tcp).await?.into_inner();
    Ok(Link::tls(tcp, conn))
}

/// Why a handshake that failed with `e` refused the client's certificate (expired, revoked, not
/// signed by the client CA, none shown), if that is why it failed.
pub fn certificate_refused(e: &io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::InvalidCertificate(why) => Some(format!("{why:?}")),
        rustls::Error::NoCertificatesPresented => Some("no certificate".to_string()),
        _ => None,
    }
}

/// A client of a TLS listener: the handshake, then the client's connection as its session
/// reads and writes it (`link.rs`). The socket gets the options a plain client's gets
/// (`sockopt.rs`), `keepalive` included.
pub async fn accept(
    tls: &TlsServer,
    tcp: TcpStream,
    keepalive: std::time::Duration,
) -> io::Result<Link> {
    crate::sockopt::tune(&tcp, keepalive);
    let (tcp, conn) = tokio_rustls::TlsAcceptor::from(tls.config())
        .accept(tcp)
        .await?
        .into_inner();
    Ok(Link::tls(tcp, conn))
}

#[cfg(test)]
mod tests;
