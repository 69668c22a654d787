//! Configuration: one typed tree, each setting defined once in the [`settings!`] table below, which gives
//! its place in the tree, its flag (the field name in kebab case, also its key in the YAML file), its
//! `BRAID_*` environment name, DTM's environment name if DTM has one, its default and its documentation.
//!
//! Precedence, highest first: command-line flags > `BRAID_*` environment variables > DTM's environment
//! names (`HTTP_PORT`, `STORE_DRIVER`, ...) > the YAML file given with `--config` > built-in defaults.
//! Durations are [`Duration`]s inside; flags, env and the file give them in seconds (milliseconds where the
//! name ends in `-ms`).
//!
//! The YAML file uses the flag names as keys (`http-port: 36789`, `store: mysql://...`).

use std::path::{Path, PathBuf};

mod dtm;
use std::time::Duration;

use clap::ValueEnum;
use serde::Deserialize;

use crate::api::admin::{AdminUi, BasePath};
use crate::api::limit::LimitOptions;
use crate::cluster::scanner::ScannerOptions;
use crate::cluster::{ClusterOptions, LeaseBackendKind, LeaseTiming};
use crate::engine::EngineOptions;
use crate::kube::{KubeMode, KubeOptions};
use crate::listener::ListenerOptions;
use crate::store::writer::WriterOptions;

