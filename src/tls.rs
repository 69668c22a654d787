//! TLS with rustls (ring): the listeners' certificate and, for mutual TLS, the CA their clients' certificates
//! must chain to ([`ServerTls`]); and the client side of branch calls: extra CA roots and a client certificate
//! ([`BranchTls`]).
//!
//! Files are PEM. They are read at start, where a bad one is an error naming its setting and path, and then
//! polled by [`crate::reload::watch`] (cert-manager and kubelet rotate a Secret's files in place):
//! when their contents change, the new set is checked and takes effect for the next handshakes; a set that
//! does not load (a half-written file, a key that does not match the certificate) keeps the previous one in
//! force and is logged once, as a warning naming the file. Connections already open keep the certificate they
//! were made with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::reload::{Reload, Reloadable};

/// ALPN of the listeners: HTTP/2 first (gRPC needs it), then HTTP/1.1.
const SERVER_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A TLS file that cannot be used, naming its setting and path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

fn error(setting: &str, path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError(format!("{setting} {}: {why}", path.display()))
}

/// The crypto provider of every TLS braid speaks (ring, as reqwest, kube and sqlx use).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A file given by a setting (`tls-cert`, `branch-ca`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    /// The setting's name, for messages.
    pub setting: &'static str,
    /// The file.
    pub path: PathBuf,
}

impl TlsFile {
    /// `path` as given by `setting`.
    pub fn new(setting: &'static str, path: impl Into<PathBuf>) -> Self {
        Self {
            setting,
            path: path.into(),
        }
    }

    fn read(&self) -> Result<Vec<u8>, TlsError> {
        std::fs::read(&self.path).map_err(|e| error(self.setting, &self.path, e))
    }

    fn error(&self, why: impl std::fmt::Display) -> TlsError {
        error(self.setting, &self.path, why)
    }

    /// The certificates of a PEM file, at least one.
    fn certs(&self, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(format!("not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(self.error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
        }
        Ok(certs)
    }

    /// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
    fn key(&self, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                self.error("holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
            }
            e => self.error(format!("not a PEM private key file: {e}")),
        })
    }

    /// The CA certificates of a PEM file as trust roots.
    fn roots(&self, pem: &[u8]) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in self.certs(pem)? {
            roots
                .add(cert)
                .map_err(|e| self.error(format!("holds a certificate that is not a CA: {e}")))?;
        }
        Ok(roots)
    }
}

/// A certificate chain and its key, checked to match.
fn certified_key(
    cert: &TlsFile,
    cert_pem: &[u8],
    key: &TlsFile,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = cert.certs(cert_pem)?;
    let der = key.key(key_pem)?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| {
        TlsError(format!(
            "{} {} and {} {} do not make a usable pair: {e}",
            cert.setting,
            cert.path.display(),
            key.setting,
            key.path.display()
        ))
    })
}

/// Files read together, and what was last made of them, so a set is tried (and a failure logged) once per
/// change.
struct Watched {
    files: Vec<TlsFile>,
    seen: Mutex<Option<Result<Vec<Vec<u8>>, TlsError>>>,
}

impl Watched {
    fn new(files: Vec<TlsFile>) -> Self {
        Self {
            files,
            seen: Mutex::new(None),
        }
    }

    fn read(&self) -> Result<Vec<Vec<u8>>, TlsError> {
        self.files.iter().map(TlsFile::read).collect()
    }

