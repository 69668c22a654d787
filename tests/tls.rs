//! TLS end to end, with certificates made here (rcgen) and real handshakes: the HTTP and gRPC listeners with
//! and without mutual TLS (reqwest and tonic clients), wrong CAs and expired certificates refused, rotation
//! picked up without a restart, bad files refused at start; branch calls to `https://` and `grpcs://`
//! branches trusted through `--branch-ca` and presenting `--branch-client-cert`; TLS to the store.

// Panicking is how a test fails; clippy's allow-*-in-tests does not reach helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid::config::Config;
use braid::proto::dtmgimp::DtmRequest;
use braid::proto::dtmgimp::dtm_client::DtmClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use serde_json::json;
use support::grpc_busi::req_bytes;
use support::{Backend, GrpcBusi, TestServer, fresh_dsn, gid, mysql_base, test_config};

/// A certificate with its key (PEM) and its DER, to compare with what a peer presented.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

/// A test CA, writing files into its own scratch directory.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("braid-tls-{name}-{}", braid::model::short_uuid()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("braid test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { dir, ca }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate for `localhost` and 127.0.0.1, for a server or (`client`) a client.
    fn leaf(&self, cn: &str, serial: u64, client: bool) -> Leaf {
        let params = self.params(cn, serial, client);
        self.sign(&params)
    }

    /// Like [`Pki::leaf`], valid only in 2000.
    fn expired(&self, cn: &str, serial: u64, client: bool) -> Leaf {
        let mut params = self.params(cn, serial, client);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.sign(&params)
    }

    fn params(&self, cn: &str, serial: u64, client: bool) -> CertificateParams {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        params
    }

    fn sign(&self, params: &CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes `text` to `name` in one step (as a Secret volume swaps its files).
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

/// A config serving TLS with `server`'s files (written as `cert.pem`, `key.pem`), and mutual TLS when
/// `client_ca` is given.
fn tls_config(pki: &Pki, server: &Leaf, client_ca: Option<&str>) -> Config {
    let mut config = test_config(&fresh_dsn(Backend::Sqlite));
    config.tls.cert = Some(pki.write("cert.pem", &server.cert));
    config.tls.key = Some(pki.write("key.pem", &server.key));
    config.tls.client_ca = client_ca.map(|ca| pki.write("client-ca.pem", ca));
    config
}

/// An HTTPS client trusting only `ca`, presenting `id` when given, keeping no connection (each request is
/// a new handshake).
fn https(ca: &str, id: Option<&Leaf>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5));
    if let Some(id) = id {
        let pem = format!("{}{}", id.cert, id.key);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// `GET /api/ping` over HTTPS: the HTTP version and the server certificate (DER), or the error.
async fn ping(
    client: &reqwest::Client,
    addr: SocketAddr,
) -> Result<(reqwest::Version, Vec<u8>), String> {
    let resp = client
        .get(format!("https://127.0.0.1:{}/api/ping", addr.port()))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let peer = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok((resp.version(), peer))
}

/// `NewGid` over gRPC with TLS, trusting `ca`, presenting `id` when given.
async fn grpc_new_gid(addr: SocketAddr, ca: &str, id: Option<&Leaf>) -> Result<String, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(id) = id {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| format!("{e:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    DtmClient::new(channel)
        .new_gid(())
        .await
        .map(|r| r.into_inner().gid)
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_of_the_client_ca() {
    let pki = Pki::new("mtls");
    let clients = Pki::new("mtls-clients");
    let strangers = Pki::new("mtls-strangers");
    let server = pki.leaf("braid", 1, false);
    let ts = TestServer::start_with(tls_config(&pki, &server, Some(&clients.ca_pem()))).await;
    assert!(ts.server.tls && ts.dtm().starts_with("https://"));
    let (http, grpc) = (ts.server.http_addr, ts.server.grpc_addr);
    let ca = pki.ca_pem();
    let good = clients.leaf("app", 10, true);
    let stranger = strangers.leaf("app", 11, true);
    let expired = clients.expired("old-app", 12, true);

    let (version, peer) = ping(&https(&ca, Some(&good)), http).await.unwrap();
    assert_eq!(version, reqwest::Version::HTTP_2, "ALPN picks h2");
    assert_eq!(peer, server.der);
    let resp = https(&ca, Some(&good))
        .get(format!(
            "{}/newGid",
            ts.dtm().replace("127.0.0.1", "localhost")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the DTM API over HTTPS by name");
    let gid = grpc_new_gid(grpc, &ca, Some(&good)).await.unwrap();
    assert!(!gid.is_empty());

    for (who, id) in [
        ("no certificate", None),
        ("a certificate of another CA", Some(&stranger)),
        ("an expired certificate", Some(&expired)),
    ] {
        let http_err = ping(&https(&ca, id), http).await;
        assert!(http_err.is_err(), "HTTP with {who}: {http_err:?}");
        let grpc_err = grpc_new_gid(grpc, &ca, id).await;
        assert!(grpc_err.is_err(), "gRPC with {who}: {grpc_err:?}");
    }
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{http}/api/ping"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP is not served"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_is_verified_by_clients() {
    let pki = Pki::new("server");
    let other = Pki::new("other");
    let server = pki.leaf("braid", 1, false);
    let ts = TestServer::start_with(tls_config(&pki, &server, None)).await;
    let (http, grpc) = (ts.server.http_addr, ts.server.grpc_addr);

    // Without mutual TLS any client that trusts the CA gets in, with or without a certificate.
    let (_, peer) = ping(&https(&pki.ca_pem(), None), http).await.unwrap();
    assert_eq!(peer, server.der);
    grpc_new_gid(grpc, &pki.ca_pem(), None).await.unwrap();
    // A client trusting another CA refuses the server.
    let err = ping(&https(&other.ca_pem(), None), http).await.unwrap_err();
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );
    assert!(grpc_new_gid(grpc, &other.ca_pem(), None).await.is_err());
    ts.stop().await;

    // An expired server certificate is refused by both kinds of client.
    let expired = pki.expired("braid-old", 2, false);
    let ts = TestServer::start_with(tls_config(&pki, &expired, None)).await;
    let err = ping(&https(&pki.ca_pem(), None), ts.server.http_addr)
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
    assert!(
        grpc_new_gid(ts.server.grpc_addr, &pki.ca_pem(), None)
            .await
            .is_err()
    );
    ts.stop().await;
}

/// Polls `probe` until it holds, for at most 20 s (the files are looked at every 2 s).
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !probe().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} within 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_are_picked_up_without_a_restart() {
    let pki = Pki::new("rotate");
    let clients_a = Pki::new("rotate-clients-a");
    let clients_b = Pki::new("rotate-clients-b");
    let first = pki.leaf("braid-1", 1, false);
    let ts = TestServer::start_with(tls_config(&pki, &first, Some(&clients_a.ca_pem()))).await;
    let (http, grpc) = (ts.server.http_addr, ts.server.grpc_addr);
    let ca = pki.ca_pem();
    let (a, b) = (clients_a.leaf("a", 2, true), clients_b.leaf("b", 3, true));
    let (_, peer) = ping(&https(&ca, Some(&a)), http).await.unwrap();
    assert_eq!(peer, first.der);

    // A new certificate and key (the key written first: the half-written state is refused, then taken).
    let second = pki.leaf("braid-2", 2, false);
    pki.write("key.pem", &second.key);
    pki.write("cert.pem", &second.cert);
    eventually("the new certificate is served", || async {
        ping(&https(&ca, Some(&a)), http)
            .await
            .is_ok_and(|(_, peer)| peer == second.der)
    })
    .await;
    let gid = grpc_new_gid(grpc, &ca, Some(&a)).await.unwrap();
    assert!(!gid.is_empty(), "gRPC handshakes see it too");

    // A broken file keeps the certificate in force.
    pki.write(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, peer) = ping(&https(&ca, Some(&a)), http).await.unwrap();
    assert_eq!(peer, second.der, "the previous certificate stays in force");

    // A new client CA: B's clients get in, A's no longer.
    pki.write("cert.pem", &second.cert);
    pki.write("client-ca.pem", &clients_b.ca_pem());
    eventually("clients of the new CA get in", || async {
        ping(&https(&ca, Some(&b)), http).await.is_ok()
    })
    .await;
    assert!(ping(&https(&ca, Some(&a)), http).await.is_err());
    assert!(grpc_new_gid(grpc, &ca, Some(&b)).await.is_ok());
    ts.stop().await;
}

/// Runs `braid serve` with `args` (expected to fail at start); returns its stderr.
fn serve_fails(args: &[&str]) -> String {
    let dsn = fresh_dsn(Backend::Sqlite);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_braid"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
        ])
        .args(["--store", &dsn, "--kubernetes", "off"])
        .args(args)
        .output()
        .expect("braid runs");
    assert!(!out.status.success(), "braid started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_file_at_start_is_an_error_naming_it() {
    let pki = Pki::new("bad");
    let one = pki.leaf("one", 1, false);
    let two = pki.leaf("two", 2, false);
    let cert = pki.write("cert.pem", &one.cert);
    let key = pki.write("key.pem", &one.key);
    let other_key = pki.write("other-key.pem", &two.key);
    let junk = pki.write("junk.pem", "hello\n");
    let missing = pki.dir.join("missing.pem");
    let (cert, key, other_key, junk, missing) = (
        cert.display().to_string(),
        key.display().to_string(),
        other_key.display().to_string(),
        junk.display().to_string(),
        missing.display().to_string(),
    );

    let err = serve_fails(&["--tls-cert", &missing, "--tls-key", &key]);
    assert!(err.contains(&format!("tls-cert {missing}")), "{err}");
    let err = serve_fails(&["--tls-cert", &cert, "--tls-key", &junk]);
    assert!(
        err.contains(&format!("tls-key {junk}")) && err.contains("no PEM private key"),
        "{err}"
    );
    let err = serve_fails(&["--tls-cert", &cert, "--tls-key", &other_key]);
    assert!(
        err.contains(&cert)
            && err.contains(&other_key)
            && err.contains("do not make a usable pair"),
        "{err}"
    );
    let err = serve_fails(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &junk,
    ]);
    assert!(err.contains(&format!("tls-client-ca {junk}")), "{err}");
    let err = serve_fails(&["--tls-cert", &cert]);
    assert!(err.contains("tls-cert needs tls-key"), "{err}");
    let err = serve_fails(&["--branch-ca", &missing]);
    assert!(err.contains(&format!("branch-ca {missing}")), "{err}");
    let err = serve_fails(&["--branch-client-cert", &cert, "--branch-client-key", &junk]);
    assert!(err.contains(&format!("branch-client-key {junk}")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_cannot_hold_a_slot_through_the_handshake() {
    let pki = Pki::new("silent");
    let server = pki.leaf("braid", 1, false);
    let mut config = tls_config(&pki, &server, None);
    config.limits.max_connections = 1;
    config.limits.header_read_timeout = Duration::from_secs(1);
    let ts = TestServer::start_with(config).await;
    let addr = ts.server.http_addr;
    let started = std::time::Instant::now();
    let silent = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        // The server closes the connection that never starts its handshake.
        matches!(tcp.read(&mut buf), Ok(0) | Err(_))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The only slot is taken: this client waits, then gets in once the silent one is closed.
    let (_, peer) = ping(&https(&pki.ca_pem(), None), addr).await.unwrap();
    assert_eq!(peer, server.der);
    assert!(silent.await.unwrap(), "the silent connection was closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after the header-read timeout: {:?}",
        started.elapsed()
    );
    ts.stop().await;
}

/// One call an HTTPS branch received: its path and the client certificate presented (DER).
type Seen = Arc<Mutex<Vec<(String, Option<Vec<u8>>)>>>;

/// An HTTPS branch on 127.0.0.1 answering SUCCESS, with `server`'s certificate; when `client_ca` is given,
/// clients may present a certificate of it (recorded).
async fn https_branch(server: &Leaf, client_ca: Option<&str>) -> (SocketAddr, Seen) {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let chain = CertificateDer::pem_slice_iter(server.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(server.key.as_bytes()).unwrap();
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, record) = (acceptor.clone(), Arc::clone(&record));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let _: &hyper::Request<hyper::body::Incoming> = &req;
                    record
                        .lock()
                        .unwrap()
                        .push((req.uri().path().to_owned(), peer.clone()));
                    async {
                        Ok::<_, Infallible>(hyper::Response::new(axum::body::Body::from(
                            r#"{"dtm_result":"SUCCESS"}"#,
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (addr, seen)
}

fn https_saga(g: &str, branch: SocketAddr) -> serde_json::Value {
    let url = |op: &str| format!("https://localhost:{}/api/busi/{op}", branch.port());
    json!({
        "gid": g,
        "trans_type": "saga",
        "steps": [{"action": url("TransOut"), "compensate": url("TransOutRevert")}],
        "payloads": [r#"{"amount":30}"#],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_branches_are_trusted_through_the_branch_ca_and_see_the_client_certificate() {
    let branches = Pki::new("branches");
    let braid_clients = Pki::new("braid-clients");
    let (addr, seen) = https_branch(
        &branches.leaf("busi", 1, false),
        Some(&braid_clients.ca_pem()),
    )
    .await;

    // Without --branch-ca the private CA is unknown: the call fails and the saga waits for a retry.
    let ts = TestServer::start(Backend::Sqlite).await;
    let g = gid("https-unknown-ca");
    ts.submit_ok(&https_saga(&g, addr)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert!(seen.lock().unwrap().is_empty(), "no request got through");
    ts.stop().await;

    // With it, and with a client certificate the branch records.
    let client = braid_clients.leaf("braid", 7, true);
    let mut config = test_config(&fresh_dsn(Backend::Sqlite));
    config.tls.branch_ca = Some(branches.write("branch-ca.pem", &branches.ca_pem()));
    config.tls.branch_client_cert = Some(braid_clients.write("client.pem", &client.cert));
    config.tls.branch_client_key = Some(braid_clients.write("client-key.pem", &client.key));
    let ts = TestServer::start_with(config).await;
    let g = gid("https-branch");
    ts.submit_ok(&https_saga(&g, addr)).await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].0, "/api/busi/TransOut");
    assert_eq!(
        calls[0].1.as_deref(),
        Some(client.der.as_slice()),
        "the branch saw braid's client certificate"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_branches_over_tls_with_mutual_tls() {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let branches = Pki::new("grpc-branches");
    let braid_clients = Pki::new("grpc-braid-clients");
    let leaf = branches.leaf("busi", 1, false);
    // The branch requires a client certificate of braid's CA.
    let busi = GrpcBusi::start_with(Some(
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&leaf.cert, &leaf.key))
            .client_ca_root(Certificate::from_pem(braid_clients.ca_pem())),
    ))
    .await;
    let client = braid_clients.leaf("braid", 8, true);
    let mut config = test_config(&fresh_dsn(Backend::Sqlite));
    config.tls.branch_ca = Some(branches.write("branch-ca.pem", &branches.ca_pem()));
    config.tls.branch_client_cert = Some(braid_clients.write("client.pem", &client.cert));
    config.tls.branch_client_key = Some(braid_clients.write("client-key.pem", &client.key));
    let ts = TestServer::start_with(config).await;

    let g = gid("grpcs-saga");
    let payload = req_bytes(30, "", "");
    let steps = json!([
        {"action": busi.tls_url("TransOut"), "compensate": busi.tls_url("TransOutRevert")},
        {"action": busi.tls_url("TransIn"), "compensate": busi.tls_url("TransInRevert")},
    ]);
    ts.grpc()
        .await
        .submit(DtmRequest {
            gid: g.clone(),
            trans_type: "saga".to_owned(),
            steps: steps.to_string(),
            bin_payloads: vec![payload.clone(), payload],
            ..DtmRequest::default()
        })
        .await
        .expect("Submit");
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    assert_eq!(busi.methods_of(&g), ["TransOut", "TransIn"]);
    let first = busi
        .calls()
        .into_iter()
        .find(|c| c.md("dtm-gid") == g)
        .unwrap();
    assert_eq!(first.md("dtm-op"), "action");

    // The same URL form over HTTP (a saga submitted as JSON) goes over gRPC too.
    let g = gid("grpcs-http");
    ts.submit_ok(&json!({
        "gid": g,
        "trans_type": "saga",
        "protocol": "grpc",
        "steps": [{"action": busi.tls_url("TransOut")}],
        "payloads": [""],
    }))
    .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "succeed");
    ts.stop().await;

    // Without braid's client certificate the branch refuses the handshake: the saga waits.
    let mut config = test_config(&fresh_dsn(Backend::Sqlite));
    config.tls.branch_ca = Some(branches.write("branch-ca.pem", &branches.ca_pem()));
    let ts = TestServer::start_with(config).await;
    let g = gid("grpcs-no-client-cert");
    ts.submit_ok(&json!({
        "gid": g,
        "trans_type": "saga",
        "protocol": "grpc",
        "steps": [{"action": busi.tls_url("TransOut")}],
        "payloads": [""],
    }))
    .await;
    ts.wait_pass(&g).await;
    assert_eq!(ts.status(&g).await, "submitted");
    assert!(busi.methods_of(&g).is_empty());
    ts.stop().await;
}

/// MySQL DSNs with TLS settings are understood (this build has TLS; the error of an old build was "TLS
/// support not compiled in"). Against a server without TLS, `ssl-mode=REQUIRED` is refused for that reason
/// and `PREFERRED` falls back to plain; against one with TLS, `REQUIRED` connects encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_dsns_with_tls_settings_are_understood() {
    sqlx::any::install_default_drivers();
    let Ok(pool) = sqlx::AnyPool::connect(&format!("{}/", mysql_base())).await else {
        eprintln!("no MySQL at {}: skipped", mysql_base());
        return;
    };
    let have_ssl: Option<(String, String)> = sqlx::query_as("SHOW VARIABLES LIKE 'have_ssl'")
        .fetch_optional(&pool)
        .await
        .unwrap();
    pool.close().await;
    let server_tls = have_ssl.is_some_and(|(_, v)| v == "YES");

    let preferred = format!("{}?ssl-mode=PREFERRED", fresh_dsn(Backend::Mysql));
    let store = braid::store::open(&preferred).await.unwrap();
    drop(store);
    support::drop_database(preferred.split('?').next().unwrap()).await;

    let required = format!("{}?ssl-mode=REQUIRED", fresh_dsn(Backend::Mysql));
    match braid::store::open(&required).await {
        Ok(store) => {
            assert!(server_tls, "REQUIRED connected to a server without TLS");
            drop(store);
        }
        Err(e) => {
            let e = e.to_string();
            assert!(!e.contains("not compiled in"), "{e}");
            assert!(
                !server_tls,
                "REQUIRED failed against a server with TLS: {e}"
            );
            eprintln!("this MariaDB has no TLS (have_ssl != YES); REQUIRED refused: {e}");
        }
    }
    support::drop_database(required.split('?').next().unwrap()).await;
}

/// A private MariaDB with TLS on, for the store tests: started from the distribution's `mariadbd` on a
/// scratch data directory and a free port, stopped (by its pid) when dropped.
struct TlsMariaDb {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl TlsMariaDb {
    /// `None` when this machine has no MariaDB server binaries.
    async fn start(pki: &Pki, server: &Leaf) -> Option<Self> {
        let install = ["mariadb-install-db", "/usr/bin/mariadb-install-db"]
            .into_iter()
            .find(|p| std::process::Command::new(p).arg("--help").output().is_ok())?;
        let mariadbd = ["mariadbd", "/usr/sbin/mariadbd"].into_iter().find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok()
        })?;
        let dir = pki.dir.join("mariadb");
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, cert, key) = (
            pki.write("db-ca.pem", &pki.ca_pem()),
            pki.write("db-cert.pem", &server.cert),
            pki.write("db-key.pem", &server.key),
        );
        let out = std::process::Command::new(install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = support::process::free_port();
        let child = std::process::Command::new(mariadbd)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--port={port}"))
            .args(["--user=root", "--bind-address=127.0.0.1", "--skip-log-bin"])
            .arg(format!("--ssl-ca={}", ca.display()))
            .arg(format!("--ssl-cert={}", cert.display()))
            .arg(format!("--ssl-key={}", key.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let db = Self { child, port, dir };
        // Root without a password over TCP, then a user that must use TLS.
        sqlx::any::install_default_drivers();
        let admin = format!("mysql://root@127.0.0.1:{port}/?ssl-mode=DISABLED");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let pool = loop {
            match sqlx::AnyPool::connect(&admin).await {
                Ok(pool) => break pool,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "private MariaDB: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        for sql in [
            "CREATE USER 'braid'@'%' IDENTIFIED BY 'pw' REQUIRE SSL",
            "GRANT ALL ON *.* TO 'braid'@'%'",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        pool.close().await;
        Some(db)
    }
}

impl Drop for TlsMariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A MariaDB that accepts its user over TLS only: braid runs on it with `--store-ca` (verifying the server's
/// certificate and name), and refuses a server whose certificate another CA signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_connection_is_encrypted_and_verified_with_the_store_ca() {
    let pki = Pki::new("store");
    let Some(db) = TlsMariaDb::start(&pki, &pki.leaf("localhost", 1, false)).await else {
        eprintln!("no mariadbd / mariadb-install-db on this machine: skipped");
        return;
    };
    let dsn = format!("mysql://braid:pw@localhost:{}/braid_tls", db.port);
    let ca = pki.write("store-ca.pem", &pki.ca_pem());

    // Without TLS the user is refused: whatever works below went encrypted.
    let plain = braid::store::open(&format!("{dsn}?ssl-mode=DISABLED")).await;
    assert!(plain.is_err(), "REQUIRE SSL is in force");

    let mut config = test_config(&dsn);
    config.tls.store_ca = Some(ca);
    assert!(
        config
            .store_dsn()
            .unwrap()
            .contains("ssl-mode=VERIFY_IDENTITY")
    );
    let ts = TestServer::start_with(config.clone()).await;
    let g = gid("store-tls");
    ts.submit_ok(
        &json!({"gid": g, "trans_type": "saga", "steps": [{"action": ""}], "payloads": [""]}),
    )
    .await;
    assert_eq!(ts.status(&g).await, "succeed");
    ts.server.stop().await;

    // The session braid's DSN opens is encrypted.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&config.store_dsn().unwrap())
        .await
        .unwrap();
    let (_, cipher): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!cipher.is_empty(), "the session is encrypted");
    pool.close().await;

    // Another CA: the server is not trusted.
    let other = Pki::new("store-other");
    config.tls.store_ca = Some(other.write("store-ca.pem", &other.ca_pem()));
    let err = braid::store::open(&config.store_dsn().unwrap())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    drop(db);
}
