//! The environment a client process needs to go through warden: the proxy URLs (with a
//! configured client's login), the CA files each runtime reads, Java's system properties, and
//! the files they point at (the CA bundle and a Java truststore), written for `sh`, `fish` or
//! PowerShell. Called by `warden env` and `warden ca`; never on the request path.

use crate::config::{Config, Snapshot};
use crate::secret::SecretError;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Hosts no client sends through the proxy unless asked to: loopback.
pub const DEFAULT_NO_PROXY: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// The Java truststore's password when none is given (the JDK's own default for `cacerts`).
pub const DEFAULT_TRUSTSTORE_PASSWORD: &str = "changeit";

/// The CA bundle's file name, beside the CA certificate.
pub const BUNDLE_FILE: &str = "ca-bundle.pem";

/// The Java truststore's file name, beside the CA certificate.
pub const TRUSTSTORE_FILE: &str = "truststore.p12";

/// Everything in RFC 3986's userinfo that is not unreserved is percent-encoded: `:` and `@`
/// in a token would otherwise end the user or the userinfo.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why the environment could not be made. Names a client, a source or a file, never a token.
#[derive(Debug, Error)]
pub enum EnvError {
    /// `--client` names no client of `proxy.auth.clients`.
    #[error("`{0}` is not a client in proxy.auth.clients (a client registered through the clients API keeps only its token's hash, so its token cannot be printed)")]
    UnknownClient(String),
    /// `--client` without `proxy.auth`.
    #[error("--client {0}: the config has no proxy.auth, so there is no login to print")]
    NoAuth(String),
    /// The client's token source could not be read.
    #[error("proxy.auth.clients `{client}`: token: {source}")]
    Token {
        /// The client.
        client: String,
        /// What went wrong with its source (never a value).
        source: SecretError,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A certificate could not be read or the truststore encoded.
    #[error("Java truststore: {0}")]
    Truststore(String),
}

/// The shells `warden env` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    /// POSIX `sh` (also bash, dash, zsh): `export NAME=value`.
    Sh,
    /// fish: `set -gx NAME value`.
    Fish,
    /// PowerShell: `$env:NAME = 'value'`.
    PowerShell,
}

/// The files the environment points at, written beside the CA certificate.
#[derive(Debug, Clone)]
pub struct CaFiles {
    /// warden's CA certificate (absolute).
    pub cert: PathBuf,
    /// The system roots plus warden's CA.
    pub bundle: PathBuf,
    /// A PKCS12 truststore of the same certificates, for Java.
    pub truststore: PathBuf,
    /// The truststore's password.
    pub truststore_password: String,
}

/// What `warden env` is asked for.
#[derive(Debug, Clone, Default)]
pub struct EnvRequest {
    /// The `proxy.auth.clients` entry whose login the proxy URLs carry.
    pub client: Option<String>,
    /// Hosts added to the loopback ones in `NO_PROXY` and `http.nonProxyHosts`.
    pub no_proxy: Vec<String>,
}

