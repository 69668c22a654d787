//! The vocabulary of braid: global transactions, branches, statuses, ops and options. No I/O here.
//!
//! Names and string forms follow DTM's wire protocol (spec/dtm-protocol.md §2.4, §3), because SDKs and the
//! admin UI read them: statuses are lowercase words, ops are the DTM op names, branch ids are `01`, `02`, ...

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The bounds of every input, checked at the API (`api/request.rs`) with a 400 naming the field. Each is at
/// most the narrowest column of any store, so an input is accepted or refused the same on every store.
pub mod limits {
    /// Longest gid (the stores' gid column).
    pub const MAX_GID: usize = 128;
    /// Longest branch id.
    pub const MAX_BRANCH_ID: usize = 128;
    /// Longest branch, callback or subscriber URL (the branch URL column).
    pub const MAX_URL: usize = 1024;
    /// Longest topic name (the KV key column).
    pub const MAX_TOPIC: usize = 128;
    /// Most subscribers of one topic (a msg step to a topic becomes one branch per subscriber).
    pub const MAX_SUBSCRIBERS: usize = 1000;
    /// Longest subscriber remark.
    pub const MAX_REMARK: usize = 1024;
    /// Most steps (and payloads) of a saga or msg by default (`--max-steps`).
    pub const MAX_STEPS: usize = 1000;
    /// The highest `--max-steps` accepted.
    pub const MAX_STEPS_CEILING: usize = 100_000;

    static MAX_STEPS_IN_FORCE: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(MAX_STEPS);

