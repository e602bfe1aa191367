//! TLS configuration: `pki` certificates and keys loaded from PEM into rustls (ring provider),
//! the per-listener `ServerConfig` (default pki, SNI choosing another pki by name, optional
//! client certificates checked against a `ca`), and the relay's `ClientConfig`.
//! Loading happens at start and on SIGHUP, never on the event loops' hot path.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

/// Why a pki or ca could not be loaded. Each names the file and what was wrong with it.
#[derive(Debug)]
pub enum TlsError {
    /// The file could not be read.
    Read { path: PathBuf, source: io::Error },
    /// The certificate file holds no PEM certificate.
    NoCertificate { path: PathBuf },
    /// The key file holds no PEM private key (or one rustls cannot parse).
    NoKey { path: PathBuf },
    /// The key is of a type the ring provider cannot sign with.
    UnsupportedKey { path: PathBuf, reason: String },
    /// The key does not belong to the certificate.
    Mismatch { cert: PathBuf, key: PathBuf },
    /// The key is readable by others than its owner and group (OpenSMTPD refuses this too).
    InsecurePermissions { path: PathBuf, mode: u32 },
    /// A listener names a pki or ca that is not defined.
    Undefined { kind: &'static str, name: String },
    /// rustls refused the assembled configuration (e.g. an empty ca).
    Config { reason: String },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, source } => write!(f, "{}: cannot read: {source}", path.display()),
            TlsError::NoCertificate { path } => write!(f, "{}: no PEM certificate found", path.display()),
            TlsError::NoKey { path } => write!(f, "{}: no PEM private key found", path.display()),
            TlsError::UnsupportedKey { path, reason } => {
                write!(f, "{}: unsupported private key: {reason}", path.display())
            }
            TlsError::Mismatch { cert, key } => {
                write!(f, "{}: private key does not match certificate {}", key.display(), cert.display())
            }
            TlsError::InsecurePermissions { path, mode } => {
                write!(f, "{}: insecure permissions {:04o} (expected at most 0640)", path.display(), mode)
            }
            TlsError::Undefined { kind, name } => write!(f, "{kind} \"{name}\" is not defined"),
            TlsError::Config { reason } => write!(f, "TLS configuration refused: {reason}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Every `pki` of the configuration, loaded and checked.
#[derive(Debug, Default)]
pub struct Pkis {
    keys: BTreeMap<String, Arc<CertifiedKey>>,
}

impl Pkis {
    /// Loads each `(name, cert, key)`. All must load: a partly usable set is refused, so a
    /// reload with one broken certificate keeps the old set in force.
    pub fn load<'a>(pkis: impl IntoIterator<Item = (&'a str, &'a Path, &'a Path)>) -> Result<Pkis, TlsError> {
        let mut keys = BTreeMap::new();
        for (name, cert, key) in pkis {
            keys.insert(name.to_ascii_lowercase(), Arc::new(load_certified_key(cert, key)?));
        }
        Ok(Pkis { keys })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        self.keys.get(&name.to_ascii_lowercase())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

static PRELOADED: std::sync::OnceLock<BTreeMap<PathBuf, Vec<u8>>> = std::sync::OnceLock::new();

/// Reads these certificate, key and CA files now, for a process about to lose the rights to
/// read them (the relay process reads them again for each TLS session). A key file's mode is
/// checked here; files that cannot be read are left to fail later, with their error.
pub fn preload<'a>(paths: impl IntoIterator<Item = &'a Path>) {
    let files = paths
        .into_iter()
        .filter_map(|p| {
            let meta = std::fs::metadata(p).ok()?;
            (meta.permissions().mode() & 0o037 == 0 || load_certs_from(p).is_ok())
                .then(|| std::fs::read(p).ok().map(|b| (p.to_owned(), b)))
                .flatten()
        })
        .collect();
    let _ = PRELOADED.set(files);
}

fn load_certs_from(path: &Path) -> Result<(), ()> {
    let pem = std::fs::read(path).map_err(drop)?;
    CertificateDer::pem_slice_iter(&pem).next().map(drop).ok_or(())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    if let Some(bytes) = PRELOADED.get().and_then(|m| m.get(path)) {
        return Ok(bytes.clone());
    }
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// Loads a key file after checking that neither "other" nor group-write can touch it.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    if PRELOADED.get().is_some_and(|m| m.contains_key(path)) {
        let pem = read(path)?;
        return PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey { path: path.to_owned() });
    }
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o037 != 0 {
        return Err(TlsError::InsecurePermissions { path: path.to_owned(), mode });
    }
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey { path: path.to_owned() })
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    let signer = provider::sign::any_supported_type(&der)
        .map_err(|e| TlsError::UnsupportedKey { path: key.to_owned(), reason: e.to_string() })?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| TlsError::Mismatch { cert: cert.to_owned(), key: key.to_owned() })?;
    Ok(certified)
}

