//! TLS on both sides of warden: the CA (loaded, or created with a 0600 key), leaf certificates
//! minted per CONNECT host (ECDSA P-256, off the async workers, single-flight, bounded cache),
//! the interception decision (`tls.intercept`, `tls.passthrough`), and the trust list used to
//! verify upstreams (system roots + `tls.upstream_ca_file`). Called by the front door when a
//! CONNECT is accepted, and by `upstream_peer` for the peer's trust store.

use crate::policy::{any_matches, HostPattern};
use crate::target::{Authority, Host, TunnelIdentity};
use async_trait::async_trait;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{NameType, SslAcceptor, SslMethod};
use openssl::x509::X509;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use serde::Deserialize;
use std::any::Any;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// Leaves are valid this long; a cached leaf is re-minted once less than a day remains.
const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are back-dated so clients with a skewed clock still accept them.
const BACKDATE: Duration = Duration::from_secs(24 * 3600);

/// The `tls` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate (PEM), created with the key when both are absent.
    #[serde(default = "default_ca_cert")]
    pub ca_cert: PathBuf,
    /// CA private key (PEM, mode 0600 when created).
    #[serde(default = "default_ca_key")]
    pub ca_key: PathBuf,
    /// When a CONNECT is intercepted.
    #[serde(default)]
    pub intercept: InterceptMode,
    /// Hosts that are never intercepted (certificate-pinned clients).
    #[serde(default)]
    pub passthrough: Vec<HostPattern>,
    /// Extra roots trusted, in addition to the system's, when verifying upstreams.
    #[serde(default)]
    pub upstream_ca_file: Option<PathBuf>,
    /// Offer HTTP/2 (ALPN `h2`) inside intercepted tunnels and to origins.
    #[serde(default = "yes")]
    pub http2: bool,
    /// Hosts kept on HTTP/1.1 both ways even with `http2` on.
    #[serde(default)]
    pub http1_only: Vec<HostPattern>,
}

fn yes() -> bool {
    true
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_cert: default_ca_cert(),
            ca_key: default_ca_key(),
            intercept: InterceptMode::default(),
            passthrough: Vec::new(),
            upstream_ca_file: None,
            http2: true,
            http1_only: Vec::new(),
        }
    }
}

fn default_ca_cert() -> PathBuf {
    PathBuf::from("ca.crt")
}

fn default_ca_key() -> PathBuf {
    PathBuf::from("ca.key")
}

/// `tls.intercept`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterceptMode {
    /// Intercept only when some rule needs to see inside the tunnel.
    #[default]
    Auto,
    /// Intercept every CONNECT (except `passthrough` hosts).
    All,
    /// Never intercept; every CONNECT is a blind tunnel.
    None,
}

/// Errors loading the CA, minting leaves or reading trust files.
#[derive(Debug, Error)]
pub enum TlsError {
    /// One of the CA pair exists and the other does not.
    #[error("{present} exists but {missing} does not; provide both files or neither (warden creates the pair when both are absent)")]
    HalfPair {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
        /// Config key of the missing file.
        key: &'static str,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Config key naming it.
        key: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{path}: {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// Config key naming it.
        key: &'static str,
        /// What is wrong with it.
        what: String,
    },
    /// Minting a leaf failed.
    #[error("minting a certificate failed: {0}")]
    Mint(String),
}

impl TlsError {
    /// The config key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::HalfPair { key, .. }
            | TlsError::Io { key, .. }
            | TlsError::BadPem { key, .. } => key,
            TlsError::Mint(_) => "tls",
        }
    }
}

/// A minted leaf: certificate and key in the form the TLS acceptor takes.
pub struct Leaf {
    cert: X509,
    key: PKey<Private>,
    not_after: SystemTime,
}

impl Leaf {
    fn fresh(&self, now: SystemTime) -> bool {
        self.not_after > now + LEAF_RENEW_BEFORE
    }
}

/// warden's CA: signs leaves for intercepted hosts ([`Leaves`] caches them).
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_path: PathBuf,
    cert_pem: String,
    /// SHA-256 of the certificate: which CA a cached leaf was signed by.
    fingerprint: [u8; 32],
}