    /// Reads the files at start: any problem is an error.
    fn first<T>(&self, build: impl Fn(&[Vec<u8>]) -> Result<T, TlsError>) -> Result<T, TlsError> {
        let contents = self.read()?;
        let built = build(&contents)?;
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(Ok(contents));
        }
        Ok(built)
    }

    /// Reads the files again; when they changed, builds from them and hands the result to `apply`.
    fn poll<T>(
        &self,
        build: impl Fn(&[Vec<u8>]) -> Result<T, TlsError>,
        apply: impl FnOnce(T),
    ) -> Reload {
        let now = self.read();
        let Ok(mut seen) = self.seen.lock() else {
            return Reload::Unchanged;
        };
        if seen.as_ref() == Some(&now) {
            return Reload::Unchanged;
        }
        *seen = Some(now.clone());
        drop(seen);
        match now.and_then(|contents| build(&contents)) {
            Ok(built) => {
                apply(built);
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e.to_string()),
        }
    }
}

/// The listeners' TLS: certificate, key and optional client CA (mutual TLS), reloaded when they change.
pub struct ServerTls {
    watched: Watched,
    mutual: bool,
    config: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.watched.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads `cert` and `key` and, for mutual TLS, `client_ca`; an error names the file at fault.
    pub fn load(cert: TlsFile, key: TlsFile, client_ca: Option<TlsFile>) -> Result<Self, TlsError> {
        let mutual = client_ca.is_some();
        let watched = Watched::new([cert, key].into_iter().chain(client_ca).collect());
        let config = watched.first(|c| Self::build(&watched.files, c))?;
        Ok(Self {
            watched,
            mutual,
            config: RwLock::new(Arc::new(config)),
        })
    }

    fn build(files: &[TlsFile], contents: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
        let (Some(cert), Some(key)) = (files.first(), files.get(1)) else {
            return Err(TlsError(
                "the listener TLS needs a certificate and a key".into(),
            ));
        };
        let certified = certified_key(cert, &contents[0], key, &contents[1])?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS protocol versions: {e}")))?;
        let builder = match (files.get(2), contents.get(2)) {
            (Some(ca), Some(pem)) => {
                let roots = ca.roots(pem)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| ca.error(e))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// An acceptor with the certificates now in force.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = match self.config.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }
}

impl Reloadable for ServerTls {
    fn what(&self) -> &'static str {
        "listener TLS"
    }

    fn reload(&self) -> Reload {
        self.watched.poll(
            |c| Self::build(&self.watched.files, c),
            |config| {
                if let Ok(mut slot) = self.config.write() {
                    *slot = Arc::new(config);
                }
            },
        )
    }
}

/// The client side of branch calls (HTTPS, gRPC over TLS, the alert webhook): the public web roots plus
/// `--branch-ca`, and the client certificate of `--branch-client-cert`/`--branch-client-key`. The configs it
/// hands out read the current files at each handshake, so rotation needs no new client.
pub struct BranchTls {
    ca: Option<Watched>,
    identity: Option<Watched>,
    verifier: RwLock<Arc<WebPkiServerVerifier>>,
    client_key: RwLock<Option<Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for BranchTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BranchTls")
            .field("ca", &self.ca.as_ref().map(|w| &w.files))
            .field("identity", &self.identity.as_ref().map(|w| &w.files))
            .finish_non_exhaustive()
    }
}

impl BranchTls {
    /// The public web roots plus the CAs of `ca`, and the client certificate `identity` (certificate, key).
    pub fn load(
        ca: Option<TlsFile>,
        identity: Option<(TlsFile, TlsFile)>,
    ) -> Result<Self, TlsError> {
        let ca = ca.map(|f| Watched::new(vec![f]));
        let identity = identity.map(|(c, k)| Watched::new(vec![c, k]));
        let verifier = match &ca {
            Some(w) => w.first(|c| Self::verifier(&w.files, c))?,
            None => Self::verifier(&[], &[])?,
        };
        let client_key = match &identity {
            Some(w) => Some(Arc::new(w.first(|c| Self::identity(&w.files, c))?)),
            None => None,
        };
        Ok(Self {
            ca,
            identity,
            verifier: RwLock::new(verifier),
            client_key: RwLock::new(client_key),
        })
    }