/// Chooses the listener's pki, unless the client's SNI names another pki exactly.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: BTreeMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen =
            hello.server_name().and_then(|sni| self.by_name.get(&sni.to_ascii_lowercase())).unwrap_or(&self.default);
        Some(Arc::clone(chosen))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(provider::default_provider())
}

/// The rustls configuration of one listener: `pki` is its default certificate; `client_ca`
/// makes a client certificate mandatory (`tls-require verify`).
pub fn server_config(pkis: &Pkis, pki: &str, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let default = pkis.get(pki).cloned().ok_or_else(|| TlsError::Undefined { kind: "pki", name: pki.to_owned() })?;
    build_server_config(SniResolver { default, by_name: pkis.keys.clone() }, client_ca)
}

/// A listener's configuration: SNI chooses only among the listener's own `pki`s, the first
/// being the default (OpenSMTPD's rule; a pki of another listener is never served here).
pub fn listener_server_config(
    pkis: &Pkis,
    names: &[String],
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let undefined = |name: &str| TlsError::Undefined { kind: "pki", name: name.to_owned() };
    let first = names.first().ok_or_else(|| undefined(""))?;
    let default = pkis.get(first).cloned().ok_or_else(|| undefined(first))?;
    let mut by_name = BTreeMap::new();
    for name in names {
        let key = pkis.get(name).ok_or_else(|| undefined(name))?;
        by_name.insert(name.to_ascii_lowercase(), Arc::clone(key));
    }
    build_server_config(SniResolver { default, by_name }, client_ca)
}

fn build_server_config(resolver: SniResolver, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config { reason: e.to_string() })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots.add(cert).map_err(|e| TlsError::Config { reason: e.to_string() })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Config { reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // Mail needs no session resumption across restarts; the default in-memory cache is bounded.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// What the Received header and the log say about a finished handshake:
/// version ("TLSv1.3"), suite ("TLS13_AES_256_GCM_SHA384") and key bits.
pub fn describe(conn: &rustls::CommonState) -> Option<(String, String, u16)> {
    let suite = conn.negotiated_cipher_suite()?;
    let version = match conn.protocol_version()? {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "TLS",
    };
    let name = suite.suite().as_str().unwrap_or("UNKNOWN").to_owned();
    let bits = if name.contains("AES_128") { 128 } else { 256 };
    Some((version.to_owned(), name, bits))
}

/// Accepts any server certificate: `relay … tls no-verify`.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The system's CA bundle (Debian's, then OpenBSD's), for verified relay sessions.
const CA_BUNDLES: [&str; 2] = ["/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/cert.pem"];

/// How a relay session checks the server's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verify {
    /// `tls no-verify`: any certificate.
    Nothing,
    /// Against the system's CA bundle.
    System,
    /// Against the certificates of a `ca` (`relay … ca NAME`).
    Ca(PathBuf),
}

/// The relay's client configuration, TLS 1.2 and 1.3: the server's certificate checked as
/// `verify` says; `identity` (a pki's cert and key, `relay … pki NAME`) presented when the
/// server asks for a client certificate.
pub fn client_config(verify: &Verify, identity: Option<(&Path, &Path)>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config { reason: e.to_string() })?;
    let mut roots = rustls::RootCertStore::empty();
    let builder = match verify {
        Verify::Nothing => builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider()))),
        Verify::System => {
            for path in CA_BUNDLES {
                if let Ok(certs) = load_certs(Path::new(path)) {
                    roots.add_parsable_certificates(certs);
                    break;
                }
            }
            builder.with_root_certificates(roots)
        }
        Verify::Ca(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::Config { reason: e.to_string() })?;
            }
            builder.with_root_certificates(roots)
        }
    };
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certified = Arc::new(load_certified_key(cert, key)?);
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)))
        }
    };
    Ok(Arc::new(config))
}
