//! Configuration: one typed tree, loaded in layers. Precedence, highest first:
//! command-line flags > `BRAID_*` environment variables > DTM's environment names (`HTTP_PORT`,
//! `STORE_DRIVER`, ...) > the YAML file given with `--config` > built-in defaults.
//!
//! The YAML file uses the flag names as keys (`http-port: 36789`, `store: mysql://...`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::api::limit::LimitOptions;
use crate::cluster::scanner::ScannerOptions;
use crate::cluster::{ClusterOptions, LeaseBackendKind, LeaseTiming};
use crate::engine::EngineOptions;
use crate::kube::{KubeMode, KubeOptions};
use crate::listener::ListenerOptions;
use crate::store::writer::WriterOptions;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The server flags. Every flag also reads `BRAID_<NAME>` from the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// YAML configuration file (keys are the flag names, e.g. `http-port: 36789`).
    #[arg(long, short = 'c', env = "BRAID_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP API port (DTM's API, JSON-RPC, metrics, admin).
    #[arg(long, env = "BRAID_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// gRPC API port.
    #[arg(long, env = "BRAID_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// Address to listen on.
    #[arg(long, env = "BRAID_BIND")]
    pub bind: Option<String>,
    /// Store DSN: `sqlite://path/braid.db` or `mysql://user:pass@host:3306/db`.
    #[arg(long, env = "BRAID_STORE")]
    pub store: Option<String>,
    /// Base retry interval in seconds.
    #[arg(long, env = "BRAID_RETRY_INTERVAL")]
    pub retry_interval: Option<i64>,
    /// Timeout of prepared msg/tcc/xa transactions in seconds.
    #[arg(long, env = "BRAID_TIMEOUT_TO_FAIL")]
    pub timeout_to_fail: Option<i64>,
    /// Timeout of each branch call in seconds.
    #[arg(long, env = "BRAID_REQUEST_TIMEOUT")]
    pub request_timeout: Option<i64>,
    /// Seconds between recovery scans.
    #[arg(long, env = "BRAID_SCAN_INTERVAL")]
    pub scan_interval: Option<u64>,
    /// Upper bound of the retry backoff in seconds.
    #[arg(long, env = "BRAID_BACKOFF_CAP")]
    pub backoff_cap: Option<i64>,
    /// Keep finished transactions this many seconds (0: forever).
    #[arg(long, env = "BRAID_RETENTION")]
    pub retention: Option<i64>,
    /// This replica's name in the cluster, logs and claims (default: `$POD_NAME`, `$HOSTNAME` or `braid`).
    /// Every replica needs its own.
    #[arg(long, env = "BRAID_NODE_ID")]
    pub node_id: Option<String>,
    /// Number of scan partitions P, fixed at the first start (a replica with another P refuses to start).
    #[arg(long, env = "BRAID_PARTITIONS")]
    pub partitions: Option<u16>,
    /// Lease backend: `sql` (a table in the shared store), `kubernetes` (Lease objects) or `local` (single
    /// node). Default: `kubernetes` in a pod, else `sql` for a MySQL store and `local` for SQLite.
    #[arg(long, env = "BRAID_LEASE_BACKEND", value_enum)]
    pub lease_backend: Option<LeaseBackendKind>,
    /// Seconds a lease lasts without renewal before other replicas may take it.
    #[arg(long, env = "BRAID_LEASE_DURATION")]
    pub lease_duration: Option<u64>,
    /// Seconds a holder keeps failing to renew before it stops scanning (less than the lease duration).
    #[arg(long, env = "BRAID_LEASE_RENEW_DEADLINE")]
    pub lease_renew_deadline: Option<u64>,
    /// Seconds between lease renewals and acquisition attempts.
    #[arg(long, env = "BRAID_LEASE_RETRY_PERIOD")]
    pub lease_retry_period: Option<u64>,
    /// Kubernetes lease backend: namespace of the Lease objects (default: `$POD_NAMESPACE`, else the
    /// client configuration's namespace).
    #[arg(long, env = "BRAID_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Kubernetes lease backend: prefix of the Lease object names (one prefix per installation).
    #[arg(long, env = "BRAID_LEASE_PREFIX")]
    pub lease_prefix: Option<String>,
    /// POST an alert JSON here when a branch keeps failing (DTM's AlertWebHook).
    #[arg(long, env = "BRAID_ALERT_WEBHOOK")]
    pub alert_webhook: Option<String>,
    /// Alert from this many consecutive failures of a transaction on.
    #[arg(long, env = "BRAID_ALERT_RETRY_LIMIT")]
    pub alert_retry_limit: Option<i64>,
    /// Log filter: a level (`info`) or a `RUST_LOG`-style directive list.
    #[arg(long, env = "BRAID_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format.
    #[arg(long, env = "BRAID_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Kubernetes integration (TransactionPolicy watcher, EndpointSlice discovery): `auto` turns it on
    /// inside a pod (`KUBERNETES_SERVICE_HOST` set).
    #[arg(long, env = "BRAID_KUBERNETES", value_enum)]
    pub kubernetes: Option<KubeMode>,
    /// Namespace whose TransactionPolicies and EndpointSlices are watched (default: `POD_NAMESPACE`).
    #[arg(long, env = "BRAID_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// Group commit: most batches committing at once (default: 2 on MySQL, 1 on SQLite).
    #[arg(long, env = "BRAID_WRITER_PIPELINE")]
    pub writer_pipeline: Option<usize>,
    /// Group commit: most writes in one database transaction.
    #[arg(long, env = "BRAID_WRITER_MAX_BATCH")]
    pub writer_max_batch: Option<usize>,
    /// Group commit: milliseconds to wait for more writes after the first one (0: take what is queued).
    #[arg(long, env = "BRAID_WRITER_MAX_WAIT_MS")]
    pub writer_max_wait_ms: Option<u64>,
    /// Group commit: most estimated bytes in one database transaction; a single write above it is refused
    /// with 413 (default: the store's max_allowed_packet less a margin; 64Mi on SQLite).
    #[arg(long, env = "BRAID_WRITER_MAX_BATCH_BYTES")]
    pub writer_max_batch_bytes: Option<ByteSize>,
    /// Most request body bytes held by requests in progress (HTTP, JSON-RPC and gRPC together); beyond
    /// it requests get 503 with Retry-After. A number of bytes, or with a unit: `64Mi`, `1Gi`.
    #[arg(long, env = "BRAID_MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<ByteSize>,
    /// Most requests in progress at once (all APIs together); beyond it requests get 503 with Retry-After.
    /// `/api/ping`, `/api/ready` and `/api/metrics` are not counted.
    #[arg(long, env = "BRAID_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Most open client connections (HTTP and gRPC listeners together); further ones wait to be accepted.
    #[arg(long, env = "BRAID_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a request's headers; also how long an HTTP/1 connection may idle
    /// between requests.
    #[arg(long, env = "BRAID_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<u64>,
    /// Seconds a connection with no request in progress and no traffic stays open (HTTP/2 and gRPC
    /// included).
    #[arg(long, env = "BRAID_IDLE_TIMEOUT")]
    pub idle_timeout: Option<u64>,
}