/// The variables, in print order, and the comments printed before them.
#[derive(Debug, Clone)]
pub struct ClientEnv {
    /// Lines printed as shell comments (paths, warnings).
    pub comments: Vec<String>,
    /// `(name, value)` pairs.
    pub vars: Vec<(&'static str, String)>,
}

impl ClientEnv {
    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The script for `shell`: the comments, then one assignment per variable, every value
    /// quoted so that it reaches the process byte for byte.
    pub fn render(&self, shell: Shell) -> String {
        let mut out = String::new();
        for c in &self.comments {
            let _ = writeln!(out, "# {c}");
        }
        for (name, value) in &self.vars {
            let _ = match shell {
                Shell::Sh => writeln!(out, "export {name}={}", quote_sh(value)),
                Shell::Fish => writeln!(out, "set -gx {name} {}", quote_fish(value)),
                Shell::PowerShell => writeln!(out, "$env:{name} = {}", quote_powershell(value)),
            };
        }
        out
    }
}

fn quote_sh(value: &str) -> String {
    String::from_utf8_lossy(&shell_quote::Sh::quote_vec(value)).into_owned()
}

fn quote_fish(value: &str) -> String {
    String::from_utf8_lossy(&shell_quote::Fish::quote_vec(value)).into_owned()
}

/// A PowerShell verbatim string: inside single quotes only a single quote is special (it is
/// doubled), and PowerShell counts the typographic single quotes as single quotes too.
fn quote_powershell(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// One `JAVA_TOOL_OPTIONS` word. The JVM splits the variable on whitespace and takes quotes
/// (either kind) as grouping, removed; a value with either is quoted piece by piece, as a
/// shell would.
fn java_word(word: &str) -> String {
    if !word
        .chars()
        .any(|c| c.is_whitespace() || c == '\'' || c == '"')
    {
        return word.to_string();
    }
    let mut out = String::new();
    for (i, piece) in word.split('\'').enumerate() {
        if i > 0 {
            out.push_str("\"'\"");
        }
        if !piece.is_empty() {
            out.push('\'');
            out.push_str(piece);
            out.push('\'');
        }
    }
    out
}

/// The proxy's address as clients dial it: an unspecified listen address becomes loopback.
pub fn proxy_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `http://host:port`, or `http://NAME:TOKEN@host:port` with the userinfo percent-encoded.
pub fn proxy_url(listen: SocketAddr, login: Option<(&str, &str)>) -> String {
    let addr = proxy_addr(listen);
    match login {
        None => format!("http://{addr}"),
        Some((name, token)) => format!(
            "http://{}:{}@{addr}",
            utf8_percent_encode(name, USERINFO),
            utf8_percent_encode(token, USERINFO)
        ),
    }
}

/// Writes the bundle (system roots plus warden's CA) and the Java truststore beside the CA
/// certificate of `snap`, replacing earlier ones. Fails when a file cannot be written.
pub fn write_ca_files(snap: &Snapshot, truststore_password: &str) -> Result<CaFiles, EnvError> {
    let ca = &snap.tls.ca;
    let cert = std::fs::canonicalize(ca.cert_path()).map_err(|source| EnvError::Write {
        path: ca.cert_path().to_path_buf(),
        source,
    })?;
    let bundle = cert.with_file_name(BUNDLE_FILE);
    let roots = crate::tls::system_roots_pem();
    let mut pem = roots.clone();
    pem.push_str(ca.cert_pem());
    std::fs::write(&bundle, pem).map_err(|source| EnvError::Write {
        path: bundle.clone(),
        source,
    })?;
    let truststore = cert.with_file_name(TRUSTSTORE_FILE);
    write_java_truststore(ca.cert_pem(), &roots, &truststore, truststore_password)?;
    Ok(CaFiles {
        cert,
        bundle,
        truststore,
        truststore_password: truststore_password.to_string(),
    })
}

/// The PKCS12 truststore Java reads with `javax.net.ssl.trustStoreType=PKCS12`: warden's CA
/// (`ca_pem`, alias `warden-ca`) and every certificate of `roots_pem`, each bag marked with
/// Oracle's trusted-key-usage attribute, without which Java sees no trusted entry at all.
pub fn java_truststore(ca_pem: &str, roots_pem: &str, password: &str) -> Result<Vec<u8>, EnvError> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry};
    let bad = |e: &dyn std::fmt::Display| EnvError::Truststore(e.to_string());
    let parse = |pem: &str| openssl::x509::X509::stack_from_pem(pem.as_bytes());
    let mut store = KeyStore::new();
    let ca = parse(ca_pem).map_err(|e| bad(&e))?;
    let roots = parse(roots_pem).unwrap_or_default();
    if ca.is_empty() {
        return Err(EnvError::Truststore(
            "the CA certificate holds no certificate".into(),
        ));
    }
    for (i, cert) in ca.iter().chain(roots.iter()).enumerate() {
        let der = cert.to_der().map_err(|e| bad(&e))?;
        // A root that the parser refuses is left out rather than failing the whole store.
        let Ok(entry) = Certificate::from_der(&der) else {
            continue;
        };
        let alias = if i == 0 {
            "warden-ca".to_string()
        } else {
            format!("system-root-{i}")
        };
        store.add_entry(&alias, KeyStoreEntry::Certificate(entry));
    }
    store.writer(password).write().map_err(|e| bad(&e))
}