/// Leaves minted so far, by CA and host name: runtime state, kept across reloads (a reload
/// with the same CA mints nothing again; leaves of a replaced CA are never served).
pub struct Leaves {
    cache: quick_cache::sync::Cache<([u8; 32], String), Arc<Leaf>>,
    mints: AtomicU64,
}

impl std::fmt::Debug for Leaves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaves")
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Leaves {
    /// A cache of at most `entries` leaves (`limits.cert_cache_entries`).
    pub fn new(entries: usize) -> Self {
        Leaves {
            cache: quick_cache::sync::Cache::new(entries.max(1)),
            mints: AtomicU64::new(0),
        }
    }

    /// Leaves currently cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Leaves minted since start.
    pub fn mints(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    /// The leaf `ca` signs for `host`, from the cache or minted on the blocking pool
    /// (`on_mint` is told how long a mint took). Concurrent callers for the same host wait
    /// for one mint.
    pub async fn leaf_for(
        &self,
        ca: &Arc<CertAuthority>,
        host: &Host,
        on_mint: impl FnOnce(Duration) + Send + 'static,
    ) -> Result<Arc<Leaf>, TlsError> {
        let key = (ca.fingerprint, host.as_str_unbracketed());
        let now = SystemTime::now();
        if let Some(leaf) = self.cache.get(&key) {
            if leaf.fresh(now) {
                return Ok(leaf);
            }
            self.cache.remove(&key);
        }
        let signer = Arc::clone(ca);
        let host = host.clone();
        let mints = &self.mints;
        self.cache
            .get_or_insert_async(&key, async move {
                mints.fetch_add(1, Ordering::Relaxed);
                tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    let leaf = signer.mint_leaf(&host);
                    on_mint(started.elapsed());
                    leaf
                })
                .await
                .map_err(|e| TlsError::Mint(e.to_string()))?
                .map(Arc::new)
            })
            .await
    }
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertAuthority")
            .field("cert_path", &self.cert_path)
            .finish()
    }
}

impl CertAuthority {
    /// Loads the CA pair, or creates it when both files are absent: written to disk when
    /// `create` is set, otherwise kept in memory only (validation).
    /// A half-present pair, unreadable files, bad PEM, or a key that does not belong to the
    /// certificate is an error naming the file.
    pub fn load_or_create(
        cert_path: &Path,
        key_path: &Path,
        create: bool,
    ) -> Result<CertAuthority, TlsError> {
        let (cert_pem, key_pem) = match (cert_path.exists(), key_path.exists()) {
            (true, true) => (
                read(cert_path, "tls.ca_cert")?,
                read(key_path, "tls.ca_key")?,
            ),
            (true, false) => {
                return Err(TlsError::HalfPair {
                    present: cert_path.into(),
                    missing: key_path.into(),
                    key: "tls.ca_key",
                })
            }
            (false, true) => {
                return Err(TlsError::HalfPair {
                    present: key_path.into(),
                    missing: cert_path.into(),
                    key: "tls.ca_cert",
                })
            }
            // Validation only (`warden check`): a CA in memory, never written.
            (false, false) => create_ca(cert_path, key_path, create)?,
        };
        let bad_key = |what: String| TlsError::BadPem {
            path: key_path.into(),
            key: "tls.ca_key",
            what,
        };
        let bad_cert = |what: String| TlsError::BadPem {
            path: cert_path.into(),
            key: "tls.ca_cert",
            what,
        };
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| bad_key(format!("not a PEM private key ({e})")))?;
        let x509 = X509::from_pem(cert_pem.as_bytes())
            .map_err(|_| bad_cert("not a PEM certificate".into()))?;
        let ossl_key = PKey::private_key_from_pem(key_pem.as_bytes())
            .map_err(|_| bad_key("not a PEM private key".into()))?;
        let matches = x509
            .public_key()
            .map(|pk| pk.public_eq(&ossl_key))
            .unwrap_or(false);
        if !matches {
            return Err(bad_key(format!(
                "this key does not belong to the CA certificate {}",
                cert_path.display()
            )));
        }
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| bad_cert(format!("cannot use as a CA ({e})")))?;
        Ok(CertAuthority {
            issuer,
            cert_path: cert_path.into(),
            cert_pem,
            fingerprint: openssl::sha::sha256(
                &x509
                    .to_der()
                    .map_err(|_| bad_cert("not a DER-encodable certificate".into()))?,
            ),
        })
    }

    /// Path of the CA certificate clients must trust.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Mints a leaf for `host` signed by this CA. CPU-bound: call it off the async workers.
    pub fn mint_leaf(&self, host: &Host) -> Result<Leaf, TlsError> {
        let mint = |e: rcgen::Error| TlsError::Mint(e.to_string());
        let name = host.as_str_unbracketed();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(mint)?;
        let mut params = CertificateParams::new(vec![name.clone()]).map_err(mint)?;
        let mut dn = DistinguishedName::new();
        // CN is limited to 64 characters; the SAN carries the full name.
        dn.push(
            DnType::CommonName,
            name.chars().take(64).collect::<String>(),
        );
        params.distinguished_name = dn;
        let now = SystemTime::now();
        let not_after = now + LEAF_VALIDITY;
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(mint)?;
        let leaf = Leaf {
            cert: X509::from_der(cert.der()).map_err(|e| TlsError::Mint(e.to_string()))?,
            key: PKey::private_key_from_der(key.serialized_der())
                .map_err(|e| TlsError::Mint(e.to_string()))?,
            not_after,
        };
        Ok(leaf)
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    // Positive, non-zero: clear the sign bit and make sure the first byte is set.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path, key: &'static str) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.into(),
        key,
        source,
    })
}

