//! Wiring: builds every component from the configuration, runs them, and shuts them down in order.
//! `main.rs` and the integration tests both start servers through here.
//!
//! Start-up: open the store, check the partition count against the one recorded at the first start, open
//! the lease backend, and take this replica's first share of partitions before serving.
//!
//! Shutdown order (nothing accepted is lost): stop accepting requests and stop scanning; let running passes
//! finish (bounded by a grace period; unfinished ones are resumed by a later scan); stop the Kubernetes
//! watchers; release the leases (so other replicas take the partitions over within a retry period); flush the
//! group-commit writer so every queued write is committed and answered; close the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::Layer as _;

use crate::api::limit::Limiter;
use crate::api::{self, AppState};
use crate::cluster::keeper::{Keeper, KeeperHandle, KeeperOptions};
use crate::cluster::scanner::Scanner;
use crate::cluster::{self, Identity, StoreFencing};
use crate::config::Config;
use crate::engine::Engine;
use crate::invoke::Invoker;
use crate::kube::{KubeMode, KubeRuntime};
use crate::listener::{self, ConnectionSlots, Listener};
use crate::metrics::Metrics;
use crate::reload;
use crate::store::clock::StoreClock;
use crate::store::writer::Writer;
use crate::store::{self, DynStore, redact_dsn};

/// What to start besides the API.
#[derive(Clone)]
pub struct StartOptions {
    /// Run the background recovery scanner (tests drive [`Server::scanner`] by hand instead).
    pub scanner: bool,
    /// How long shutdown waits for running passes.
    pub grace: Duration,
    /// A Kubernetes client to use instead of the in-cluster/kubeconfig one; it turns the Kubernetes
    /// integration on unless the configuration says `off` (tests point it at a fake API server).
    pub kube_client: Option<::kube::Client>,
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("scanner", &self.scanner)
            .field("grace", &self.grace)
            .field("kube_client", &self.kube_client.is_some())
            .finish()
    }
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            scanner: true,
            grace: Duration::from_secs(10),
            kube_client: None,
        }
    }
}

/// The Kubernetes client to use, if the integration is on. `on` fails without a usable configuration;
/// `auto` then runs without the integration (with a warning).
async fn kube_client(
    config: &Config,
    opts: &StartOptions,
) -> anyhow::Result<Option<::kube::Client>> {
    if config.kube.mode == KubeMode::Off {
        return Ok(None);
    }
    if let Some(client) = &opts.kube_client {
        return Ok(Some(client.clone()));
    }
    if !config.kube_options().enabled(&|k| std::env::var(k).ok()) {
        return Ok(None);
    }
    match crate::kube::client().await {
        Ok(client) => Ok(Some(client)),
        // `auto` in a pod without a usable service account: run without the integration.
        Err(e) if config.kube.mode == KubeMode::Auto => {
            tracing::warn!(error = %e, "kubernetes integration off");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context(
            "starting the Kubernetes integration (use --kubernetes off to run without it)",
        )),
    }
}

/// A running server.
pub struct Server {
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// The engine.
    pub engine: Engine,
    /// The recovery scanner (also usable by hand: `scan_once`).
    pub scanner: Scanner,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The lease keeper's handle (ownership and the cluster view).
    pub cluster: KeeperHandle,
    /// The store clock the engine and the scanner read (tests move it forward).
    pub clock: StoreClock,
    /// Whether the listeners speak TLS.
    pub tls: bool,
    watchers: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
    keeper_cancel: CancellationToken,
    keeper: JoinHandle<()>,
    writer_cancel: CancellationToken,
    store: DynStore,
    http: JoinHandle<()>,
    grpc: JoinHandle<()>,
    scan: Option<JoinHandle<()>>,
    writer: JoinHandle<()>,
    kube: Option<KubeRuntime>,
    kube_cancel: CancellationToken,
    grace: Duration,
}

/// Opens the store, retrying every 3 s while it is unreachable (as DTM waits for its store), until `cancel`.
pub async fn open_store(dsn: &str, cancel: &CancellationToken) -> anyhow::Result<DynStore> {
    loop {
        match store::open(dsn).await {
            Ok(s) => return Ok(s),
            Err(e) if e.is_retryable() => {
                tracing::warn!(store = %redact_dsn(dsn), error = %e, "store not reachable yet; retrying in 3 s");
                tokio::select! {
                    () = cancel.cancelled() => anyhow::bail!("cancelled while waiting for the store"),
                    () = tokio::time::sleep(Duration::from_secs(3)) => {}
                }
            }
            Err(e) => return Err(e).with_context(|| format!("opening store {}", redact_dsn(dsn))),
        }
    }
}