/// A byte count: a plain number, or a number with a unit as in Kubernetes quantities: `Ki`, `Mi`, `Gi`
/// (powers of 1024) or `k`, `M`, `G` (powers of 1000). `256Mi` is 268435456.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let factor: u64 = match unit {
            "" => 1,
            "k" | "K" => 1000,
            "M" => 1000 * 1000,
            "G" => 1000 * 1000 * 1000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            other => {
                return Err(format!(
                    "'{s}': unknown unit '{other}' (use a number of bytes, or Ki, Mi, Gi, k, M, G)"
                ));
            }
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .map(Self)
            .ok_or_else(|| format!("'{s}' is not a byte count (e.g. 1048576 or 64Mi)"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Self(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The YAML file: the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    http_port: Option<u16>,
    grpc_port: Option<u16>,
    bind: Option<String>,
    store: Option<String>,
    retry_interval: Option<i64>,
    timeout_to_fail: Option<i64>,
    request_timeout: Option<i64>,
    scan_interval: Option<u64>,
    backoff_cap: Option<i64>,
    retention: Option<i64>,
    node_id: Option<String>,
    partitions: Option<u16>,
    lease_backend: Option<LeaseBackendKind>,
    lease_duration: Option<u64>,
    lease_renew_deadline: Option<u64>,
    lease_retry_period: Option<u64>,
    lease_namespace: Option<String>,
    lease_prefix: Option<String>,
    alert_webhook: Option<String>,
    alert_retry_limit: Option<i64>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    kubernetes: Option<KubeMode>,
    kube_namespace: Option<String>,
    writer_pipeline: Option<usize>,
    writer_max_batch: Option<usize>,
    writer_max_wait_ms: Option<u64>,
    writer_max_batch_bytes: Option<ByteSize>,
    max_inflight_bytes: Option<ByteSize>,
    max_concurrent_requests: Option<usize>,
    max_connections: Option<usize>,
    header_read_timeout: Option<u64>,
    idle_timeout: Option<u64>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// HTTP port.
    pub http_port: u16,
    /// gRPC port.
    pub grpc_port: u16,
    /// Listen address.
    pub bind: String,
    /// Store DSN.
    pub store: String,
    /// Base retry interval (s).
    pub retry_interval: i64,
    /// Prepared timeout (s).
    pub timeout_to_fail: i64,
    /// Branch call timeout (s).
    pub request_timeout: i64,
    /// Scan interval (s).
    pub scan_interval: u64,
    /// Backoff cap (s).
    pub backoff_cap: i64,
    /// Retention of finished transactions (s, 0 = forever).
    pub retention: i64,
    /// Replica name.
    pub node_id: String,
    /// Partition count P.
    pub partitions: u16,
    /// Lease backend (resolved: flag, env, file, or detected from the environment and the store).
    pub lease_backend: LeaseBackendKind,
    /// Lease duration (s).
    pub lease_duration: u64,
    /// Lease renew deadline (s).
    pub lease_renew_deadline: u64,
    /// Lease retry period (s).
    pub lease_retry_period: u64,
    /// Namespace of Kubernetes Lease objects.
    pub lease_namespace: Option<String>,
    /// Prefix of Kubernetes Lease object names.
    pub lease_prefix: String,
    /// Alert webhook URL.
    pub alert_webhook: Option<String>,
    /// Alert threshold.
    pub alert_retry_limit: i64,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Kubernetes integration.
    pub kube: KubeOptions,
    /// Batches the group-commit writer commits at once (`None`: the store's default).
    pub writer_pipeline: Option<usize>,
    /// Most writes per group commit.
    pub writer_max_batch: usize,
    /// Wait for more writes after the first of a batch, in ms.
    pub writer_max_wait_ms: u64,
    /// Most estimated bytes per group commit (`None`: derived from the store's packet limit).
    pub writer_max_batch_bytes: Option<u64>,
    /// Most request body bytes held by requests in progress.
    pub max_inflight_bytes: u64,
    /// Most requests in progress.
    pub max_concurrent_requests: usize,
    /// Most open client connections.
    pub max_connections: usize,
    /// Header read timeout (s).
    pub header_read_timeout: u64,
    /// Idle connection timeout (s).
    pub idle_timeout: u64,
}

/// Default of `--max-inflight-bytes`.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 32 * 1024 * 1024;
/// Default of `--max-concurrent-requests`.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The embedded default store.
pub const DEFAULT_STORE: &str = "sqlite://braid-data/braid.db";

impl Default for Config {
    fn default() -> Self {
        Self {
            http_port: 36789,
            grpc_port: 36790,
            bind: "0.0.0.0".to_owned(),
            store: DEFAULT_STORE.to_owned(),
            retry_interval: 10,
            timeout_to_fail: 35,
            request_timeout: 3,
            scan_interval: 1,
            backoff_cap: 3600,
            retention: 7 * 24 * 3600,
            node_id: default_node_id(),
            partitions: 64,
            lease_backend: LeaseBackendKind::Local,
            lease_duration: 15,
            lease_renew_deadline: 10,
            lease_retry_period: 2,
            lease_namespace: None,
            lease_prefix: "braid".to_owned(),
            alert_webhook: None,
            alert_retry_limit: 3,
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            kube: KubeOptions::default(),
            writer_pipeline: None,
            writer_max_batch: WriterOptions::default().max_batch,
            writer_max_wait_ms: 0,
            writer_max_batch_bytes: None,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: 10,
            idle_timeout: 60,
        }
    }
}

fn default_node_id() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "braid".to_owned())
}