/// Declares the configuration tree from one table. Each entry is
///
/// ```text
/// /// Documentation (the flag's help and the field's doc).
/// flag_name => field: Type = default, env "BRAID_FLAG_NAME" [, dtm "DTM_NAME"] [, from Input => convert];
/// ```
///
/// `flag_name` is the flag (`--flag-name`) and the YAML key (`flag-name`); `field` is the setting's name in
/// its section. Without `from`, flags, env and file give a `Type` directly; with it they give an `Input`,
/// which `convert` (an `fn(Input) -> Result<Type, String>`) turns into a `Type`. The macro generates
/// [`Config`] with one struct per section and its `Default`, [`ServeArgs`] (the flags, which is also the
/// shape of the YAML file), reading DTM's environment names, and layering.
macro_rules! settings {
    (
        $(
            $(#[doc = $sdoc:literal])*
            $section:ident: $Section:ident {
                $(
                    $(#[doc = $doc:literal])*
                    $flat:ident => $field:ident: $ty:ty = $default:expr,
                        env $env:tt
                        $(, dtm $dtm:tt)?
                        $(, from $input:ty => $convert:path)?;
                )*
            }
        )*
    ) => {
        /// The resolved configuration, one section per concern.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Config {
            $( $(#[doc = $sdoc])* pub $section: $Section, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $( $section: $Section::default(), )* }
            }
        }

        $(
            $(#[doc = $sdoc])*
            #[derive(Debug, Clone, PartialEq, Eq)]
            pub struct $Section {
                $( $(#[doc = $doc])* pub $field: $ty, )*
            }

            impl Default for $Section {
                fn default() -> Self {
                    Self { $( $field: $default, )* }
                }
            }
        )*

        /// The server flags; every flag also reads its `BRAID_*` environment variable. The YAML file has
        /// the same shape (the flag names as keys).
        #[derive(Debug, Clone, Default, clap::Args, Deserialize)]
        #[serde(rename_all = "kebab-case", deny_unknown_fields)]
        pub struct ServeArgs {
            /// YAML configuration file (keys are the flag names, e.g. `http-port: 36789`).
            #[arg(long, short = 'c', env = "BRAID_CONFIG")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $($(
                $(#[doc = $doc])*
                #[arg(long, env = $env)]
                pub $flat: Option<input_ty!($ty $(, $input)?)>,
            )*)*
        }

        impl ServeArgs {
            /// Each setting from `self`, else from `lower`.
            fn or(self, lower: Self) -> Self {
                Self {
                    config: self.config.or(lower.config),
                    $($( $flat: self.$flat.or(lower.$flat), )*)*
                }
            }

            /// The settings DTM's environment names give (the store DSN is composed by [`dtm_store`]).
            fn from_dtm_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
                #[allow(unused_mut)]
                let mut layer = Self::default();
                $($( $( layer.$flat = env_parse(get, $dtm)?; )? )*)*
                layer.store = dtm_store(get)?;
                Ok(layer)
            }
        }

        impl Config {
            /// The configuration from one merged layer: each setting as given, else its default.
            fn resolve(layer: ServeArgs) -> Result<Self, ConfigError> {
                Ok(Self {
                    $( $section: $Section {
                        $( $field: match layer.$flat {
                            Some(v) => convert!(v $(, $convert)?).map_err(|e| {
                                ConfigError(format!("{} {e}", stringify!($flat).replace('_', "-")))
                            })?,
                            None => $default,
                        }, )*
                    }, )*
                })
            }
        }
    };
}

/// The type flags, env and file give for a setting: its own, or the `from` type.
macro_rules! input_ty {
    ($ty:ty) => {
        $ty
    };
    ($ty:ty, $input:ty) => {
        $input
    };
}

/// A given value as the setting's type.
macro_rules! convert {
    ($v:expr) => {
        Ok::<_, String>($v)
    };
    ($v:expr, $convert:path) => {
        $convert($v)
    };
}

settings! {
    /// The listeners.
    server: ServerConfig {
        /// HTTP API port (DTM's API, JSON-RPC, metrics, admin).
        http_port => http_port: u16 = 36789, env "BRAID_HTTP_PORT", dtm "HTTP_PORT";
        /// gRPC API port.
        grpc_port => grpc_port: u16 = 36790, env "BRAID_GRPC_PORT", dtm "GRPC_PORT";
        /// Address to listen on.
        bind => bind: String = "0.0.0.0".to_owned(), env "BRAID_BIND";
    }
    /// The transaction store.
    store: StoreConfig {
        /// Store DSN: `sqlite://path/braid.db`, `mysql://user:pass@host:3306/db` or
        /// `postgres://user:pass@host:5432/db`. Any character works in the password; write `%` followed by
        /// two hex digits as `%25`.
        store => dsn: String = DEFAULT_STORE.to_owned(), env "BRAID_STORE";
        /// A file holding the store password, kept apart from the DSN (a Kubernetes Secret); it replaces any
        /// password in the DSN. A trailing newline is dropped.
        store_password_file => password_file: Option<PathBuf> = None, env "BRAID_STORE_PASSWORD_FILE",
            from PathBuf => some;
        /// Keep finished transactions this many seconds (0: forever).
        retention => retention: Duration = Duration::from_secs(7 * 24 * 3600), env "BRAID_RETENTION",
            dtm "STORE_FINISHED_DATA_EXPIRE", from i64 => signed_seconds;
    }
    /// Retries, timeouts and recovery scans.
    retry: RetryConfig {
        /// Base retry interval in seconds.
        retry_interval => interval: Duration = Duration::from_secs(10), env "BRAID_RETRY_INTERVAL",
            dtm "RETRY_INTERVAL", from i64 => signed_seconds;
        /// Timeout of prepared msg/tcc/xa transactions in seconds.
        timeout_to_fail => timeout_to_fail: Duration = Duration::from_secs(35),
            env "BRAID_TIMEOUT_TO_FAIL", dtm "TIMEOUT_TO_FAIL", from i64 => signed_seconds;
        /// Timeout of each branch call in seconds.
        request_timeout => request_timeout: Duration = Duration::from_secs(3),
            env "BRAID_REQUEST_TIMEOUT", dtm "REQUEST_TIMEOUT", from i64 => signed_seconds;
        /// Seconds between recovery scans.
        scan_interval => scan_interval: Duration = Duration::from_secs(1), env "BRAID_SCAN_INTERVAL",
            dtm "TRANS_CRON_INTERVAL", from u64 => seconds;
        /// Upper bound of the retry backoff in seconds.
        backoff_cap => backoff_cap: Duration = Duration::from_secs(3600), env "BRAID_BACKOFF_CAP",
            from i64 => signed_seconds;
    }
    /// Alerts about branches that keep failing.
    alert: AlertConfig {
        /// POST an alert JSON here when a branch keeps failing (DTM's AlertWebHook).
        alert_webhook => webhook: Option<String> = None, env "BRAID_ALERT_WEBHOOK", dtm "ALERT_WEB_HOOK",
            from String => some;
        /// Alert from this many consecutive failures of a transaction on.
        alert_retry_limit => retry_limit: i64 = 3, env "BRAID_ALERT_RETRY_LIMIT", dtm "ALERT_RETRY_LIMIT";
    }
    /// Replicas, scan partitions and leases.
    cluster: ClusterConfig {
        /// This replica's name in the cluster, logs and claims (default: `$POD_NAME`, `$HOSTNAME` or
        /// `braid`). Every replica needs its own.
        node_id => node_id: String = default_node_id(), env "BRAID_NODE_ID";
        /// Number of scan partitions P, fixed at the first start (a replica with another P refuses to
        /// start).
        partitions => partitions: u16 = 64, env "BRAID_PARTITIONS";
        /// Lease backend: `sql` (a table in the shared store), `kubernetes` (Lease objects) or `local`
        /// (single node). Default: `kubernetes` in a pod, else `sql` for a MySQL store and `local` for
        /// SQLite.
        lease_backend => lease_backend: LeaseBackendKind = LeaseBackendKind::Local,
            env "BRAID_LEASE_BACKEND";
        /// Seconds a lease lasts without renewal before other replicas may take it.
        lease_duration => lease_duration: Duration = Duration::from_secs(15), env "BRAID_LEASE_DURATION",
            from u64 => seconds;
        /// Seconds a holder keeps failing to renew before it stops scanning (less than the lease
        /// duration).
        lease_renew_deadline => lease_renew_deadline: Duration = Duration::from_secs(10),
            env "BRAID_LEASE_RENEW_DEADLINE", from u64 => seconds;
        /// Seconds between lease renewals and acquisition attempts.
        lease_retry_period => lease_retry_period: Duration = Duration::from_secs(2),
            env "BRAID_LEASE_RETRY_PERIOD", from u64 => seconds;
        /// Kubernetes lease backend: namespace of the Lease objects (default: `$POD_NAMESPACE`, else the
        /// client configuration's namespace).
        lease_namespace => lease_namespace: Option<String> = None, env "BRAID_LEASE_NAMESPACE",
            from String => some;
        /// Kubernetes lease backend: prefix of the Lease object names (one prefix per installation).
        lease_prefix => lease_prefix: String = "braid".to_owned(), env "BRAID_LEASE_PREFIX";
    }
    /// The Kubernetes integration.
    kube: KubeConfig {
        /// Kubernetes integration (TransactionPolicy watcher, EndpointSlice discovery): `auto` turns it on
        /// inside a pod (`KUBERNETES_SERVICE_HOST` set).
        kubernetes => mode: KubeMode = KubeMode::Auto, env "BRAID_KUBERNETES";
        /// Namespace whose TransactionPolicies and EndpointSlices are watched (default: `POD_NAMESPACE`).
        kube_namespace => namespace: Option<String> = None, env "BRAID_KUBE_NAMESPACE",
            from String => some;
    }
    /// The group-commit writer.
    writer: WriterConfig {
        /// Group commit: most batches committing at once (default: 2 on MySQL, 1 on SQLite).
        writer_pipeline => pipeline: Option<usize> = None, env "BRAID_WRITER_PIPELINE",
            from usize => some;
        /// Group commit: most writes in one database transaction.
        writer_max_batch => max_batch: usize = WriterOptions::default().max_batch,
            env "BRAID_WRITER_MAX_BATCH";
        /// Group commit: milliseconds to wait for more writes after the first one (0: take what is
        /// queued).
        writer_max_wait_ms => max_wait: Duration = Duration::ZERO, env "BRAID_WRITER_MAX_WAIT_MS",
            from u64 => millis;
        /// Group commit: most estimated bytes in one database transaction; a single write above it is
        /// refused with 413 (default: the store's max_allowed_packet less a margin; 64Mi on SQLite).
        writer_max_batch_bytes => max_batch_bytes: Option<u64> = None,
            env "BRAID_WRITER_MAX_BATCH_BYTES", from ByteSize => some_bytes;
    }
    /// Load limits of the APIs and listeners.
    limits: LimitsConfig {
        /// Most steps (and payloads) of one saga or msg; more is refused with 400 naming the field.
        max_steps => max_steps: usize = crate::model::limits::MAX_STEPS, env "BRAID_MAX_STEPS";
        /// Most request body bytes held by requests in progress (HTTP, JSON-RPC and gRPC together);
        /// beyond it requests get 503 with Retry-After. A number of bytes, or with a unit: `64Mi`, `1Gi`.
        max_inflight_bytes => max_inflight_bytes: u64 = DEFAULT_MAX_INFLIGHT_BYTES,
            env "BRAID_MAX_INFLIGHT_BYTES", from ByteSize => bytes;
        /// Most requests in progress at once (all APIs together); beyond it requests get 503 with
        /// Retry-After. `/api/ping`, `/api/ready` and `/api/metrics` are not counted.
        max_concurrent_requests => max_concurrent_requests: usize = DEFAULT_MAX_CONCURRENT_REQUESTS,
            env "BRAID_MAX_CONCURRENT_REQUESTS";
        /// Most open client connections (HTTP and gRPC listeners together); further ones wait to be
        /// accepted.
        max_connections => max_connections: usize = DEFAULT_MAX_CONNECTIONS,
            env "BRAID_MAX_CONNECTIONS";
        /// Seconds a client has to send a request's headers; also how long an HTTP/1 connection may idle
        /// between requests.
        header_read_timeout => header_read_timeout: Duration = Duration::from_secs(10),
            env "BRAID_HEADER_READ_TIMEOUT", from u64 => seconds;
        /// Seconds a connection with no request in progress and no traffic stays open (HTTP/2 and gRPC
        /// included).
        idle_timeout => idle_timeout: Duration = Duration::from_secs(60), env "BRAID_IDLE_TIMEOUT",
            from u64 => seconds;
    }
    /// Tokens and roles of the APIs (see README, "Security"). Prefer the env names: a flag's value shows in
    /// the process list.
    auth: AuthConfig {
        /// The token of the `admin` role (everything).
        auth_token_admin => token_admin: Option<String> = None, env "BRAID_AUTH_TOKEN_ADMIN",
            from String => some;
        /// The token of the `client` role (running transactions).
        auth_token_client => token_client: Option<String> = None, env "BRAID_AUTH_TOKEN_CLIENT",
            from String => some;
        /// A YAML list of `{name, role: client|admin, sha256}` tokens (only digests are stored), re-read
        /// when it changes.
        auth_tokens_file => tokens_file: Option<PathBuf> = None, env "BRAID_AUTH_TOKENS_FILE",
            from PathBuf => some;
        /// What a request without a token gets: `none`, `client` or `admin` (default: `admin` when no
        /// token is configured, else `client`).
        auth_anonymous_role => anonymous_role: Option<AnonymousRole> = None,
            env "BRAID_AUTH_ANONYMOUS_ROLE", from AnonymousRole => some;
        /// A token `/api/metrics` requires (default: metrics are open).
        metrics_token => metrics_token: Option<String> = None, env "BRAID_METRICS_TOKEN",
            from String => some;
    }
    /// What braid may call.
    branches: BranchesConfig {
        /// More branch header names whose values are shown as `***` (comma-separated; `*` matches any run
        /// of characters: `x-api-*`), besides `Authorization`, `Cookie` and names containing token,
        /// secret, key, password or session.
        sensitive_headers => sensitive_headers: Option<String> = None, env "BRAID_SENSITIVE_HEADERS",
            from String => some;
        /// Hosts branch, callback and subscriber URLs may name, comma-separated: `payments.internal`,
        /// `*.svc.cluster.local`, `10.0.0.0/8`, `host:port` (default: any host but link-local addresses).
        branch_allow => allow: Option<String> = None, env "BRAID_BRANCH_ALLOW", from String => some;
    }
    /// TLS of the listeners, of branch calls and of the store (see README, "TLS"). Certificate files are PEM
    /// and re-read when they change.
    tls: TlsConfig {
        /// Serve HTTPS and gRPC over TLS with this certificate chain (PEM; with --tls-key).
        tls_cert => cert: Option<PathBuf> = None, env "BRAID_TLS_CERT", from PathBuf => some;
        /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
        tls_key => key: Option<PathBuf> = None, env "BRAID_TLS_KEY", from PathBuf => some;
        /// Mutual TLS: clients must present a certificate signed by a CA in this PEM file.
        tls_client_ca => client_ca: Option<PathBuf> = None, env "BRAID_TLS_CLIENT_CA",
            from PathBuf => some;
        /// CA certificates (PEM) trusted for `https://` and `grpcs://` branches besides the public web roots.
        branch_ca => branch_ca: Option<PathBuf> = None, env "BRAID_BRANCH_CA", from PathBuf => some;
        /// Mutual TLS to branches: the client certificate chain (PEM; with --branch-client-key).
        branch_client_cert => branch_client_cert: Option<PathBuf> = None, env "BRAID_BRANCH_CLIENT_CERT",
            from PathBuf => some;
        /// The private key of --branch-client-cert (PEM).
        branch_client_key => branch_client_key: Option<PathBuf> = None, env "BRAID_BRANCH_CLIENT_KEY",
            from PathBuf => some;
        /// CA certificate (PEM) of the store's TLS: sets the DSN's `ssl-ca` (MySQL) or `sslrootcert`
        /// (PostgreSQL), and the verifying mode when the DSN names none.
        store_ca => store_ca: Option<PathBuf> = None, env "BRAID_STORE_CA", from PathBuf => some;
    }
    /// The admin web page.
    admin: AdminConfig {
        /// Serve the admin page: `on` or `off` (its page and files answer 404; the API is unchanged).
        admin_ui => ui: Switch = Switch::On, env "BRAID_ADMIN_UI";
        /// Path prefix the admin page, its files and the API calls it makes are served under, e.g.
        /// `/ops/braid` behind an ingress path that is forwarded as is (DTM's AdminBasePath). Empty: the
        /// page is at `/` and `/admin`.
        admin_base_path => base_path: BasePath = BasePath::default(), env "BRAID_ADMIN_BASE_PATH",
            dtm "ADMIN_BASE_PATH", from String => base_path;
    }
    /// Logging.
    log: LogConfig {
        /// Log filter: a level (`info`) or a `RUST_LOG`-style directive list.
        log_level => level: String = "info".to_owned(), env "BRAID_LOG_LEVEL", dtm "LOG_LEVEL";
        /// Log format.
        log_format => format: LogFormat = LogFormat::Text, env "BRAID_LOG_FORMAT";
    }
}

/// Default of `--max-inflight-bytes`.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 32 * 1024 * 1024;
/// Default of `--max-concurrent-requests`.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The embedded default store.
pub const DEFAULT_STORE: &str = "sqlite://braid-data/braid.db";

fn seconds(v: u64) -> Result<Duration, String> {
    Ok(Duration::from_secs(v))
}

fn signed_seconds(v: i64) -> Result<Duration, String> {
    u64::try_from(v)
        .map(Duration::from_secs)
        .map_err(|_| format!("must not be negative, got {v}"))
}

fn millis(v: u64) -> Result<Duration, String> {
    Ok(Duration::from_millis(v))
}

fn base_path(v: String) -> Result<BasePath, String> {
    BasePath::parse(&v)
}

fn some<T>(v: T) -> Result<Option<T>, String> {
    Ok(Some(v))
}

fn bytes(v: ByteSize) -> Result<u64, String> {
    Ok(v.0)
}

fn some_bytes(v: ByteSize) -> Result<Option<u64>, String> {
    Ok(Some(v.0))
}

/// Whole seconds as the signed count the engine and the scanner take.
fn whole_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A feature on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// What a request without a token gets (`--auth-anonymous-role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnonymousRole {
    /// Nothing but ping and ready.
    None,
    /// Running transactions.
    Client,
    /// Everything.
    Admin,
}

impl Config {
    /// Whether and where the admin page is served.
    pub fn admin_ui(&self) -> AdminUi {
        AdminUi::new(self.admin.ui == Switch::On, self.admin.base_path.clone())
    }

    /// The APIs' tokens and roles, with the tokens file loaded (an unreadable or invalid file is an error
    /// naming it) and returned for [`crate::reload::watch`].
    pub fn auth(
        &self,
    ) -> Result<(crate::api::auth::Auth, Option<crate::api::auth::TokensFile>), ConfigError> {
        let auth = self.auth_without_file();
        let file = match &self.auth.tokens_file {
            Some(path) => Some(
                crate::api::auth::TokensFile::load(path, auth.clone())
                    .map_err(|e| ConfigError(format!("auth-tokens-file: {e}")))?,
            ),
            None => None,
        };
        Ok((auth, file))
    }

    fn auth_without_file(&self) -> crate::api::auth::Auth {
        use crate::api::auth::Role;
        let anonymous = self.auth.anonymous_role.map(|r| match r {
            AnonymousRole::None => None,
            AnonymousRole::Client => Some(Role::Client),
            AnonymousRole::Admin => Some(Role::Admin),
        });
        crate::api::auth::Auth::new(
            self.auth.token_admin.as_deref(),
            self.auth.token_client.as_deref(),
            anonymous,
            self.auth.metrics_token.as_deref(),
        )
    }
}

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

/// An environment variable parsed as `T`; unset and empty are `None`.
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

/// The store DSN from DTM's `STORE_DRIVER`, `STORE_HOST`, `STORE_PORT`, `STORE_USER`, `STORE_PASSWORD`
/// and `STORE_DB` (spec §11); `boltdb` is the embedded store, so it leaves the DSN to the other layers. The
/// user and password are percent-encoded, so any character in them works.
fn dtm_store(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, ConfigError> {
    let driver = get("STORE_DRIVER").filter(|d| !d.is_empty());
    let (scheme, default_port, default_user) = match driver.as_deref() {
        None | Some("boltdb") => return Ok(None),
        Some("mysql") => ("mysql", "3306", "root"),
        Some("postgres") => ("postgres", "5432", "postgres"),
        Some(other) => {
            return Err(ConfigError(format!(
                "STORE_DRIVER='{other}' is not supported by braid (use mysql, postgres, or boltdb for the \
                 embedded store)"
            )));
        }
    };
    let host = get("STORE_HOST")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = get("STORE_PORT")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| default_port.to_owned());
    let user = get("STORE_USER")
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| default_user.to_owned());
    let password = get("STORE_PASSWORD").unwrap_or_default();
    let db = get("STORE_DB")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "dtm".to_owned());
    let user = crate::store::dsn_encode(&user);
    let auth = if password.is_empty() {
        user
    } else {
        format!("{user}:{}", crate::store::dsn_encode(&password))
    };
    Ok(Some(format!("{scheme}://{auth}@{host}:{port}/{db}")))
}