/// Writes [`java_truststore`] to `path`.
pub fn write_java_truststore(
    ca_pem: &str,
    roots_pem: &str,
    path: &Path,
    password: &str,
) -> Result<(), EnvError> {
    let der = java_truststore(ca_pem, roots_pem, password)?;
    std::fs::write(path, der).map_err(|source| EnvError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The client's token, read from its `proxy.auth.clients` source.
fn client_token(cfg: &Config, name: &str) -> Result<crate::secret::Secret, EnvError> {
    let auth = cfg
        .file
        .proxy
        .auth
        .as_ref()
        .ok_or_else(|| EnvError::NoAuth(name.to_string()))?;
    let client = auth
        .clients
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| EnvError::UnknownClient(name.to_string()))?;
    client
        .token
        .read(&cfg.base_dir)
        .map_err(|source| EnvError::Token {
            client: name.to_string(),
            source,
        })
}

/// A `NO_PROXY` entry as Java's `http.nonProxyHosts` spells it: `.example.com` (a domain's
/// subdomains) is `*.example.com`, an IPv6 address is bracketed.
fn java_non_proxy_host(host: &str) -> String {
    if let Some(domain) = host.strip_prefix('.') {
        format!("*.{domain}")
    } else if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The variables for `request` against the config `cfg` (compiled as `snap`), pointing at
/// `files`. Fails when `--client` names no configured client or its token cannot be read;
/// the error never holds the token.
pub fn client_env(
    cfg: &Config,
    snap: &Snapshot,
    files: &CaFiles,
    request: &EnvRequest,
) -> Result<ClientEnv, EnvError> {
    let token = match &request.client {
        Some(name) => Some(client_token(cfg, name)?),
        None => None,
    };
    let login = request
        .client
        .as_deref()
        .zip(token.as_ref().map(|t| t.expose()));
    let proxy = proxy_url(snap.proxy_listen, login);
    let addr = proxy_addr(snap.proxy_listen);
    let mut comments = vec![
        format!("warden CA certificate: {}", files.cert.display()),
        format!("{BUNDLE_FILE} holds the system roots plus warden's CA; {TRUSTSTORE_FILE} the same for Java."),
    ];
    if request.client.is_none() && snap.requires_auth() {
        comments.push(
            "warning: proxy.auth is on and no --client was given: these clients will get 407 (auth_required)"
                .to_string(),
        );
    }
    let mut no_proxy: Vec<String> = DEFAULT_NO_PROXY.iter().map(|h| h.to_string()).collect();
    for extra in &request.no_proxy {
        for h in extra.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            if !no_proxy.iter().any(|n| n == h) {
                no_proxy.push(h.to_string());
            }
        }
    }
    let no_proxy_list = no_proxy.join(",");
    let java_no_proxy = no_proxy
        .iter()
        .map(|h| java_non_proxy_host(h))
        .collect::<Vec<_>>()
        .join("|");
    let host = match addr.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let port = addr.port();
    let mut java = vec![
        format!("-Dhttps.proxyHost={host}"),
        format!("-Dhttps.proxyPort={port}"),
        format!("-Dhttp.proxyHost={host}"),
        format!("-Dhttp.proxyPort={port}"),
        format!("-Dhttp.nonProxyHosts={java_no_proxy}"),
        format!("-Djavax.net.ssl.trustStore={}", files.truststore.display()),
        format!(
            "-Djavax.net.ssl.trustStorePassword={}",
            files.truststore_password
        ),
        "-Djavax.net.ssl.trustStoreType=PKCS12".to_string(),
        // Java drops Basic from CONNECT by default, so an authenticated tunnel gets 407.
        "-Djdk.http.auth.tunneling.disabledSchemes=".to_string(),
    ];
    if let Some((name, token)) = login {
        for scheme in ["https", "http"] {
            java.push(format!("-D{scheme}.proxyUser={name}"));
            java.push(format!("-D{scheme}.proxyPassword={token}"));
        }
    }
    let java = java
        .iter()
        .map(|w| java_word(w))
        .collect::<Vec<_>>()
        .join(" ");
    let cert = files.cert.display().to_string();
    let bundle = files.bundle.display().to_string();
    let vars = vec![
        ("HTTPS_PROXY", proxy.clone()),
        ("https_proxy", proxy.clone()),
        ("HTTP_PROXY", proxy.clone()),
        ("http_proxy", proxy),
        ("NO_PROXY", no_proxy_list.clone()),
        ("no_proxy", no_proxy_list),
        // Runtimes that replace their trust store with the file get the bundle, so hosts
        // tunnelled blind still verify against the system roots.
        ("SSL_CERT_FILE", bundle.clone()),
        ("REQUESTS_CA_BUNDLE", bundle.clone()),
        ("CURL_CA_BUNDLE", bundle.clone()),
        ("GIT_SSL_CAINFO", bundle.clone()),
        ("PIP_CERT", bundle.clone()),
        ("npm_config_cafile", bundle.clone()),
        ("AWS_CA_BUNDLE", bundle.clone()),
        ("CARGO_HTTP_CAINFO", bundle),
        // Node adds these to its built-in roots.
        ("NODE_EXTRA_CA_CERTS", cert),
        ("NODE_USE_ENV_PROXY", "1".to_string()),
        ("JAVA_TOOL_OPTIONS", java),
    ];
    Ok(ClientEnv { comments, vars })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_url_percent_encodes_the_login() {
        let listen: SocketAddr = "0.0.0.0:3128".parse().unwrap();
        assert_eq!(proxy_url(listen, None), "http://127.0.0.1:3128");
        assert_eq!(
            proxy_url(listen, Some(("run-42", "a:b@c/d e%"))),
            "http://run-42:a%3Ab%40c%2Fd%20e%25@127.0.0.1:3128"
        );
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert_eq!(proxy_url(v6, None), "http://[::1]:8080");
    }

    #[test]
    fn java_words_with_whitespace_or_quotes_are_quoted_for_the_jvm() {
        for (word, want) in [
            ("-Dx=plain", "-Dx=plain"),
            ("-Dx=a b", "'-Dx=a b'"),
            ("-Dx=it's", "'-Dx=it'\"'\"'s'"),
            ("-Dx=say \"hi\"", "'-Dx=say \"hi\"'"),
        ] {
            assert_eq!(java_word(word), want, "{word}");
        }
    }

    #[test]
    fn powershell_doubles_every_kind_of_single_quote() {
        assert_eq!(
            quote_powershell("a'b\u{2019}c$d"),
            "'a''b\u{2019}\u{2019}c$d'"
        );
    }

    #[test]
    fn java_non_proxy_hosts_use_java_wildcards_and_brackets() {
        assert_eq!(java_non_proxy_host(".corp.example"), "*.corp.example");
        assert_eq!(java_non_proxy_host("::1"), "[::1]");
        assert_eq!(java_non_proxy_host("10.1.2.3"), "10.1.2.3");
    }

    #[test]
    fn the_truststore_marks_every_certificate_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::tls::CertAuthority::load_or_create(
            &dir.path().join("ca.crt"),
            &dir.path().join("ca.key"),
            false,
        )
        .unwrap();
        let roots = crate::tls::system_roots_pem();
        let der = java_truststore(ca.cert_pem(), &roots, "changeit").unwrap();
        let archive = p12_keystore::Pkcs12Archive::from_pkcs12(&der, "changeit").unwrap();
        let system = openssl::x509::X509::stack_from_pem(roots.as_bytes()).unwrap_or_default();
        assert_eq!(archive.certs.len(), 1 + system.len());
        assert!(archive.certs.iter().all(|c| c.trusted));
        let ours = openssl::x509::X509::from_pem(ca.cert_pem().as_bytes()).unwrap();
        assert!(archive
            .certs
            .iter()
            .any(|c| c.cert.as_der() == ours.to_der().unwrap().as_slice()));
    }
}