/// A configuration problem, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// DTM's environment variables (spec §11), read below braid's own.
#[derive(Debug, Default)]
struct DtmEnv {
    http_port: Option<u16>,
    grpc_port: Option<u16>,
    store: Option<String>,
    retry_interval: Option<i64>,
    timeout_to_fail: Option<i64>,
    request_timeout: Option<i64>,
    scan_interval: Option<u64>,
    log_level: Option<String>,
    alert_webhook: Option<String>,
    alert_retry_limit: Option<i64>,
}

fn env_parse<T: std::str::FromStr>(
    get: &dyn Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<T>, ConfigError> {
    match get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ConfigError(format!("environment variable {name}='{v}' is not valid"))),
    }
}

impl DtmEnv {
    fn read(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let store = match get("STORE_DRIVER").filter(|d| !d.is_empty()).as_deref() {
            None | Some("boltdb") => None,
            Some("mysql") => {
                let host = get("STORE_HOST").unwrap_or_else(|| "127.0.0.1".to_owned());
                let port = get("STORE_PORT").unwrap_or_else(|| "3306".to_owned());
                let user = get("STORE_USER").unwrap_or_else(|| "root".to_owned());
                let password = get("STORE_PASSWORD").unwrap_or_default();
                let db = get("STORE_DB")
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "dtm".to_owned());
                let auth = if password.is_empty() {
                    user
                } else {
                    format!("{user}:{password}")
                };
                Some(format!("mysql://{auth}@{host}:{port}/{db}"))
            }
            Some(other) => {
                return Err(ConfigError(format!(
                    "STORE_DRIVER='{other}' is not supported by braid yet (use mysql, or boltdb for the embedded store)"
                )));
            }
        };
        Ok(Self {
            http_port: env_parse(get, "HTTP_PORT")?,
            grpc_port: env_parse(get, "GRPC_PORT")?,
            store,
            retry_interval: env_parse(get, "RETRY_INTERVAL")?,
            timeout_to_fail: env_parse(get, "TIMEOUT_TO_FAIL")?,
            request_timeout: env_parse(get, "REQUEST_TIMEOUT")?,
            scan_interval: env_parse(get, "TRANS_CRON_INTERVAL")?,
            log_level: get("LOG_LEVEL").filter(|v| !v.is_empty()),
            alert_webhook: get("ALERT_WEB_HOOK").filter(|v| !v.is_empty()),
            alert_retry_limit: env_parse(get, "ALERT_RETRY_LIMIT")?,
        })
    }
}