/// Creates a new ECDSA P-256 CA; with `write`, stores the key (mode 0600) and then the
/// certificate.
fn create_ca(cert_path: &Path, key_path: &Path, write: bool) -> Result<(String, String), TlsError> {
    let mint = |e: rcgen::Error| TlsError::Mint(e.to_string());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(mint)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "warden egress proxy CA");
    dn.push(DnType::OrganizationName, "warden");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_VALIDITY).into();
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key).map_err(mint)?;
    let key_pem = key.serialize_pem();
    let cert_pem = cert.pem();
    if write {
        write_file(key_path, key_pem.as_bytes(), 0o600, "tls.ca_key")?;
        write_file(cert_path, cert_pem.as_bytes(), 0o644, "tls.ca_cert")?;
    }
    Ok((cert_pem, key_pem))
}

fn write_file(path: &Path, data: &[u8], mode: u32, key: &'static str) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.into(),
        key,
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

/// The compiled `tls` section.
#[derive(Debug)]
pub struct TlsPolicy {
    /// `tls.intercept`.
    pub intercept: InterceptMode,
    passthrough: Vec<HostPattern>,
    /// The CA and its leaf cache.
    pub ca: Arc<CertAuthority>,
    /// Roots for upstream verification when `upstream_ca_file` is set (system roots + extra);
    /// `None` means the system roots alone.
    pub upstream_roots: Option<Arc<Box<[X509]>>>,
    /// `tls.http2`.
    http2: bool,
    http1_only: Vec<HostPattern>,
}

impl TlsConfig {
    /// Compiles the section: reads `upstream_ca_file` (plus the system roots) once, here.
    pub fn compile(
        &self,
        ca: Arc<CertAuthority>,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<TlsPolicy, TlsError> {
        Ok(TlsPolicy {
            intercept: self.intercept,
            passthrough: self.passthrough.clone(),
            ca,
            upstream_roots: self.upstream_roots(resolve)?,
            http2: self.http2,
            http1_only: self.http1_only.clone(),
        })
    }

    /// The upstream trust list: the system roots plus `upstream_ca_file`, or `None` without
    /// one. Also called on its own when the CA failed, so both errors show in one run.
    pub fn upstream_roots(
        &self,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<Option<Arc<Box<[X509]>>>, TlsError> {
        let Some(p) = &self.upstream_ca_file else {
            return Ok(None);
        };
        let path = resolve(p);
        let pem = std::fs::read(&path).map_err(|source| TlsError::Io {
            path: path.clone(),
            key: "tls.upstream_ca_file",
            source,
        })?;
        let extra = X509::stack_from_pem(&pem)
            .ok()
            .filter(|certs| !certs.is_empty())
            .ok_or_else(|| TlsError::BadPem {
                path: path.clone(),
                key: "tls.upstream_ca_file",
                what: "contains no PEM certificate".into(),
            })?;
        let mut roots = system_roots();
        roots.extend(extra);
        Ok(Some(Arc::new(roots.into_boxed_slice())))
    }
}

impl TlsPolicy {
    /// Whether a CONNECT to `dest` is intercepted (TLS terminated with a minted leaf) rather
    /// than tunnelled blind. `needs_inspection`: some rule must see the requests (L7 rules now,
    /// credentials and headers later), which is what `auto` intercepts. `passthrough` wins.
    pub fn intercepts(&self, dest: &Authority, needs_inspection: bool) -> bool {
        if any_matches(&self.passthrough, dest) {
            return false;
        }
        match self.intercept {
            InterceptMode::All => true,
            InterceptMode::None => false,
            InterceptMode::Auto => needs_inspection,
        }
    }

    /// Whether HTTP/2 may be spoken for `dest`, to the client inside its tunnel and to the
    /// origin: `tls.http2` is on and `tls.http1_only` does not name it.
    pub fn h2_for(&self, dest: &Authority) -> bool {
        self.http2 && !any_matches(&self.http1_only, dest)
    }
}

/// The system's root bundle (PEM, newline-terminated) as OpenSSL would find it; empty when
/// there is none. Used for upstream trust and for the client bundle `warden ca` writes.
pub fn system_roots_pem() -> String {
    let probe = openssl_probe::probe();
    let mut pem = probe
        .cert_file
        .and_then(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default();
    if !pem.is_empty() && !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem
}

/// The system's root certificates.
fn system_roots() -> Vec<X509> {
    X509::stack_from_pem(system_roots_pem().as_bytes()).unwrap_or_default()
}

/// ALPN protocols offered to clients that may speak HTTP/2, in preference order (wire form).
const ALPN_H2_H1: &[u8] = b"\x02h2\x08http/1.1";
/// ALPN protocols offered to clients kept on HTTP/1.1.
const ALPN_H1: &[u8] = b"\x08http/1.1";

/// The acceptor used for intercepted tunnels: Mozilla intermediate settings, the certificate
/// supplied per connection by [`LeafCallbacks`]. ALPN picks `h2` when `h2` is true and the
/// client offers it, else `http/1.1`; a client offering neither gets no ALPN answer and speaks
/// HTTP/1.1.
pub fn interception_acceptor(h2: bool) -> Result<SslAcceptor, openssl::error::ErrorStack> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    // An idle tunnel gives its TLS record buffers back (about 34 KiB each); they are taken
    // again when the next record moves.
    b.set_mode(openssl::ssl::SslMode::RELEASE_BUFFERS);
    let ours = if h2 { ALPN_H2_H1 } else { ALPN_H1 };
    b.set_alpn_select_callback(move |_, offered| {
        openssl::ssl::select_next_proto(ours, offered).ok_or(openssl::ssl::AlpnError::NOACK)
    });
    Ok(b.build())
}

/// Per-connection handshake callbacks: install the leaf minted for the CONNECT host, then
/// attach the tunnel identity to the connection (read back by `request_filter`).
pub struct LeafCallbacks {
    /// The leaf for the CONNECT host.
    pub leaf: Arc<Leaf>,
    /// Who and where the tunnel is for.
    pub identity: TunnelIdentity,
}

#[async_trait]
impl TlsAccept for LeafCallbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        use pingora_core::tls::ext::{ssl_use_certificate, ssl_use_private_key};
        if let Err(e) = ssl_use_certificate(ssl, &self.leaf.cert)
            .and_then(|_| ssl_use_private_key(ssl, &self.leaf.key))
        {
            // The handshake then fails for lack of a certificate and is logged by the caller.
            log::warn!("installing the leaf certificate failed: {e}");
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let mut identity = self.identity.clone();
        identity.sni = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        Some(Arc::new(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_in(dir: &Path) -> CertAuthority {
        CertAuthority::load_or_create(&dir.join("ca.crt"), &dir.join("ca.key"), true).unwrap()
    }

    #[test]
    fn creates_the_pair_with_a_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_in(dir.path());
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        // Loading again reads the same pair.
        let again = ca_in(dir.path());
        assert_eq!(again.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn half_pair_and_bad_pem_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let load = || {
            CertAuthority::load_or_create(
                &dir.path().join("ca.crt"),
                &dir.path().join("ca.key"),
                true,
            )
            .unwrap_err()
        };
        std::fs::write(dir.path().join("ca.crt"), "x").unwrap();
        let err = load();
        assert_eq!(err.key(), "tls.ca_key");
        assert!(err.to_string().contains("ca.key"), "{err}");

        std::fs::write(dir.path().join("ca.key"), "not pem").unwrap();
        let err = load();
        assert_eq!(err.key(), "tls.ca_key");
        assert!(err.to_string().contains("not a PEM private key"), "{err}");
    }

    #[test]
    fn a_key_from_another_ca_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        ca_in(a.path());
        ca_in(b.path());
        let err = CertAuthority::load_or_create(
            &a.path().join("ca.crt"),
            &b.path().join("ca.key"),
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn check_mode_does_not_create_files() {
        let dir = tempfile::tempdir().unwrap();
        CertAuthority::load_or_create(
            &dir.path().join("ca.crt"),
            &dir.path().join("ca.key"),
            false,
        )
        .unwrap();
        assert!(!dir.path().join("ca.key").exists());
        assert!(!dir.path().join("ca.crt").exists());
    }

    #[test]
    fn leaves_verify_against_the_ca_with_the_host_as_san() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_in(dir.path());
        let host = Host::Name("api.example.test".into());
        let leaf = ca.mint_leaf(&host).unwrap();
        let ca_cert = X509::from_pem(ca.cert_pem().as_bytes()).unwrap();
        assert!(leaf.cert.verify(&ca_cert.public_key().unwrap()).unwrap());
        let sans: Vec<String> = leaf
            .cert
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|n| n.dnsname().map(str::to_string))
            .collect();
        assert_eq!(sans, vec!["api.example.test".to_string()]);
        assert_eq!(leaf.key.id(), openssl::pkey::Id::EC);
        let ip_leaf = ca
            .mint_leaf(&Host::Ip("127.0.0.1".parse().unwrap()))
            .unwrap();
        let ip_san = ip_leaf.cert.subject_alt_names().unwrap();
        assert_eq!(
            ip_san.iter().next().unwrap().ipaddress(),
            Some(&[127, 0, 0, 1][..])
        );
    }

    #[tokio::test]
    async fn the_cache_is_bounded_and_single_flight() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(ca_in(dir.path()));
        let leaves = Arc::new(Leaves::new(2));
        let host = Host::Name("a.test".into());
        let joins: Vec<_> = (0..20)
            .map(|_| {
                let (ca, leaves, host) = (ca.clone(), leaves.clone(), host.clone());
                tokio::spawn(async move { leaves.leaf_for(&ca, &host, |_| {}).await.map(|_| ()) })
            })
            .collect();
        for j in joins {
            j.await.unwrap().unwrap();
        }
        assert_eq!(leaves.mints(), 1);
        for n in ["b.test", "c.test", "d.test"] {
            leaves
                .leaf_for(&ca, &Host::Name(n.into()), |_| {})
                .await
                .unwrap();
        }
        assert!(leaves.cached() <= 2, "{} cached", leaves.cached());
        assert_eq!(leaves.mints(), 4);
        // Another CA's leaf for a cached host is minted, never served from the cache.
        let other = tempfile::tempdir().unwrap();
        let other = Arc::new(ca_in(other.path()));
        let d = Host::Name("d.test".into());
        let mine = leaves.leaf_for(&ca, &d, |_| {}).await.unwrap();
        let theirs = leaves.leaf_for(&other, &d, |_| {}).await.unwrap();
        assert_eq!(leaves.mints(), 5);
        assert!(!Arc::ptr_eq(&mine, &theirs));
    }

    #[test]
    fn passthrough_wins_over_intercept_all() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: TlsConfig =
            serde_yaml::from_str("intercept: all\npassthrough: ['*.apple.com']").unwrap();
        let policy = cfg
            .compile(Arc::new(ca_in(dir.path())), Path::to_path_buf)
            .unwrap();
        let dest = |s: &str| crate::target::parse_authority(s.as_bytes(), None).unwrap();
        assert!(policy.intercepts(&dest("api.test:443"), false));
        assert!(!policy.intercepts(&dest("gs.apple.com:443"), true));
    }
}