    /// Most steps (and payloads) of a saga or msg: `--max-steps`, process-wide (one server per process).
    pub fn max_steps() -> usize {
        MAX_STEPS_IN_FORCE.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets [`max_steps`] at server start, clamped to 1..=[`MAX_STEPS_CEILING`].
    pub fn set_max_steps(n: usize) {
        MAX_STEPS_IN_FORCE.store(
            n.clamp(1, MAX_STEPS_CEILING),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    /// Most branch headers.
    pub const MAX_HEADERS: usize = 64;
    /// Longest branch header name.
    pub const MAX_HEADER_NAME: usize = 256;
    /// Longest branch header value.
    pub const MAX_HEADER_VALUE: usize = 8192;
    /// Largest `timeout_to_fail` and msg delay, in seconds (ten years).
    pub const MAX_TIMEOUT_SECS: i64 = 10 * 365 * 24 * 3600;
    /// Largest `request_timeout`, in seconds.
    pub const MAX_REQUEST_TIMEOUT_SECS: i64 = 3600;
    /// Largest `retry_interval`, in seconds (a day).
    pub const MAX_RETRY_INTERVAL_SECS: i64 = 24 * 3600;
    /// Largest `retry_limit`.
    pub const MAX_RETRY_LIMIT: i64 = 1000;
}

/// A global transaction id, as the client chose it (or `newGid` made it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Gid(String);

impl Gid {
    /// The longest gid the stores accept (DTM's SQL column width).
    pub const MAX_LEN: usize = limits::MAX_GID;

    /// Builds a gid the way DTM does: `\n`, `\r` and `;` are stripped. Fails on empty or overlong input.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let cleaned: String = raw
            .chars()
            .filter(|c| !matches!(c, '\n' | '\r' | ';'))
            .collect();
        if cleaned.is_empty() {
            return Err("gid must not be empty".to_owned());
        }
        if cleaned.len() > Self::MAX_LEN {
            return Err(format!("gid is longer than {} bytes", Self::MAX_LEN));
        }
        Ok(Self(cleaned))
    }

    /// A fresh random gid: 22 characters of base57, like DTM's shortuuid.
    pub fn generate() -> Self {
        Self(short_uuid())
    }

    /// The gid as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 22 base57 characters from a random UUID (the alphabet of the Go `shortuuid` package DTM uses).
pub fn short_uuid() -> String {
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut n = uuid::Uuid::new_v4().as_u128();
    let mut out = Vec::with_capacity(22);
    for _ in 0..22 {
        out.push(ALPHABET[(n % 57) as usize]);
        n /= 57;
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// The branch id of a step or a registered branch: `01`, `02`, ... (msg topic fan-out: `01-01`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BranchId(String);

impl BranchId {
    /// The id of the step at `index` (0-based): `01` for the first.
    pub fn for_step(index: usize) -> Self {
        Self(format!("{:02}", index + 1))
    }

    /// An id as given by a client (registerBranch).
    pub fn new(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BranchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Optimistic-concurrency version of a global transaction row; every conditional write bumps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(pub u64);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Which scan partition a transaction belongs to: `hash(gid) mod P`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Partition(pub u16);

impl Partition {
    /// The partition of `gid` when there are `count` partitions (FNV-1a, stable across builds and hosts).
    pub fn of(gid: &Gid, count: u16) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in gid.as_str().bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Self((hash % u64::from(count.max(1))) as u16)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// The fencing token of a partition: the store bumps it every time a replica takes the partition over, and
/// every claim and state change the recovery scanner makes for the partition carries it. A write whose epoch
/// is no longer the stored one is refused, so a replica that lost a partition cannot overwrite the progress of
/// the one that took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LeaseEpoch(pub u64);

impl fmt::Display for LeaseEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// A partition together with the epoch at which this replica took it: what fenced writes carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence {
    /// The partition.
    pub partition: Partition,
    /// The epoch its owner took it at.
    pub epoch: LeaseEpoch,
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.partition, self.epoch)
    }
}

/// Milliseconds since the Unix epoch, on the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub i64);

impl Millis {
    /// `self + secs` seconds.
    pub fn plus_secs(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs.saturating_mul(1000)))
    }

    /// Whole seconds elapsed from `earlier` to `self` (0 if negative).
    pub fn secs_since(self, earlier: Millis) -> i64 {
        self.0.saturating_sub(earlier.0).max(0) / 1000
    }

    /// RFC 3339 in the server's local offset with second precision, as DTM renders times.
    pub fn to_rfc3339(self) -> String {
        use chrono::TimeZone;
        match chrono::Local.timestamp_millis_opt(self.0) {
            chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
            }
            chrono::LocalResult::None => String::new(),
        }
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire form.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} '{}' (expected one of: {})",
                        stringify!($name),
                        other,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_enum! {
    /// The kind of a global transaction.
    TransType {
        /// Saga: actions with compensations.
        Saga => "saga",
        /// Two-phase message (outbox).
        Msg => "msg",
        /// Try-confirm-cancel.
        Tcc => "tcc",
        /// XA two-phase commit driven by resource managers.
        Xa => "xa",
        /// Client-driven workflow.
        Workflow => "workflow",
    }
}

string_enum! {
    /// Status of a global transaction. `succeed` and `failed` are final.
    GlobalStatus {
        /// Created by prepare; waits for submit (or a timeout).
        Prepared => "prepared",
        /// Submitted; the engine moves it forward.
        Submitted => "submitted",
        /// Rolling back.
        Aborting => "aborting",
        /// Finished successfully (final).
        Succeed => "succeed",
        /// Finished by rollback or force-stop (final).
        Failed => "failed",
    }
}

impl GlobalStatus {
    /// Whether no further change can happen.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeed | Self::Failed)
    }
}

string_enum! {
    /// Status of one branch op.
    BranchStatus {
        /// Not done (yet).
        Prepared => "prepared",
        /// Done.
        Succeed => "succeed",
        /// Failed for good (only a saga action can end here).
        Failed => "failed",
    }
}

string_enum! {
    /// What a branch row does.
    Op {
        /// Saga/msg forward step; XA phase one; workflow step.
        Action => "action",
        /// Saga compensation.
        Compensate => "compensate",
        /// TCC try (called by the client, never stored).
        Try => "try",
        /// TCC confirm.
        Confirm => "confirm",
        /// TCC cancel.
        Cancel => "cancel",
        /// XA / workflow commit.
        Commit => "commit",
        /// XA / workflow rollback.
        Rollback => "rollback",
        /// msg back-check and DoAndSubmit barrier.
        Msg => "msg",
        /// Workflow XA business step.
        Business => "business",
    }
}

string_enum! {
    /// How branches are called.
    Protocol {
        /// HTTP (the default).
        Http => "http",
        /// gRPC.
        Grpc => "grpc",
        /// JSON-RPC 2.0 over HTTP.
        JsonRpc => "json-rpc",
    }
}

/// The per-transaction options (DTM's `TransOptions`), stored as JSON with the transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransOptions {
    /// Process synchronously and report the final result.
    #[serde(skip_serializing_if = "is_false")]
    pub wait_result: bool,
    /// Seconds after creation after which the transaction fails (saga: 0 = never).
    #[serde(skip_serializing_if = "is_zero")]
    pub timeout_to_fail: i64,
    /// Seconds allowed for each branch call (0 = server default).
    #[serde(skip_serializing_if = "is_zero")]
    pub request_timeout: i64,
    /// Base retry interval in seconds (0 = server default).
    #[serde(skip_serializing_if = "is_zero")]
    pub retry_interval: i64,
    /// Extra headers (gRPC metadata) sent on every branch call.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub branch_headers: BTreeMap<String, String>,
    /// Saga: maximum immediate retries of an action (0 = unlimited, retried by the scanner).
    #[serde(skip_serializing_if = "is_zero")]
    pub retry_limit: i64,
    /// Saga: retries used so far (persisted by braid, unlike DTM).
    #[serde(skip_serializing_if = "is_zero")]
    pub retry_count: i64,
    /// msg: call branches in parallel.
    pub concurrent: bool,
    /// Upper bound of the retry backoff in seconds (0 = server default); set by a `TransactionPolicy`.
    #[serde(skip_serializing_if = "is_zero")]
    pub backoff_cap: i64,
    /// `namespace/name` of the `TransactionPolicy` whose defaults were applied at creation (empty: none).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub policy: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A stored global transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalTxn {
    /// Store row id (0 before insert).
    pub id: i64,
    /// Global id.
    pub gid: Gid,
    /// Transaction kind.
    pub trans_type: TransType,
    /// Current status.
    pub status: GlobalStatus,
    /// msg back-check URL, or the workflow resume callback.
    pub query_prepared: String,
    /// Branch call protocol.
    pub protocol: Protocol,
    /// saga orders/concurrency, msg delay, workflow name and data (JSON text).
    pub custom_data: String,
    /// Options.
    pub options: TransOptions,
    /// Creation time.
    pub create_time: Millis,
    /// Last update time.
    pub update_time: Millis,
    /// When it succeeded.
    pub finish_time: Option<Millis>,
    /// When it failed.
    pub rollback_time: Option<Millis>,
    /// Workflow result (base64), set by the client's submit.
    pub result: String,
    /// Why it rolled back.
    pub rollback_reason: String,
    /// Current retry interval in seconds.
    pub next_cron_interval: i64,
    /// When the scanner should look at it next; `None` once final.
    pub next_cron_time: Option<Millis>,
    /// Token of the last scanner claim.
    pub owner: String,
    /// Optimistic-concurrency version.
    pub version: Version,
    /// Scan partition.
    pub partition: Partition,
}

impl GlobalTxn {
    /// Whether the transaction is prepared or aborting and its timeout has passed at `now`.
    /// `default_timeout` applies when the transaction has none, except for saga (0 = never).
    pub fn is_timed_out(&self, now: Millis, default_timeout: i64) -> bool {
        let timeout = self.effective_timeout(default_timeout);
        timeout > 0 && now.0.saturating_sub(self.create_time.0) >= timeout.saturating_mul(1000)
    }