impl Config {
    /// Resolves the configuration from flags (with their `BRAID_*` env), the process environment and the file.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        Self::load_with(args, &|k| std::env::var(k).ok())
    }

    /// [`Config::load`] with an explicit environment (for tests).
    pub fn load_with(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("reading config file {}: {e}", path.display()))
                })?;
                serde_saphyr::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let dtm = DtmEnv::read(env)?;
        let d = Config::default();
        let store = args
            .store
            .clone()
            .or(dtm.store)
            .or(file.store)
            .unwrap_or(d.store);
        let lease_backend = args
            .lease_backend
            .or(file.lease_backend)
            .unwrap_or_else(|| LeaseBackendKind::detect(&store, env));
        let cfg = Config {
            http_port: args
                .http_port
                .or(dtm.http_port)
                .or(file.http_port)
                .unwrap_or(d.http_port),
            grpc_port: args
                .grpc_port
                .or(dtm.grpc_port)
                .or(file.grpc_port)
                .unwrap_or(d.grpc_port),
            bind: args.bind.clone().or(file.bind).unwrap_or(d.bind),
            store,
            retry_interval: args
                .retry_interval
                .or(dtm.retry_interval)
                .or(file.retry_interval)
                .unwrap_or(d.retry_interval),
            timeout_to_fail: args
                .timeout_to_fail
                .or(dtm.timeout_to_fail)
                .or(file.timeout_to_fail)
                .unwrap_or(d.timeout_to_fail),
            request_timeout: args
                .request_timeout
                .or(dtm.request_timeout)
                .or(file.request_timeout)
                .unwrap_or(d.request_timeout),
            scan_interval: args
                .scan_interval
                .or(dtm.scan_interval)
                .or(file.scan_interval)
                .unwrap_or(d.scan_interval),
            backoff_cap: args
                .backoff_cap
                .or(file.backoff_cap)
                .unwrap_or(d.backoff_cap),
            retention: args.retention.or(file.retention).unwrap_or(d.retention),
            node_id: args.node_id.clone().or(file.node_id).unwrap_or(d.node_id),
            partitions: args.partitions.or(file.partitions).unwrap_or(d.partitions),
            lease_backend,
            lease_duration: args
                .lease_duration
                .or(file.lease_duration)
                .unwrap_or(d.lease_duration),
            lease_renew_deadline: args
                .lease_renew_deadline
                .or(file.lease_renew_deadline)
                .unwrap_or(d.lease_renew_deadline),
            lease_retry_period: args
                .lease_retry_period
                .or(file.lease_retry_period)
                .unwrap_or(d.lease_retry_period),
            lease_namespace: args
                .lease_namespace
                .clone()
                .or(file.lease_namespace)
                .or_else(|| env("POD_NAMESPACE").filter(|n| !n.is_empty())),
            lease_prefix: args
                .lease_prefix
                .clone()
                .or(file.lease_prefix)
                .unwrap_or(d.lease_prefix),
            alert_webhook: args
                .alert_webhook
                .clone()
                .or(dtm.alert_webhook)
                .or(file.alert_webhook),
            alert_retry_limit: args
                .alert_retry_limit
                .or(dtm.alert_retry_limit)
                .or(file.alert_retry_limit)
                .unwrap_or(d.alert_retry_limit),
            log_level: args
                .log_level
                .clone()
                .or(dtm.log_level)
                .or(file.log_level)
                .unwrap_or(d.log_level),
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            kube: KubeOptions {
                mode: args.kubernetes.or(file.kubernetes).unwrap_or(d.kube.mode),
                namespace: args.kube_namespace.clone().or(file.kube_namespace),
            },
            writer_pipeline: args.writer_pipeline.or(file.writer_pipeline),
            writer_max_batch: args
                .writer_max_batch
                .or(file.writer_max_batch)
                .unwrap_or(d.writer_max_batch),
            writer_max_wait_ms: args
                .writer_max_wait_ms
                .or(file.writer_max_wait_ms)
                .unwrap_or(d.writer_max_wait_ms),
            writer_max_batch_bytes: args
                .writer_max_batch_bytes
                .or(file.writer_max_batch_bytes)
                .map(|b| b.0),
            max_inflight_bytes: args
                .max_inflight_bytes
                .or(file.max_inflight_bytes)
                .map_or(d.max_inflight_bytes, |b| b.0),
            max_concurrent_requests: args
                .max_concurrent_requests
                .or(file.max_concurrent_requests)
                .unwrap_or(d.max_concurrent_requests),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            header_read_timeout: args
                .header_read_timeout
                .or(file.header_read_timeout)
                .unwrap_or(d.header_read_timeout),
            idle_timeout: args
                .idle_timeout
                .or(file.idle_timeout)
                .unwrap_or(d.idle_timeout),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges; every message names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("retry-interval", self.retry_interval),
            ("timeout-to-fail", self.timeout_to_fail),
            ("request-timeout", self.request_timeout),
            ("backoff-cap", self.backoff_cap),
        ];
        for (name, v) in positive {
            if v < 1 {
                return Err(ConfigError(format!(
                    "{name} must be at least 1 second, got {v}"
                )));
            }
        }
        if self.scan_interval < 1 {
            return Err(ConfigError(
                "scan-interval must be at least 1 second".to_owned(),
            ));
        }
        if self.backoff_cap < self.retry_interval {
            return Err(ConfigError(format!(
                "backoff-cap ({}) must not be below retry-interval ({})",
                self.backoff_cap, self.retry_interval
            )));
        }
        if self.retention < 0 {
            return Err(ConfigError(
                "retention must be 0 (keep forever) or a number of seconds".to_owned(),
            ));
        }
        if self.store.trim().is_empty() {
            return Err(ConfigError("store must not be empty".to_owned()));
        }
        if self.node_id.trim().is_empty() {
            return Err(ConfigError("node-id must not be empty".to_owned()));
        }
        if !(1..=4096).contains(&self.partitions) {
            return Err(ConfigError(format!(
                "partitions must be between 1 and 4096, got {}",
                self.partitions
            )));
        }
        self.lease_timing()
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        if self.lease_backend == LeaseBackendKind::Local && !self.store.starts_with("sqlite:") {
            tracing::warn!(
                "lease-backend local with a shared store: every replica will scan every partition it \
                 believes it owns; use sql or kubernetes when more than one replica shares the store"
            );
        }
        if self.writer_max_batch < 1 || self.writer_pipeline == Some(0) {
            return Err(ConfigError(
                "writer-max-batch and writer-pipeline must be at least 1".to_owned(),
            ));
        }
        self.validate_limits()
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let body = crate::api::MAX_BODY_BYTES as u64;
        if self.max_inflight_bytes < body {
            return Err(ConfigError(format!(
                "max-inflight-bytes must be at least the largest request body ({body} bytes), got {}",
                self.max_inflight_bytes
            )));
        }
        for (name, v) in [
            (
                "max-concurrent-requests",
                self.max_concurrent_requests as u64,
            ),
            ("max-connections", self.max_connections as u64),
            ("header-read-timeout", self.header_read_timeout),
            ("idle-timeout", self.idle_timeout),
            (
                "writer-max-batch-bytes",
                self.writer_max_batch_bytes.unwrap_or(1),
            ),
        ] {
            if v < 1 {
                return Err(ConfigError(format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }

    /// Lease timing from the three lease settings.
    pub fn lease_timing(&self) -> LeaseTiming {
        LeaseTiming {
            lease_duration: Duration::from_secs(self.lease_duration),
            renew_deadline: Duration::from_secs(self.lease_renew_deadline),
            retry_period: Duration::from_secs(self.lease_retry_period),
        }
    }

    /// The cluster's part.
    pub fn cluster_options(&self) -> ClusterOptions {
        ClusterOptions {
            node_id: self.node_id.clone(),
            partitions: self.partitions,
            backend: self.lease_backend,
            timing: self.lease_timing(),
            kube_namespace: self.lease_namespace.clone(),
            kube_lease_prefix: self.lease_prefix.clone(),
        }
    }

    /// The engine's part.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            retry_interval: self.retry_interval,
            timeout_to_fail: self.timeout_to_fail,
            request_timeout: self.request_timeout,
            backoff_cap: self.backoff_cap,
            partitions: self.partitions,
            alert_webhook: self.alert_webhook.clone(),
            alert_retry_limit: self.alert_retry_limit,
            node_id: self.node_id.clone(),
        }
    }

    /// The group-commit writer's part, for a store of `kind` ([`crate::store::StoreBase::kind`]) whose largest
    /// statement is `max_packet` bytes ([`crate::store::StoreBase::max_packet_bytes`]).
    pub fn writer_options(&self, kind: &str, max_packet: Option<u64>) -> WriterOptions {
        let defaults = WriterOptions::for_store(kind);
        WriterOptions {
            max_batch: self.writer_max_batch,
            max_wait: Duration::from_millis(self.writer_max_wait_ms),
            pipeline: self.writer_pipeline.unwrap_or(defaults.pipeline),
            max_batch_bytes: self
                .writer_max_batch_bytes
                .unwrap_or_else(|| WriterOptions::batch_bytes_for(max_packet)),
            ..defaults
        }
    }

    /// The API load limits.
    pub fn limit_options(&self) -> LimitOptions {
        LimitOptions {
            max_inflight_bytes: self.max_inflight_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
            max_body_bytes: crate::api::MAX_BODY_BYTES as u64,
        }
    }

    /// The listeners' connection limits.
    pub fn listener_options(&self) -> ListenerOptions {
        ListenerOptions {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
        }
    }

    /// The scanner's part.
    pub fn scanner_options(&self) -> ScannerOptions {
        ScannerOptions {
            interval: Duration::from_secs(self.scan_interval),
            lease_secs: self.retry_interval,
            node_id: self.node_id.clone(),
            retention_secs: self.retention,
            ..ScannerOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let cfg = Config::load_with(&ServeArgs::default(), &env(&[])).unwrap();
        assert_eq!((cfg.http_port, cfg.grpc_port), (36789, 36790));
        assert_eq!(cfg.store, DEFAULT_STORE);
        assert_eq!(
            (cfg.retry_interval, cfg.timeout_to_fail, cfg.request_timeout),
            (10, 35, 3)
        );
        assert_eq!((cfg.scan_interval, cfg.backoff_cap), (1, 3600));
        assert_eq!(cfg.kube.mode, KubeMode::Auto);
        assert!(!cfg.kube.enabled(&env(&[])), "auto is off outside a pod");
        assert!(
            cfg.kube
                .enabled(&env(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]))
        );
    }

    #[test]
    fn flags_beat_dtm_env_which_beats_the_file() {
        let dir = std::env::temp_dir().join(format!("braid-cfg-{}", crate::model::short_uuid()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("braid.yaml");
        std::fs::write(
            &file,
            "http-port: 1111\ngrpc-port: 2222\nretry-interval: 7\nbackoff-cap: 60\nkubernetes: off\nkube-namespace: shop\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            http_port: Some(3333),
            ..Default::default()
        };
        let cfg = Config::load_with(
            &args,
            &env(&[
                ("GRPC_PORT", "4444"),
                ("STORE_DRIVER", "mysql"),
                ("STORE_HOST", "db"),
                ("STORE_PASSWORD", "pw"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.http_port, 3333, "flag wins");
        assert_eq!(cfg.grpc_port, 4444, "DTM env beats file");
        assert_eq!(cfg.retry_interval, 7, "file beats default");
        assert_eq!(cfg.backoff_cap, 60);
        assert_eq!(cfg.store, "mysql://root:pw@db:3306/dtm");
        assert_eq!(cfg.kube.mode, KubeMode::Off);
        assert_eq!(cfg.kube.namespace.as_deref(), Some("shop"));
        assert!(
            !cfg.kube
                .enabled(&env(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]))
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let args = ServeArgs {
            retry_interval: Some(0),
            ..Default::default()
        };
        let err = Config::load_with(&args, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("retry-interval"), "{err}");
        let err = Config::load_with(&ServeArgs::default(), &env(&[("HTTP_PORT", "abc")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("HTTP_PORT"), "{err}");
        let err = Config::load_with(&ServeArgs::default(), &env(&[("STORE_DRIVER", "redis")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis"), "{err}");
        let args = ServeArgs {
            retry_interval: Some(1),
            timeout_to_fail: Some(1),
            request_timeout: Some(1),
            ..Default::default()
        };
        assert!(
            Config::load_with(&args, &env(&[])).is_ok(),
            "1-second values are allowed"
        );
    }

    #[test]
    fn cluster_settings_layer_and_detect_the_backend() {
        let cfg = Config::load_with(&ServeArgs::default(), &env(&[])).unwrap();
        assert_eq!(cfg.partitions, 64);
        assert_eq!(cfg.lease_backend, LeaseBackendKind::Local, "SQLite store");
        assert_eq!(
            (
                cfg.lease_duration,
                cfg.lease_renew_deadline,
                cfg.lease_retry_period
            ),
            (15, 10, 2),
            "client-go's defaults"
        );
        let mysql = ServeArgs {
            store: Some("mysql://root@db:3306/braid".into()),
            ..Default::default()
        };
        let cfg = Config::load_with(&mysql, &env(&[])).unwrap();
        assert_eq!(cfg.lease_backend, LeaseBackendKind::Sql);
        let cfg = Config::load_with(
            &mysql,
            &env(&[
                ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
                ("POD_NAMESPACE", "prod"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.lease_backend, LeaseBackendKind::Kubernetes);
        assert_eq!(cfg.lease_namespace.as_deref(), Some("prod"));
        let small = ServeArgs {
            lease_backend: Some(LeaseBackendKind::Sql),
            lease_duration: Some(4),
            lease_renew_deadline: Some(3),
            lease_retry_period: Some(1),
            partitions: Some(16),
            ..Default::default()
        };
        let cfg = Config::load_with(&small, &env(&[("KUBERNETES_SERVICE_HOST", "x")])).unwrap();
        assert_eq!(cfg.lease_backend, LeaseBackendKind::Sql, "the flag wins");
        assert_eq!(cfg.cluster_options().partitions, 16);
        assert_eq!(cfg.engine_options().partitions, 16);
        let bad = ServeArgs {
            lease_renew_deadline: Some(20),
            ..Default::default()
        };
        let err = Config::load_with(&bad, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("lease-duration"), "{err}");
        let bad = ServeArgs {
            partitions: Some(0),
            ..Default::default()
        };
        let err = Config::load_with(&bad, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("partitions"), "{err}");
    }

    #[test]
    fn load_limits_layer_and_take_units() {
        let cfg = Config::load_with(&ServeArgs::default(), &env(&[])).unwrap();
        assert_eq!(
            (
                cfg.max_inflight_bytes,
                cfg.max_concurrent_requests,
                cfg.max_connections
            ),
            (32 * 1024 * 1024, 1024, 4096)
        );
        assert_eq!(
            cfg.writer_options("mysql", Some(16 << 20)).max_batch_bytes,
            14 << 20
        );
        assert_eq!("256Mi".parse(), Ok(ByteSize(256 << 20)));
        assert_eq!("2G".parse(), Ok(ByteSize(2_000_000_000)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert!("12MB".parse::<ByteSize>().unwrap_err().contains("unit"));
        assert!("Mi".parse::<ByteSize>().is_err());

        let dir = std::env::temp_dir().join(format!("braid-cfg-{}", crate::model::short_uuid()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("braid.yaml");
        std::fs::write(
            &file,
            "max-inflight-bytes: 64Mi\nmax-connections: 100\nwriter-max-batch-bytes: 1048576\nidle-timeout: 5\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            max_connections: Some(200),
            ..Default::default()
        };
        let cfg = Config::load_with(&args, &env(&[])).unwrap();
        assert_eq!(cfg.max_inflight_bytes, 64 << 20);
        assert_eq!(cfg.max_connections, 200, "the flag wins");
        assert_eq!(cfg.writer_max_batch_bytes, Some(1 << 20));
        assert_eq!(
            cfg.writer_options("mysql", Some(16 << 20)).max_batch_bytes,
            1 << 20,
            "an explicit limit beats the derived one"
        );
        assert_eq!(cfg.listener_options().idle_timeout, Duration::from_secs(5));

        let small = ServeArgs {
            max_inflight_bytes: Some(ByteSize(1024)),
            ..Default::default()
        };
        let err = Config::load_with(&small, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max-inflight-bytes"), "{err}");
        let zero = ServeArgs {
            max_concurrent_requests: Some(0),
            ..Default::default()
        };
        let err = Config::load_with(&zero, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("max-concurrent-requests"), "{err}");
    }

    /// Every setting as (flag = YAML key, `BRAID_*` env, a value, another value, what the other value
    /// reads as). Both values differ from the defaults, and each column is a valid configuration.
    type Setting = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );
    const SETTINGS: &[Setting] = &[
        ("http-port", "BRAID_HTTP_PORT", "1001", "1101", "1101"),
        ("grpc-port", "BRAID_GRPC_PORT", "1002", "1102", "1102"),
        ("bind", "BRAID_BIND", "127.0.0.2", "127.0.0.3", "127.0.0.3"),
        (
            "store",
            "BRAID_STORE",
            "mysql://a@h:3306/x",
            "mysql://b@h:3306/y",
            "mysql://b@h:3306/y",
        ),
        ("retry-interval", "BRAID_RETRY_INTERVAL", "11", "12", "12"),
        ("timeout-to-fail", "BRAID_TIMEOUT_TO_FAIL", "36", "37", "37"),
        ("request-timeout", "BRAID_REQUEST_TIMEOUT", "4", "5", "5"),
        ("scan-interval", "BRAID_SCAN_INTERVAL", "2", "3", "3"),
        ("backoff-cap", "BRAID_BACKOFF_CAP", "3000", "3001", "3001"),
        ("retention", "BRAID_RETENTION", "100", "0", "0"),
        ("node-id", "BRAID_NODE_ID", "n1", "n2", "n2"),
        ("partitions", "BRAID_PARTITIONS", "32", "16", "16"),
        (
            "lease-backend",
            "BRAID_LEASE_BACKEND",
            "sql",
            "kubernetes",
            "kubernetes",
        ),
        ("lease-duration", "BRAID_LEASE_DURATION", "20", "30", "30"),
        (
            "lease-renew-deadline",
            "BRAID_LEASE_RENEW_DEADLINE",
            "12",
            "13",
            "13",
        ),
        (
            "lease-retry-period",
            "BRAID_LEASE_RETRY_PERIOD",
            "3",
            "4",
            "4",
        ),
        (
            "lease-namespace",
            "BRAID_LEASE_NAMESPACE",
            "ns1",
            "ns3",
            "ns3",
        ),
        ("lease-prefix", "BRAID_LEASE_PREFIX", "p1", "p2", "p2"),
        (
            "alert-webhook",
            "BRAID_ALERT_WEBHOOK",
            "http://a/h",
            "http://b/h",
            "http://b/h",
        ),
        (
            "alert-retry-limit",
            "BRAID_ALERT_RETRY_LIMIT",
            "5",
            "6",
            "6",
        ),
        ("log-level", "BRAID_LOG_LEVEL", "debug", "warn", "warn"),
        ("log-format", "BRAID_LOG_FORMAT", "json", "json", "json"),
        ("kubernetes", "BRAID_KUBERNETES", "off", "on", "on"),
        (
            "kube-namespace",
            "BRAID_KUBE_NAMESPACE",
            "ns2",
            "ns4",
            "ns4",
        ),
        ("writer-pipeline", "BRAID_WRITER_PIPELINE", "3", "4", "4"),
        (
            "writer-max-batch",
            "BRAID_WRITER_MAX_BATCH",
            "50",
            "60",
            "60",
        ),
        (
            "writer-max-wait-ms",
            "BRAID_WRITER_MAX_WAIT_MS",
            "7",
            "8",
            "8",
        ),
        (
            "writer-max-batch-bytes",
            "BRAID_WRITER_MAX_BATCH_BYTES",
            "2097152",
            "1Mi",
            "1048576",
        ),
        (
            "max-inflight-bytes",
            "BRAID_MAX_INFLIGHT_BYTES",
            "67108864",
            "48Mi",
            "50331648",
        ),
        (
            "max-concurrent-requests",
            "BRAID_MAX_CONCURRENT_REQUESTS",
            "10",
            "11",
            "11",
        ),
        ("max-connections", "BRAID_MAX_CONNECTIONS", "20", "21", "21"),
        (
            "header-read-timeout",
            "BRAID_HEADER_READ_TIMEOUT",
            "5",
            "6",
            "6",
        ),
        ("idle-timeout", "BRAID_IDLE_TIMEOUT", "30", "31", "31"),
    ];

    /// DTM's environment names with a value, and the settings they give.
    const DTM_ENV: &[(&str, &str)] = &[
        ("HTTP_PORT", "2001"),
        ("GRPC_PORT", "2002"),
        ("RETRY_INTERVAL", "21"),
        ("TIMEOUT_TO_FAIL", "46"),
        ("REQUEST_TIMEOUT", "6"),
        ("TRANS_CRON_INTERVAL", "4"),
        ("LOG_LEVEL", "error"),
        ("ALERT_WEB_HOOK", "http://dtm/h"),
        ("ALERT_RETRY_LIMIT", "7"),
        ("STORE_DRIVER", "mysql"),
        ("STORE_HOST", "dh"),
        ("STORE_PORT", "3307"),
        ("STORE_USER", "du"),
        ("STORE_PASSWORD", "dp"),
        ("STORE_DB", "ddb"),
        ("POD_NAMESPACE", "podns"),
    ];
    const FROM_DTM_ENV: &[(&str, &str)] = &[
        ("http-port", "2001"),
        ("grpc-port", "2002"),
        ("retry-interval", "21"),
        ("timeout-to-fail", "46"),
        ("request-timeout", "6"),
        ("scan-interval", "4"),
        ("log-level", "error"),
        ("alert-webhook", "http://dtm/h"),
        ("alert-retry-limit", "7"),
        ("store", "mysql://du:dp@dh:3307/ddb"),
    ];

    /// What a loaded configuration says, keyed by flag name, in the form the flags take.
    fn observed(c: &Config) -> BTreeMap<&'static str, String> {
        fn opt<T: ToString>(v: &Option<T>) -> String {
            v.as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string)
        }
        fn name<T: ValueEnum>(v: T) -> String {
            v.to_possible_value()
                .map(|p| p.get_name().to_owned())
                .unwrap_or_default()
        }
        BTreeMap::from([
            ("http-port", c.http_port.to_string()),
            ("grpc-port", c.grpc_port.to_string()),
            ("bind", c.bind.clone()),
            ("store", c.store.clone()),
            ("retry-interval", c.retry_interval.to_string()),
            ("timeout-to-fail", c.timeout_to_fail.to_string()),
            ("request-timeout", c.request_timeout.to_string()),
            ("scan-interval", c.scan_interval.to_string()),
            ("backoff-cap", c.backoff_cap.to_string()),
            ("retention", c.retention.to_string()),
            ("node-id", c.node_id.clone()),
            ("partitions", c.partitions.to_string()),
            ("lease-backend", name(c.lease_backend)),
            ("lease-duration", c.lease_duration.to_string()),
            ("lease-renew-deadline", c.lease_renew_deadline.to_string()),
            ("lease-retry-period", c.lease_retry_period.to_string()),
            ("lease-namespace", opt(&c.lease_namespace)),
            ("lease-prefix", c.lease_prefix.clone()),
            ("alert-webhook", opt(&c.alert_webhook)),
            ("alert-retry-limit", c.alert_retry_limit.to_string()),
            ("log-level", c.log_level.clone()),
            ("log-format", name(c.log_format)),
            ("kubernetes", name(c.kube.mode)),
            ("kube-namespace", opt(&c.kube.namespace)),
            ("writer-pipeline", opt(&c.writer_pipeline)),
            ("writer-max-batch", c.writer_max_batch.to_string()),
            ("writer-max-wait-ms", c.writer_max_wait_ms.to_string()),
            ("writer-max-batch-bytes", opt(&c.writer_max_batch_bytes)),
            ("max-inflight-bytes", c.max_inflight_bytes.to_string()),
            (
                "max-concurrent-requests",
                c.max_concurrent_requests.to_string(),
            ),
            ("max-connections", c.max_connections.to_string()),
            ("header-read-timeout", c.header_read_timeout.to_string()),
            ("idle-timeout", c.idle_timeout.to_string()),
        ])
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(argv: &[&str]) -> ServeArgs {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("braid").chain(argv.iter().copied()))
            .unwrap()
            .serve
    }

    fn yaml_file(lines: impl Iterator<Item = String>) -> String {
        let dir = std::env::temp_dir().join(format!("braid-cfg-{}", crate::model::short_uuid()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("braid.yaml");
        std::fs::write(&file, lines.collect::<Vec<_>>().join("\n")).unwrap();
        file.display().to_string()
    }

    /// The contract of flags, env names and YAML keys: each one still sets its setting, and flags beat
    /// DTM's env names, which beat the file, which beats the defaults.
    #[test]
    fn every_flag_env_name_and_file_key_sets_its_setting() {
        let defaults = observed(&Config::load_with(&ServeArgs::default(), &env(&[])).unwrap());
        let column = |pick: fn(&Setting) -> &'static str| {
            SETTINGS
                .iter()
                .map(|s| (s.0, pick(s).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        let (a, b) = (column(|s| s.2), column(|s| s.4));
        assert_eq!(a.len(), defaults.len(), "every setting is listed");
        for (key, v) in &a {
            assert_ne!(&defaults[key], v, "{key}: the test value is the default");
            // log-format has only one value besides the default.
            if *key != "log-format" {
                assert_ne!(&b[key], v, "{key}: the two test values are equal");
            }
        }

        // Flags, and the BRAID_* env name of each.
        let mut argv = Vec::new();
        for (flag, _, v, _, _) in SETTINGS {
            argv.push(format!("--{flag}"));
            argv.push((*v).to_owned());
        }
        let args = parse(&argv.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(observed(&Config::load_with(&args, &env(&[])).unwrap()), a);
        let command = <Cli as clap::CommandFactory>::command();
        let envs: BTreeMap<String, String> = command
            .get_arguments()
            .filter_map(|arg| {
                let long = arg.get_long()?.to_owned();
                Some((long, arg.get_env()?.to_str()?.to_owned()))
            })
            .collect();
        let mut expected: BTreeMap<String, String> = SETTINGS
            .iter()
            .map(|s| (s.0.to_owned(), s.1.to_owned()))
            .collect();
        expected.insert("config".to_owned(), "BRAID_CONFIG".to_owned());
        assert_eq!(envs, expected);
        let short = command.get_arguments().find(|a| a.get_short() == Some('c'));
        assert_eq!(short.and_then(|a| a.get_long()), Some("config"));

        // The YAML file, given with --config and with -c.
        let file = yaml_file(SETTINGS.iter().map(|s| format!("{}: {}", s.0, s.3)));
        for flag in ["--config", "-c"] {
            let cfg = Config::load_with(&parse(&[flag, &file]), &env(&[])).unwrap();
            assert_eq!(observed(&cfg), b);
        }

        // DTM's env names, alone and over the file; POD_NAMESPACE and KUBERNETES_SERVICE_HOST give the
        // lease namespace and backend when nothing else does.
        let mut dtm = defaults.clone();
        dtm.extend(FROM_DTM_ENV.iter().map(|(k, v)| (*k, (*v).to_owned())));
        dtm.insert("lease-namespace", "podns".to_owned());
        dtm.insert("lease-backend", "kubernetes".to_owned());
        let mut pod_env = DTM_ENV.to_vec();
        pod_env.push(("KUBERNETES_SERVICE_HOST", "10.0.0.1"));
        let cfg = Config::load_with(&ServeArgs::default(), &env(&pod_env)).unwrap();
        assert_eq!(observed(&cfg), dtm);
        let mut over_file = b.clone();
        over_file.extend(FROM_DTM_ENV.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let cfg = Config::load_with(&parse(&["-c", &file]), &env(&pod_env)).unwrap();
        assert_eq!(observed(&cfg), over_file, "DTM's env beats the file");

        // Flags beat everything.
        argv.extend(["--config".to_owned(), file]);
        let args = parse(&argv.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            observed(&Config::load_with(&args, &env(&pod_env)).unwrap()),
            a
        );

        // DTM's store driver boltdb is the embedded store; empty values count as unset.
        let cfg = Config::load_with(
            &ServeArgs::default(),
            &env(&[
                ("STORE_DRIVER", "boltdb"),
                ("HTTP_PORT", ""),
                ("LOG_LEVEL", ""),
            ]),
        )
        .unwrap();
        assert_eq!(observed(&cfg), defaults);
        let cfg =
            Config::load_with(&ServeArgs::default(), &env(&[("STORE_DRIVER", "mysql")])).unwrap();
        assert_eq!(cfg.store, "mysql://root@127.0.0.1:3306/dtm");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = std::env::temp_dir().join(format!("braid-cfg-{}", crate::model::short_uuid()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("braid.yaml");
        std::fs::write(&file, "http_port: 1\n").unwrap();
        let err = Config::load_with(
            &ServeArgs {
                config: Some(file),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("http_port"), "{err}");
    }
}