/// A DTM `conf.yml` flattened to DTM's environment names, or `None` for braid's own format.
fn dtm_file(
    path: &std::path::Path,
    text: &str,
) -> Result<Option<std::collections::BTreeMap<String, String>>, ConfigError> {
    // A document that is not even generic YAML is left to braid's parser, whose error says more.
    let Ok(doc) = serde_saphyr::from_str::<serde_json::Value>(text) else {
        return Ok(None);
    };
    if !dtm::is_dtm(&doc) {
        return Ok(None);
    }
    dtm::flatten(&doc)
        .map(Some)
        .map_err(|e| ConfigError(format!("DTM config file {}: {}", path.display(), e.0)))
}

/// What start-up warns about DTM's configuration: every DTM setting, from a DTM `conf.yml` given to
/// `--config` or from the environment, that braid does not use, with the reason.
pub fn dtm_warnings(args: &ServeArgs) -> Vec<String> {
    dtm_warnings_with(args, &|k| std::env::var(k).ok())
}

fn dtm_warnings_with(args: &ServeArgs, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut out = dtm::env_warnings(env);
    if let Some(path) = &args.config
        && let Ok(text) = std::fs::read_to_string(path)
        && let Ok(Some(flat)) = dtm_file(path, &text)
    {
        out.extend(
            dtm::warnings(flat.keys().map(String::as_str))
                .into_iter()
                .map(|w| format!("{w} (in {})", path.display())),
        );
    }
    out
}