    fn verifier(
        files: &[TlsFile],
        contents: &[Vec<u8>],
    ) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let (Some(file), Some(pem)) = (files.first(), contents.first()) {
            roots.roots.extend(file.roots(pem)?.roots);
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError(format!("branch TLS roots: {e}")))
    }

    fn identity(files: &[TlsFile], contents: &[Vec<u8>]) -> Result<CertifiedKey, TlsError> {
        match (files, contents) {
            ([cert, key], [cert_pem, key_pem]) => certified_key(cert, cert_pem, key, key_pem),
            _ => Err(TlsError(
                "a client certificate needs a certificate and a key".into(),
            )),
        }
    }

    /// Whether any file is configured (else there is nothing to watch).
    pub fn has_files(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }

    /// Whether a client certificate is configured.
    pub fn has_client_cert(&self) -> bool {
        self.identity.is_some()
    }

    /// A client config on these roots and this client certificate, offering `alpn`.
    pub fn client_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS protocol versions: {e}")))?
            .dangerous()
            // Not dangerous: it is rustls' WebPKI verifier, swapped when --branch-ca changes.
            .with_custom_certificate_verifier(Arc::new(CurrentVerifier(Arc::clone(self))))
            .with_client_cert_resolver(Arc::new(CurrentClientCert(Arc::clone(self))));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    fn current_verifier(&self) -> Arc<WebPkiServerVerifier> {
        match self.verifier.read() {
            Ok(v) => Arc::clone(&v),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

impl Reloadable for BranchTls {
    fn what(&self) -> &'static str {
        "branch TLS"
    }

    fn reload(&self) -> Reload {
        let mut outcome = Reload::Unchanged;
        if let Some(w) = &self.ca {
            outcome = w.poll(
                |c| Self::verifier(&w.files, c),
                |v| {
                    if let Ok(mut slot) = self.verifier.write() {
                        *slot = v;
                    }
                },
            );
        }
        if let Some(w) = &self.identity {
            let id = w.poll(
                |c| Self::identity(&w.files, c),
                |key| {
                    if let Ok(mut slot) = self.client_key.write() {
                        *slot = Some(Arc::new(key));
                    }
                },
            );
            // A failure is worth more than a success to report.
            if id != Reload::Unchanged && !matches!(outcome, Reload::Failed(_)) {
                outcome = id;
            }
        }
        outcome
    }
}

/// The server verifier of [`BranchTls`] now in force.
#[derive(Debug)]
struct CurrentVerifier(Arc<BranchTls>);

impl ServerCertVerifier for CurrentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current_verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current_verifier()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current_verifier()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current_verifier().supported_verify_schemes()
    }
}

/// The client certificate of [`BranchTls`] now in force.
#[derive(Debug)]
struct CurrentClientCert(Arc<BranchTls>);

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        match self.0.client_key.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn has_certs(&self) -> bool {
        self.0.has_client_cert()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_bad_file_is_named() {
        let dir = std::env::temp_dir().join(format!("braid-tls-{}", crate::model::short_uuid()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = write(&dir, "junk.pem", "not a certificate\n");
        let missing = dir.join("missing.pem");
        let err = ServerTls::load(
            TlsFile::new("tls-cert", &missing),
            TlsFile::new("tls-key", &junk),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(&format!("tls-cert {}", missing.display())),
            "{err}"
        );
        let err = ServerTls::load(
            TlsFile::new("tls-cert", &junk),
            TlsFile::new("tls-key", &junk),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!("tls-cert {}", junk.display())),
            "{err}"
        );
        assert!(err.contains("no PEM certificate"), "{err}");
        let err = BranchTls::load(Some(TlsFile::new("branch-ca", &junk)), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("branch-ca"), "{err}");
    }

    #[test]
    fn the_public_roots_load() {
        let tls = Arc::new(BranchTls::load(None, None).unwrap());
        assert!(!tls.has_client_cert());
        assert!(tls.client_config(&[b"h2"]).is_ok());
    }
}