    /// The timeout in seconds that applies to this transaction (0 = none).
    pub fn effective_timeout(&self, default_timeout: i64) -> i64 {
        if self.options.timeout_to_fail > 0 {
            self.options.timeout_to_fail
        } else if self.trans_type == TransType::Saga || self.trans_type == TransType::Workflow {
            0
        } else {
            default_timeout
        }
    }
}

/// A stored branch op.
#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    /// Store row id (0 before insert).
    pub id: i64,
    /// The owning transaction.
    pub gid: Gid,
    /// URL (or gRPC target) to call; empty means "succeed at once".
    pub url: String,
    /// Request body.
    pub bin_data: Vec<u8>,
    /// Branch id.
    pub branch_id: BranchId,
    /// What the call does.
    pub op: Op,
    /// Status.
    pub status: BranchStatus,
    /// Creation time.
    pub create_time: Millis,
    /// Last update.
    pub update_time: Millis,
    /// When it succeeded.
    pub finish_time: Option<Millis>,
    /// When it failed.
    pub rollback_time: Option<Millis>,
}

impl Branch {
    /// A new `prepared` branch created at `now`.
    pub fn new(
        gid: &Gid,
        branch_id: BranchId,
        op: Op,
        url: String,
        bin_data: Vec<u8>,
        now: Millis,
    ) -> Self {
        Self {
            id: 0,
            gid: gid.clone(),
            url,
            bin_data,
            branch_id,
            op,
            status: BranchStatus::Prepared,
            create_time: now,
            update_time: now,
            finish_time: None,
            rollback_time: None,
        }
    }
}