impl Config {
    /// The DSN to open the store with: [`StoreConfig::dsn`] with `store-ca` set in it and the password of
    /// `store-password-file` when those are set. Never log it: log [`crate::store::redact_dsn`] of it.
    pub fn store_dsn(&self) -> Result<String, ConfigError> {
        let dsn = match &self.tls.store_ca {
            Some(ca) => crate::store::dsn_with_ca(&self.store.dsn, ca)
                .unwrap_or_else(|| self.store.dsn.clone()),
            None => self.store.dsn.clone(),
        };
        let Some(path) = &self.store.password_file else {
            return Ok(dsn);
        };
        let password = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "store-password-file {}: cannot read it: {e}",
                path.display()
            ))
        })?;
        let password = password
            .strip_suffix("\r\n")
            .or_else(|| password.strip_suffix('\n'))
            .unwrap_or(&password);
        crate::store::with_password(&dsn, password)
            .map_err(|e| ConfigError(format!("store-password-file {}: {e}", path.display())))
    }

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
                match dtm_file(path, &text)? {
                    Some(flat) => {
                        ServeArgs::from_dtm_env(&|k| flat.get(k).cloned()).map_err(|e| {
                            ConfigError(format!("DTM config file {}: {e}", path.display()))
                        })?
                    }
                    None => serde_saphyr::from_str::<ServeArgs>(&text)
                        .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?,
                }
            }
            None => ServeArgs::default(),
        };
        let layer = args.clone().or(ServeArgs::from_dtm_env(env)?).or(file);
        let (backend_given, namespace_given) = (
            layer.lease_backend.is_some(),
            layer.lease_namespace.is_some(),
        );
        let mut cfg = Self::resolve(layer)?;
        // Defaults that depend on the environment and on other settings.
        if !backend_given {
            cfg.cluster.lease_backend = LeaseBackendKind::detect(&cfg.store.dsn, env);
        }
        if !namespace_given {
            cfg.cluster.lease_namespace = env("POD_NAMESPACE").filter(|n| !n.is_empty());
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges; every message names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(allow) = &self.branches.allow {
            crate::engine::BranchAllow::parse(allow).map_err(ConfigError)?;
        }
        let retry = &self.retry;
        for (name, v) in [
            ("retry-interval", retry.interval),
            ("timeout-to-fail", retry.timeout_to_fail),
            ("request-timeout", retry.request_timeout),
            ("backoff-cap", retry.backoff_cap),
            ("scan-interval", retry.scan_interval),
        ] {
            if v < Duration::from_secs(1) {
                return Err(ConfigError(format!(
                    "{name} must be at least 1 second, got {}",
                    v.as_secs()
                )));
            }
        }
        if retry.backoff_cap < retry.interval {
            return Err(ConfigError(format!(
                "backoff-cap ({}) must not be below retry-interval ({})",
                retry.backoff_cap.as_secs(),
                retry.interval.as_secs()
            )));
        }
        if self.store.dsn.trim().is_empty() {
            return Err(ConfigError("store must not be empty".to_owned()));
        }
        let cluster = &self.cluster;
        if cluster.node_id.trim().is_empty() {
            return Err(ConfigError("node-id must not be empty".to_owned()));
        }
        if !(1..=4096).contains(&cluster.partitions) {
            return Err(ConfigError(format!(
                "partitions must be between 1 and 4096, got {}",
                cluster.partitions
            )));
        }
        self.lease_timing()
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        if cluster.lease_backend == LeaseBackendKind::Local
            && !self.store.dsn.starts_with("sqlite:")
        {
            tracing::warn!(
                "lease-backend local with a shared store: every replica will scan every partition it \
                 believes it owns; use sql or kubernetes when more than one replica shares the store"
            );
        }
        self.validate_tls()?;
        if self.writer.max_batch < 1 || self.writer.pipeline == Some(0) {
            return Err(ConfigError(
                "writer-max-batch and writer-pipeline must be at least 1".to_owned(),
            ));
        }
        self.validate_limits()
    }

    /// Files that go in pairs are given in pairs; the files themselves are read at start.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let tls = &self.tls;
        match (&tls.cert, &tls.key) {
            (Some(_), None) => return Err(ConfigError("tls-cert needs tls-key".to_owned())),
            (None, Some(_)) => return Err(ConfigError("tls-key needs tls-cert".to_owned())),
            _ => {}
        }
        if tls.client_ca.is_some() && tls.cert.is_none() {
            return Err(ConfigError(
                "tls-client-ca needs tls-cert and tls-key (mutual TLS is TLS first)".to_owned(),
            ));
        }
        match (&tls.branch_client_cert, &tls.branch_client_key) {
            (Some(_), None) => Err(ConfigError(
                "branch-client-cert needs branch-client-key".to_owned(),
            )),
            (None, Some(_)) => Err(ConfigError(
                "branch-client-key needs branch-client-cert".to_owned(),
            )),
            _ => Ok(()),
        }?;
        if tls.store_ca.is_some()
            && crate::store::dsn_with_ca(&self.store.dsn, Path::new("")).is_none()
        {
            return Err(ConfigError(
                "store-ca applies to a mysql:// or postgres:// store only".to_owned(),
            ));
        }
        Ok(())
    }

    /// The listeners' TLS, loaded from its files (`None` without `tls-cert`). The error names the file.
    pub fn server_tls(&self) -> Result<Option<crate::tls::ServerTls>, crate::tls::TlsError> {
        use crate::tls::{ServerTls, TlsFile};
        let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) else {
            return Ok(None);
        };
        ServerTls::load(
            TlsFile::new("tls-cert", cert),
            TlsFile::new("tls-key", key),
            self.tls
                .client_ca
                .as_ref()
                .map(|ca| TlsFile::new("tls-client-ca", ca)),
        )
        .map(Some)
    }

    /// The client TLS of branch calls, loaded from its files. The error names the file.
    pub fn branch_tls(&self) -> Result<crate::tls::BranchTls, crate::tls::TlsError> {
        use crate::tls::{BranchTls, TlsFile};
        let tls = &self.tls;
        let identity = match (&tls.branch_client_cert, &tls.branch_client_key) {
            (Some(c), Some(k)) => Some((
                TlsFile::new("branch-client-cert", c),
                TlsFile::new("branch-client-key", k),
            )),
            _ => None,
        };
        BranchTls::load(
            tls.branch_ca
                .as_ref()
                .map(|ca| TlsFile::new("branch-ca", ca)),
            identity,
        )
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let ceiling = crate::model::limits::MAX_STEPS_CEILING;
        if !(1..=ceiling).contains(&limits.max_steps) {
            return Err(ConfigError(format!(
                "max-steps must be between 1 and {ceiling}, got {}",
                limits.max_steps
            )));
        }
        let body = crate::api::MAX_BODY_BYTES as u64;
        if limits.max_inflight_bytes < body {
            return Err(ConfigError(format!(
                "max-inflight-bytes must be at least the largest request body ({body} bytes), got {}",
                limits.max_inflight_bytes
            )));
        }
        for (name, v) in [
            (
                "max-concurrent-requests",
                limits.max_concurrent_requests as u64,
            ),
            ("max-connections", limits.max_connections as u64),
            ("header-read-timeout", limits.header_read_timeout.as_secs()),
            ("idle-timeout", limits.idle_timeout.as_secs()),
            (
                "writer-max-batch-bytes",
                self.writer.max_batch_bytes.unwrap_or(1),
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
            lease_duration: self.cluster.lease_duration,
            renew_deadline: self.cluster.lease_renew_deadline,
            retry_period: self.cluster.lease_retry_period,
        }
    }

    /// The cluster's part.
    pub fn cluster_options(&self) -> ClusterOptions {
        ClusterOptions {
            node_id: self.cluster.node_id.clone(),
            partitions: self.cluster.partitions,
            backend: self.cluster.lease_backend,
            timing: self.lease_timing(),
            kube_namespace: self.cluster.lease_namespace.clone(),
            kube_lease_prefix: self.cluster.lease_prefix.clone(),
        }
    }

    /// The engine's part.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            retry_interval: whole_secs(self.retry.interval),
            timeout_to_fail: whole_secs(self.retry.timeout_to_fail),
            request_timeout: whole_secs(self.retry.request_timeout),
            backoff_cap: whole_secs(self.retry.backoff_cap),
            partitions: self.cluster.partitions,
            alert_webhook: self.alert.webhook.clone(),
            alert_retry_limit: self.alert.retry_limit,
            node_id: self.cluster.node_id.clone(),
            // Checked by `Config::validate`; a bad list cannot reach here from a loaded configuration.
            branch_allow: self
                .branches
                .allow
                .as_deref()
                .and_then(|a| crate::engine::BranchAllow::parse(a).ok())
                .unwrap_or_default(),
        }
    }

    /// The Kubernetes integration's part.
    pub fn kube_options(&self) -> KubeOptions {
        KubeOptions {
            mode: self.kube.mode,
            namespace: self.kube.namespace.clone(),
        }
    }

    /// The group-commit writer's part, for a store of `kind` ([`crate::store::StoreBase::kind`]) whose largest
    /// statement is `max_packet` bytes ([`crate::store::StoreBase::max_packet_bytes`]).
    pub fn writer_options(&self, kind: &str, max_packet: Option<u64>) -> WriterOptions {
        let defaults = WriterOptions::for_store(kind);
        WriterOptions {
            max_batch: self.writer.max_batch,
            max_wait: self.writer.max_wait,
            pipeline: self.writer.pipeline.unwrap_or(defaults.pipeline),
            max_batch_bytes: self
                .writer
                .max_batch_bytes
                .unwrap_or_else(|| WriterOptions::batch_bytes_for(max_packet)),
            ..defaults
        }
    }

    /// The API load limits.
    pub fn limit_options(&self) -> LimitOptions {
        LimitOptions {
            max_inflight_bytes: self.limits.max_inflight_bytes,
            max_concurrent_requests: self.limits.max_concurrent_requests,
            max_body_bytes: crate::api::MAX_BODY_BYTES as u64,
        }
    }

    /// The listeners' connection limits.
    pub fn listener_options(&self) -> ListenerOptions {
        ListenerOptions {
            max_connections: self.limits.max_connections,
            header_read_timeout: self.limits.header_read_timeout,
            idle_timeout: self.limits.idle_timeout,
        }
    }

    /// The scanner's part.
    pub fn scanner_options(&self) -> ScannerOptions {
        ScannerOptions {
            interval: self.retry.scan_interval,
            lease_secs: whole_secs(self.retry.interval),
            node_id: self.cluster.node_id.clone(),
            retention_secs: whole_secs(self.store.retention),
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
        assert_eq!((cfg.server.http_port, cfg.server.grpc_port), (36789, 36790));
        assert_eq!(cfg.store.dsn, DEFAULT_STORE);
        let engine = cfg.engine_options();
        assert_eq!(
            (
                engine.retry_interval,
                engine.timeout_to_fail,
                engine.request_timeout
            ),
            (10, 35, 3)
        );
        assert_eq!(
            (cfg.retry.scan_interval, cfg.retry.backoff_cap),
            (Duration::from_secs(1), Duration::from_secs(3600))
        );
        assert_eq!(cfg.kube.mode, KubeMode::Auto);
        assert_eq!(
            (cfg.admin.ui, cfg.admin.base_path.as_str()),
            (Switch::On, ""),
            "the admin page is on, at the root"
        );
        assert!(
            !cfg.kube_options().enabled(&env(&[])),
            "auto is off outside a pod"
        );
        assert!(
            cfg.kube_options()
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
        assert_eq!(cfg.server.http_port, 3333, "flag wins");
        assert_eq!(cfg.server.grpc_port, 4444, "DTM env beats file");
        assert_eq!(
            cfg.retry.interval,
            Duration::from_secs(7),
            "file beats default"
        );
        assert_eq!(cfg.retry.backoff_cap, Duration::from_secs(60));
        assert_eq!(cfg.store.dsn, "mysql://root:pw@db:3306/dtm");
        assert_eq!(cfg.kube.mode, KubeMode::Off);
        assert_eq!(cfg.kube.namespace.as_deref(), Some("shop"));
        assert!(
            !cfg.kube_options()
                .enabled(&env(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]))
        );
    }

    /// A DTM `conf.yml` as DTM's sample and docs write it.
    const DTM_CONF: &str = r#"
Store:
  Driver: 'mysql'
  Host: 'db.internal'
  Port: 3307
  User: 'dtm'
  Password: 'p@ss/w#rd'
  Db: 'dtm'
  MaxOpenConns: 500
  MaxIdleConns: 500
  ConnMaxLifeTime: 5
  FinishedDataExpire: 86400
MicroService:
  Driver: 'dtm-driver-gozero'
  Target: 'etcd://localhost:2379/dtmservice'
  EndPoint: 'localhost:36790'
TransCronInterval: 5
TimeoutToFail: 40
RetryInterval: 15
RequestTimeout: 4
HttpPort: 46789
GrpcPort: 46790
JsonRpcPort: 46791
UpdateBranchSync: 1
LogLevel: 'warn'
Log:
  Outputs: 'stderr'
AlertRetryLimit: 5
AlertWebHook: 'http://alerts.internal/hook'
"#;

    #[test]
    fn a_dtm_conf_file_is_read_as_dtm_writes_it() {
        let dir = std::env::temp_dir().join(format!("braid-cfg-{}", crate::model::short_uuid()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("conf.yml");
        std::fs::write(&file, DTM_CONF).unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            ..Default::default()
        };
        let cfg = Config::load_with(&args, &env(&[])).unwrap();
        assert_eq!(
            cfg.store.dsn,
            "mysql://dtm:p%40ss%2Fw%23rd@db.internal:3307/dtm"
        );
        assert_eq!(cfg.server.http_port, 46789);
        assert_eq!(cfg.server.grpc_port, 46790);
        assert_eq!(cfg.retry.scan_interval, Duration::from_secs(5));
        assert_eq!(cfg.retry.timeout_to_fail, Duration::from_secs(40));
        assert_eq!(cfg.retry.interval, Duration::from_secs(15));
        assert_eq!(cfg.retry.request_timeout, Duration::from_secs(4));
        assert_eq!(cfg.store.retention, Duration::from_secs(86400));
        assert_eq!(cfg.log.level, "warn");
        assert_eq!(cfg.alert.retry_limit, 5);
        assert_eq!(
            cfg.alert.webhook.as_deref(),
            Some("http://alerts.internal/hook")
        );

        let warnings =
            dtm_warnings_with(&args, &env(&[("UPDATE_BRANCH_ASYNC_GOROUTINE_NUM", "4")]));
        for name in [
            "STORE_MAX_OPEN_CONNS",
            "STORE_MAX_IDLE_CONNS",
            "STORE_CONN_MAX_LIFE_TIME",
            "MICRO_SERVICE_DRIVER",
            "MICRO_SERVICE_TARGET",
            "MICRO_SERVICE_END_POINT",
            "JSON_RPC_PORT",
            "UPDATE_BRANCH_SYNC",
            "LOG_OUTPUTS",
            "UPDATE_BRANCH_ASYNC_GOROUTINE_NUM",
        ] {
            let found: Vec<&String> = warnings.iter().filter(|w| w.contains(name)).collect();
            assert_eq!(found.len(), 1, "{name}: {warnings:#?}");
        }
        assert!(
            !warnings
                .iter()
                .any(|w| w.contains("HTTP_PORT") && !w.contains("MICRO")),
            "honoured settings are not warned about: {warnings:#?}"
        );
        // braid's own format is still braid's.
        std::fs::write(&file, "http-port: 1234\n").unwrap();
        let cfg = Config::load_with(&args, &env(&[])).unwrap();
        assert_eq!(cfg.server.http_port, 1234);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dtm_store_env_encodes_the_password_and_knows_postgres() {
        let cfg = Config::load_with(
            &ServeArgs::default(),
            &env(&[
                ("STORE_DRIVER", "mysql"),
                ("STORE_HOST", "db"),
                ("STORE_PASSWORD", "p@ss/w:rd?#%"),
            ]),
        )
        .unwrap();
        assert_eq!(
            cfg.store.dsn,
            "mysql://root:p%40ss%2Fw%3Ard%3F%23%25@db:3306/dtm"
        );
        let cfg = Config::load_with(
            &ServeArgs::default(),
            &env(&[
                ("STORE_DRIVER", "postgres"),
                ("STORE_HOST", "pg"),
                ("STORE_DB", "braid"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.store.dsn, "postgres://postgres@pg:5432/braid");
        assert_eq!(cfg.cluster.lease_backend, LeaseBackendKind::Sql);
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
        for bad in ["ops", "/ops/", "/a b", "/a\"b", "/api/x"] {
            let args = ServeArgs {
                admin_base_path: Some(bad.to_owned()),
                ..Default::default()
            };
            let err = Config::load_with(&args, &env(&[])).unwrap_err().to_string();
            assert!(err.contains("admin-base-path"), "{bad:?}: {err}");
        }
        let err = Config::load_with(&ServeArgs::default(), &env(&[("ADMIN_BASE_PATH", "x/")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin-base-path"), "{err}");
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
        assert_eq!(cfg.cluster.partitions, 64);
        assert_eq!(
            cfg.cluster.lease_backend,
            LeaseBackendKind::Local,
            "SQLite store"
        );
        assert_eq!(
            (
                cfg.cluster.lease_duration.as_secs(),
                cfg.cluster.lease_renew_deadline.as_secs(),
                cfg.cluster.lease_retry_period.as_secs()
            ),
            (15, 10, 2),
            "client-go's defaults"
        );
        let mysql = ServeArgs {
            store: Some("mysql://root@db:3306/braid".into()),
            ..Default::default()
        };
        let cfg = Config::load_with(&mysql, &env(&[])).unwrap();
        assert_eq!(cfg.cluster.lease_backend, LeaseBackendKind::Sql);
        let cfg = Config::load_with(
            &mysql,
            &env(&[
                ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
                ("POD_NAMESPACE", "prod"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.cluster.lease_backend, LeaseBackendKind::Kubernetes);
        assert_eq!(cfg.cluster.lease_namespace.as_deref(), Some("prod"));
        let small = ServeArgs {
            lease_backend: Some(LeaseBackendKind::Sql),
            lease_duration: Some(4),
            lease_renew_deadline: Some(3),
            lease_retry_period: Some(1),
            partitions: Some(16),
            ..Default::default()
        };
        let cfg = Config::load_with(&small, &env(&[("KUBERNETES_SERVICE_HOST", "x")])).unwrap();
        assert_eq!(
            cfg.cluster.lease_backend,
            LeaseBackendKind::Sql,
            "the flag wins"
        );
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
                cfg.limits.max_inflight_bytes,
                cfg.limits.max_concurrent_requests,
                cfg.limits.max_connections
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
        assert_eq!(cfg.limits.max_inflight_bytes, 64 << 20);
        assert_eq!(cfg.limits.max_connections, 200, "the flag wins");
        assert_eq!(cfg.writer.max_batch_bytes, Some(1 << 20));
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
        (
            "store-password-file",
            "BRAID_STORE_PASSWORD_FILE",
            "/run/a",
            "/run/b",
            "/run/b",
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
        ("admin-ui", "BRAID_ADMIN_UI", "off", "on", "on"),
        (
            "admin-base-path",
            "BRAID_ADMIN_BASE_PATH",
            "/ops/braid",
            "/braid",
            "/braid",
        ),
        ("log-level", "BRAID_LOG_LEVEL", "debug", "warn", "warn"),
        ("log-format", "BRAID_LOG_FORMAT", "json", "json", "json"),
        (
            "auth-token-admin",
            "BRAID_AUTH_TOKEN_ADMIN",
            "a1",
            "a2",
            "a2",
        ),
        (
            "auth-token-client",
            "BRAID_AUTH_TOKEN_CLIENT",
            "c1",
            "c2",
            "c2",
        ),
        (
            "auth-anonymous-role",
            "BRAID_AUTH_ANONYMOUS_ROLE",
            "none",
            "admin",
            "admin",
        ),
        ("metrics-token", "BRAID_METRICS_TOKEN", "m1", "m2", "m2"),
        (
            "auth-tokens-file",
            "BRAID_AUTH_TOKENS_FILE",
            "/run/t1",
            "/run/t2",
            "/run/t2",
        ),
        (
            "branch-allow",
            "BRAID_BRANCH_ALLOW",
            "a.internal",
            "b.internal",
            "b.internal",
        ),
        ("max-steps", "BRAID_MAX_STEPS", "10", "20", "20"),
        (
            "sensitive-headers",
            "BRAID_SENSITIVE_HEADERS",
            "x-a",
            "x-b",
            "x-b",
        ),
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
        (
            "tls-cert",
            "BRAID_TLS_CERT",
            "/a/c.pem",
            "/b/c.pem",
            "/b/c.pem",
        ),
        (
            "tls-key",
            "BRAID_TLS_KEY",
            "/a/k.pem",
            "/b/k.pem",
            "/b/k.pem",
        ),
        (
            "tls-client-ca",
            "BRAID_TLS_CLIENT_CA",
            "/a/ca.pem",
            "/b/ca.pem",
            "/b/ca.pem",
        ),
        (
            "branch-ca",
            "BRAID_BRANCH_CA",
            "/a/bca.pem",
            "/b/bca.pem",
            "/b/bca.pem",
        ),
        (
            "branch-client-cert",
            "BRAID_BRANCH_CLIENT_CERT",
            "/a/bc.pem",
            "/b/bc.pem",
            "/b/bc.pem",
        ),
        (
            "branch-client-key",
            "BRAID_BRANCH_CLIENT_KEY",
            "/a/bk.pem",
            "/b/bk.pem",
            "/b/bk.pem",
        ),
        (
            "store-ca",
            "BRAID_STORE_CA",
            "/a/sca.pem",
            "/b/sca.pem",
            "/b/sca.pem",
        ),
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
        ("ADMIN_BASE_PATH", "/dtm"),
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
        ("admin-base-path", "/dtm"),
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
        let secs = |d: Duration| d.as_secs().to_string();
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or_else(|| "-".to_owned(), |p| p.display().to_string())
        };
        BTreeMap::from([
            ("http-port", c.server.http_port.to_string()),
            ("grpc-port", c.server.grpc_port.to_string()),
            ("bind", c.server.bind.clone()),
            ("store", c.store.dsn.clone()),
            (
                "store-password-file",
                c.store
                    .password_file
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
            ),
            ("retry-interval", secs(c.retry.interval)),
            ("timeout-to-fail", secs(c.retry.timeout_to_fail)),
            ("request-timeout", secs(c.retry.request_timeout)),
            ("scan-interval", secs(c.retry.scan_interval)),
            ("backoff-cap", secs(c.retry.backoff_cap)),
            ("retention", secs(c.store.retention)),
            ("node-id", c.cluster.node_id.clone()),
            ("partitions", c.cluster.partitions.to_string()),
            ("lease-backend", name(c.cluster.lease_backend)),
            ("lease-duration", secs(c.cluster.lease_duration)),
            ("lease-renew-deadline", secs(c.cluster.lease_renew_deadline)),
            ("lease-retry-period", secs(c.cluster.lease_retry_period)),
            ("lease-namespace", opt(&c.cluster.lease_namespace)),
            ("lease-prefix", c.cluster.lease_prefix.clone()),
            ("alert-webhook", opt(&c.alert.webhook)),
            ("alert-retry-limit", c.alert.retry_limit.to_string()),
            ("admin-ui", name(c.admin.ui)),
            ("admin-base-path", c.admin.base_path.as_str().to_owned()),
            ("log-level", c.log.level.clone()),
            ("log-format", name(c.log.format)),
            ("auth-token-admin", opt(&c.auth.token_admin)),
            ("auth-token-client", opt(&c.auth.token_client)),
            (
                "auth-anonymous-role",
                c.auth.anonymous_role.map(name).unwrap_or_default(),
            ),
            ("metrics-token", opt(&c.auth.metrics_token)),
            (
                "auth-tokens-file",
                c.auth
                    .tokens_file
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
            ),
            ("branch-allow", opt(&c.branches.allow)),
            ("max-steps", c.limits.max_steps.to_string()),
            ("sensitive-headers", opt(&c.branches.sensitive_headers)),
            ("kubernetes", name(c.kube.mode)),
            ("kube-namespace", opt(&c.kube.namespace)),
            ("writer-pipeline", opt(&c.writer.pipeline)),
            ("writer-max-batch", c.writer.max_batch.to_string()),
            (
                "writer-max-wait-ms",
                c.writer.max_wait.as_millis().to_string(),
            ),
            ("writer-max-batch-bytes", opt(&c.writer.max_batch_bytes)),
            (
                "max-inflight-bytes",
                c.limits.max_inflight_bytes.to_string(),
            ),
            (
                "max-concurrent-requests",
                c.limits.max_concurrent_requests.to_string(),
            ),
            ("max-connections", c.limits.max_connections.to_string()),
            ("header-read-timeout", secs(c.limits.header_read_timeout)),
            ("idle-timeout", secs(c.limits.idle_timeout)),
            ("tls-cert", path(&c.tls.cert)),
            ("tls-key", path(&c.tls.key)),
            ("tls-client-ca", path(&c.tls.client_ca)),
            ("branch-ca", path(&c.tls.branch_ca)),
            ("branch-client-cert", path(&c.tls.branch_client_cert)),
            ("branch-client-key", path(&c.tls.branch_client_key)),
            ("store-ca", path(&c.tls.store_ca)),
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
        assert_eq!(cfg.store.dsn, "mysql://root@127.0.0.1:3306/dtm");
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