impl Server {
    /// Starts everything the configuration describes.
    pub async fn start(config: &Config, opts: StartOptions) -> anyhow::Result<Self> {
        let cancel = CancellationToken::new();
        // Certificate and tokens files first: a bad one is a configuration error, whatever the store does.
        let server_tls = config.server_tls()?.map(Arc::new);
        let branch_tls = Arc::new(config.branch_tls()?);
        let (auth, tokens_file) = config.auth()?;
        let store = open_store(&config.store_dsn()?, &cancel).await?;
        let metrics = Arc::new(Metrics::new());
        let clock = StoreClock::from_store(&store)
            .await
            .context("reading the store clock")?;
        let writer_cancel = CancellationToken::new();
        let max_packet = store
            .max_packet_bytes()
            .await
            .context("reading the store's packet limit")?;
        let writer_opts = config.writer_options(store.kind(), max_packet);
        if let Some(packet) = max_packet
            && writer_opts.max_batch_bytes > packet
        {
            tracing::warn!(
                writer_max_batch_bytes = writer_opts.max_batch_bytes,
                max_allowed_packet = packet,
                "writer-max-batch-bytes is above the database's packet limit: large batches will fail"
            );
        }
        let (writer, writer_handle) = Writer::new(store.clone(), writer_opts, metrics.clone());
        let writer = tokio::spawn(writer.run(writer_cancel.clone()));
        let kube_cancel = CancellationToken::new();
        let kube = match kube_client(config, &opts).await? {
            Some(client) => {
                let namespace = crate::kube::namespace(&config.kube_options(), &client);
                match crate::kube::probe(&client, &namespace).await {
                    Ok(()) => {
                        tracing::info!(namespace = %namespace, "kubernetes integration on: watching TransactionPolicies and EndpointSlices");
                        Some(KubeRuntime::start(
                            client,
                            &namespace,
                            metrics.clone(),
                            &kube_cancel,
                        ))
                    }
                    // Asked for explicitly: a missing CRD or Role is a deployment error.
                    Err(e) if config.kube.mode == KubeMode::On => {
                        return Err(
                            anyhow::Error::new(e).context("starting the Kubernetes integration")
                        );
                    }
                    // `auto` in a pod without the CRD (e.g. a plain DTM-style Deployment): run without it.
                    Err(e) => {
                        tracing::warn!(error = %e, "kubernetes integration off");
                        None
                    }
                }
            }
            None => None,
        };
        let engine_options = config.engine_options();
        let mut invoker = Invoker::new(
            metrics.clone(),
            Arc::new(engine_options.branch_allow.clone()),
            &branch_tls,
        )
        .map_err(anyhow::Error::msg)?;
        if let Some(k) = &kube {
            invoker = invoker.with_discovery(k.discovery());
        }
        let engine = Engine::new(
            store.clone(),
            writer_handle,
            Arc::new(invoker),
            clock.clone(),
            engine_options,
            metrics.clone(),
        );
        if let Some(k) = &kube {
            engine.set_option_defaults(k.option_defaults());
        }
        let cluster_opts = config.cluster_options();
        let partitions = cluster::check_partition_count(&store, cluster_opts.partitions)
            .await
            .context("checking the partition count")?;
        let backend = cluster::open_backend(&cluster_opts, &store, &clock)
            .await
            .context("opening the lease backend")?;
        let identity = Identity::new(&cluster_opts.node_id);
        let (mut keeper, cluster) = Keeper::new(
            KeeperOptions {
                partitions,
                timing: cluster_opts.timing,
            },
            backend.clone(),
            Arc::new(StoreFencing::new(store.clone(), clock.clone())),
            identity.clone(),
            metrics.clone(),
        );
        // The first share before serving, so the scanner starts with it.
        keeper.step().await;
        let keeper_cancel = CancellationToken::new();
        let keeper = tokio::spawn(keeper.run(keeper_cancel.clone()));
        tracing::info!(identity = %identity, backend = backend.kind(), partitions, owned = cluster.ownership().len(), "joined the cluster");
        let scanner =
            Scanner::new(engine.clone(), config.scanner_options()).with_keeper(cluster.clone());

        let addr: SocketAddr = format!("{}:{}", config.server.bind, config.server.http_port)
            .parse()
            .with_context(|| {
                format!(
                    "invalid listen address {}:{}",
                    config.server.bind, config.server.http_port
                )
            })?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding HTTP port {addr}"))?;
        let http_addr = listener
            .local_addr()
            .context("reading the HTTP listen address")?;
        crate::model::limits::set_max_steps(config.limits.max_steps);
        let sensitive: Vec<String> = config
            .branches
            .sensitive_headers
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::to_owned)
            .collect();
        crate::api::render::set_sensitive_headers(&sensitive);
        let mut state = AppState::new(engine.clone(), metrics.clone(), cluster.clone())
            .with_auth(auth)
            .with_admin_ui(config.admin_ui());
        if let Some(k) = &kube {
            state = state.with_ready_gate(
                "the first sync of TransactionPolicies and EndpointSlices",
                k.ready_flag(),
            );
        }
        // One set of load limits and connection slots for both listeners.
        let limiter = Limiter::new(config.limit_options(), metrics.clone());
        let listener_opts = config.listener_options();
        listener::raise_fd_limit(listener_opts.max_connections);
        let slots = ConnectionSlots::new(listener_opts.max_connections);
        let app = limiter.http_layer().layer(api::router(state.clone()));
        let http = tokio::spawn(
            Listener::new(
                "http",
                slots.clone(),
                listener_opts.clone(),
                metrics.clone(),
            )
            .with_tls(server_tls.clone())
            .serve(listener, app, axum::body::Body::new, cancel.clone()),
        );
        let grpc_addr: SocketAddr = format!("{}:{}", config.server.bind, config.server.grpc_port)
            .parse()
            .with_context(|| {
                format!(
                    "invalid listen address {}:{}",
                    config.server.bind, config.server.grpc_port
                )
            })?;
        let grpc_listener = tokio::net::TcpListener::bind(grpc_addr)
            .await
            .with_context(|| format!("binding gRPC port {grpc_addr}"))?;
        let grpc_addr = grpc_listener
            .local_addr()
            .context("reading the gRPC listen address")?;
        // DTM's service, and server reflection (grpcurl without `-proto`), which only describes it.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::DTMGIMP_DESCRIPTOR_SET)
            .build_v1()
            .context("building gRPC reflection")?;
        let grpc_routes = tonic::service::Routes::new(api::grpc::service(state))
            .add_service(reflection)
            .prepare();
        let grpc_service = limiter.grpc_layer().layer(grpc_routes);
        let grpc = tokio::spawn(
            Listener::new("grpc", slots, listener_opts, metrics.clone())
                .with_tls(server_tls.clone())
                .serve(
                    grpc_listener,
                    grpc_service,
                    tonic::body::Body::new,
                    cancel.clone(),
                ),
        );
        let mut watchers = Vec::new();
        if branch_tls.has_files() {
            watchers.push(reload::watch(branch_tls, reload::INTERVAL, cancel.clone()));
        }
        if let Some(file) = tokens_file {
            watchers.push(reload::watch(
                Arc::new(file),
                reload::INTERVAL,
                cancel.clone(),
            ));
        }
        if let Some(server_tls) = &server_tls {
            watchers.push(reload::watch(
                server_tls.clone(),
                reload::INTERVAL,
                cancel.clone(),
            ));
        }
        let scan = opts
            .scanner
            .then(|| tokio::spawn(scanner.clone().run(cancel.clone())));
        tracing::info!(
            http = %http_addr,
            grpc = %grpc_addr,
            tls = server_tls.is_some(),
            mutual_tls = server_tls.as_ref().is_some_and(|t| t.is_mutual()),
            store = %redact_dsn(&config.store.dsn),
            kind = store.kind(),
            "braid started"
        );
        Ok(Self {
            http_addr,
            grpc_addr,
            tls: server_tls.is_some(),
            watchers,
            engine,
            scanner,
            metrics,
            cluster,
            clock,
            cancel,
            keeper_cancel,
            keeper,
            writer_cancel,
            store,
            http,
            grpc,
            scan,
            writer,
            kube,
            kube_cancel,
            grace: opts.grace,
        })
    }

    /// The token whose cancellation stops the server.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The HTTP base URL of the DTM API (`http://addr/api/dtmsvr`, `https://` with TLS).
    pub fn dtm_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/api/dtmsvr", self.http_addr)
    }

    /// Stops in order (see the module docs) and waits until done.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.http.await;
        let _ = self.grpc.await;
        for watcher in self.watchers {
            let _ = watcher.await;
        }
        if let Some(scan) = self.scan {
            let _ = scan.await;
        }
        self.engine.shutdown(self.grace).await;
        // Running passes may still resolve endpoints, so the watchers stop after them.
        self.kube_cancel.cancel();
        if let Some(kube) = self.kube {
            kube.stopped().await;
        }
        self.keeper_cancel.cancel();
        let _ = self.keeper.await;
        self.writer_cancel.cancel();
        let _ = self.writer.await;
        drop(self.engine);
        drop(self.scanner);
        drop(self.store);
        tracing::info!("braid stopped");
    }

    /// Runs until the cancel token fires (signal handler or a fatal task), then stops.
    pub async fn run_until_stopped(self) {
        self.cancel.cancelled().await;
        self.stop().await;
    }
}