/// A key-value record (topics live in category `topics`).
#[derive(Debug, Clone, PartialEq)]
pub struct KvRecord {
    /// Row id.
    pub id: i64,
    /// Category.
    pub cat: String,
    /// Key.
    pub k: String,
    /// Value.
    pub v: String,
    /// Optimistic-concurrency version (starts at 1).
    pub version: i64,
    /// Creation time.
    pub create_time: Millis,
    /// Last update.
    pub update_time: Millis,
}

/// One subscriber of a topic, as stored in the `topics` KV value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    /// Where messages of the topic are delivered.
    pub url: String,
    /// Free text.
    #[serde(default)]
    pub remark: String,
}

/// The KV category holding topics.
pub const TOPICS_CAT: &str = "topics";

/// The URL scheme of a msg step that fans out to a topic's subscribers.
pub const TOPIC_SCHEME: &str = "topic://";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_strips_separators_and_rejects_empty() {
        assert_eq!(Gid::parse("a;b\nc\r").unwrap().as_str(), "abc");
        assert!(Gid::parse(";\n").is_err());
        assert!(Gid::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn short_uuid_is_22_base57_chars() {
        let id = short_uuid();
        assert_eq!(id.len(), 22);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() && !"01IOl".contains(c))
        );
        assert_ne!(id, short_uuid());
    }

    #[test]
    fn enums_round_trip_and_reject_unknown() {
        for s in GlobalStatus::ALL {
            assert_eq!(s.as_str().parse::<GlobalStatus>().unwrap(), *s);
        }
        for t in TransType::ALL {
            assert_eq!(serde_json::to_string(t).unwrap(), format!("\"{t}\""));
        }
        let err = "sagaa".parse::<TransType>().unwrap_err();
        assert!(err.contains("sagaa") && err.contains("saga"), "{err}");
    }

    #[test]
    fn options_json_omits_defaults_but_keeps_concurrent() {
        let json = serde_json::to_string(&TransOptions::default()).unwrap();
        assert_eq!(json, r#"{"concurrent":false}"#);
        let parsed: TransOptions =
            serde_json::from_str(r#"{"retry_limit":3,"unknown":1}"#).unwrap();
        assert_eq!(parsed.retry_limit, 3);
    }

    proptest::proptest! {
        #[test]
        fn partitions_stay_in_range(gid in "[a-zA-Z0-9_-]{1,64}", count in 1u16..1024) {
            let gid = Gid::parse(&gid).unwrap();
            let p = Partition::of(&gid, count);
            proptest::prop_assert!(p.0 < count);
            proptest::prop_assert_eq!(p, Partition::of(&gid, count));
        }
    }

    #[test]
    fn partitions_spread_evenly() {
        let mut counts = [0u32; 64];
        for i in 0..64_000 {
            counts[Partition::of(&Gid::parse(&format!("gid-{i}")).unwrap(), 64).0 as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1200, "min {min} max {max}");
    }
}
