//! Every metric braid exports, defined once. DTM's names (spec §13) are kept so existing dashboards work;
//! braid's own are `braid_<area>_<thing>_<unit>`. Labels have bounded cardinality: never a gid or a URL.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The metrics of one server, in an owned registry (tests get an isolated one each).
pub struct Metrics {
    registry: Registry,
    /// `dtm_server_process_total{type,api,status}`: API requests.
    pub server_process: IntCounterVec,
    /// `dtm_server_response_duration{type,api}`: API latency in seconds.
    pub server_response_duration: HistogramVec,
    /// `dtm_transaction_process_total{model,status}`: processing passes.
    pub transaction_process: IntCounterVec,
    /// `dtm_transaction_handled_duration{model}`: seconds from creation to each pass.
    pub transaction_handled_duration: HistogramVec,
    /// `dtm_branch_process_total{model,branchtype,status}`: branch calls. DTM also labels them with the
    /// branch id, which callers choose: an unbounded set of series, so braid leaves that label out, and
    /// `branchtype` is the op from a fixed set (`callback` for workflow resume calls).
    pub branch_process: IntCounterVec,
    /// `braid_branch_call_duration_seconds{protocol,outcome}`.
    pub branch_call_duration: HistogramVec,
    /// `braid_transactions_finished_total{trans_type,status}`.
    pub transactions_finished: IntCounterVec,
    /// `braid_store_commits_total`: database transactions committed by the group-commit writer.
    pub store_commits: IntCounter,
    /// `braid_store_commit_errors_total{error}`.
    pub store_commit_errors: IntCounterVec,
    /// `braid_store_batch_size`: writes per committed batch.
    pub store_batch_size: Histogram,
    /// `braid_store_batch_bytes`: estimated bytes per committed batch (kept under the writer's byte limit).
    pub store_batch_bytes: Histogram,
    /// `braid_store_commit_duration_seconds`.
    pub store_commit_duration: Histogram,
    /// `braid_store_queue_depth`: writes waiting for the writer.
    pub store_queue_depth: IntGauge,
    /// `braid_api_rejected_total{transport,reason}`: requests refused with 503 before their body was read
    /// (`reason`: `inflight_bytes`, `concurrent_requests`).
    pub api_rejected: IntCounterVec,
    /// `braid_api_inflight_bytes`: request body bytes held by requests in progress (HTTP and gRPC).
    pub api_inflight_bytes: IntGauge,
    /// `braid_api_inflight_requests`: requests in progress (ping, ready and metrics not counted).
    pub api_inflight_requests: IntGauge,
    /// `braid_api_connections{listener}`: open client connections (`http`, `grpc`).
    pub api_connections: IntGaugeVec,
    /// `braid_scanner_claimed_total`: transactions claimed by the recovery scanner.
    pub scanner_claimed: IntCounter,
    /// `braid_scanner_errors_total{error}`.
    pub scanner_errors: IntCounterVec,
    /// `braid_engine_inflight`: processing passes running now.
    pub engine_inflight: IntGaugeVec,
    /// `braid_xa_phase2_stuck_transactions{op}`: XA transactions whose phase 2 (`commit`/`rollback`) failed
    /// to land and is being retried, so their resource managers still hold prepared XA transactions. Read
    /// from the store at each scrape, so every replica reports the whole cluster's count.
    pub xa_phase2_stuck: IntGaugeVec,
    /// `braid_cluster_members`: live members as this replica sees them.
    pub cluster_members: IntGauge,
    /// `braid_cluster_partitions_owned`: partitions this replica owns (and scans).
    pub cluster_partitions_owned: IntGauge,
    /// `braid_cluster_lease_acquisitions_total`: partitions taken over (each bumps the partition's epoch).
    pub cluster_lease_acquisitions: IntCounter,
    /// `braid_cluster_lease_releases_total`: partitions handed to another member.
    pub cluster_lease_releases: IntCounter,
    /// `braid_cluster_lease_losses_total`: partitions lost (taken by another replica, or not renewed in time).
    pub cluster_lease_losses: IntCounter,
    /// `braid_cluster_lease_renew_failures_total`: lease renewals that could not be made (backend errors).
    pub cluster_lease_renew_failures: IntCounter,
    /// `braid_cluster_fenced_rejections_total{op}`: scanner claims (`op="claim"`, per partition) and pass
    /// writes (`op="write"`) the store refused because this replica's epoch was stale.
    pub cluster_fenced_rejections: IntCounterVec,
    /// `braid_auth_failures_total{reason}`: requests refused by authentication (`missing`, `invalid`,
    /// `forbidden`).
    pub auth_failures: IntCounterVec,
    /// `braid_policy_reconcile_total{outcome}`: TransactionPolicy status reconciles (`ok`, `error`).
    pub policy_reconcile: IntCounterVec,
    /// `braid_discovery_resolve_total{outcome}`: branch URLs resolved through EndpointSlices
    /// (`endpoint`, `no_endpoints`).
    pub discovery_resolve: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error caught by the unit test below.
    #[allow(clippy::expect_used)]
    r.expect("static metric definition is valid and unique")
}

impl Metrics {
    /// All metrics, registered in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| must(registry.register(c));
        let latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];

        let info = must(IntGaugeVec::new(
            Opts::new("dtm_server_info", "Server information (value is always 1)"),
            &["gin_version", "grpc_version", "braid_version"],
        ));
        info.with_label_values(&["braid-axum", "braid-tonic", env!("CARGO_PKG_VERSION")])
            .set(1);
        reg(Box::new(info));

        let m = Self {
            server_process: must(IntCounterVec::new(
                Opts::new("dtm_server_process_total", "API requests handled"),
                &["type", "api", "status"],
            )),
            server_response_duration: must(HistogramVec::new(
                HistogramOpts::new(
                    "dtm_server_response_duration",
                    "API response time in seconds",
                ),
                &["type", "api"],
            )),
            transaction_process: must(IntCounterVec::new(
                Opts::new(
                    "dtm_transaction_process_total",
                    "Transaction processing passes",
                ),
                &["model", "status"],
            )),
            transaction_handled_duration: must(HistogramVec::new(
                HistogramOpts::new(
                    "dtm_transaction_handled_duration",
                    "Seconds from creation to each processing pass",
                ),
                &["model"],
            )),
            branch_process: must(IntCounterVec::new(
                Opts::new("dtm_branch_process_total", "Branch calls"),
                &["model", "branchtype", "status"],
            )),
            branch_call_duration: must(HistogramVec::new(
                HistogramOpts::new("braid_branch_call_duration_seconds", "Branch call time")
                    .buckets(latency.clone()),
                &["protocol", "outcome"],
            )),
            transactions_finished: must(IntCounterVec::new(
                Opts::new(
                    "braid_transactions_finished_total",
                    "Transactions that reached a final status",
                ),
                &["trans_type", "status"],
            )),
            store_commits: must(IntCounter::new(
                "braid_store_commits_total",
                "Database transactions committed by the writer",
            )),
            store_commit_errors: must(IntCounterVec::new(
                Opts::new("braid_store_commit_errors_total", "Failed writer commits"),
                &["error"],
            )),
            store_batch_size: must(Histogram::with_opts(
                HistogramOpts::new("braid_store_batch_size", "Writes per committed batch").buckets(
                    vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                ),
            )),
            store_batch_bytes: must(Histogram::with_opts(
                HistogramOpts::new(
                    "braid_store_batch_bytes",
                    "Estimated bytes per committed batch",
                )
                .buckets(prometheus::exponential_buckets(1024.0, 4.0, 9).unwrap_or_default()),
            )),
            store_commit_duration: must(Histogram::with_opts(
                HistogramOpts::new(
                    "braid_store_commit_duration_seconds",
                    "Time to apply and commit one batch",
                )
                .buckets(latency),
            )),
            store_queue_depth: must(IntGauge::new(
                "braid_store_queue_depth",
                "Writes waiting for the writer",
            )),
            api_rejected: must(IntCounterVec::new(
                Opts::new(
                    "braid_api_rejected_total",
                    "Requests refused with 503 because the server is at a load limit",
                ),
                &["transport", "reason"],
            )),
            api_inflight_bytes: must(IntGauge::new(
                "braid_api_inflight_bytes",
                "Request body bytes held by requests in progress",
            )),
            api_inflight_requests: must(IntGauge::new(
                "braid_api_inflight_requests",
                "Requests in progress",
            )),
            api_connections: must(IntGaugeVec::new(
                Opts::new("braid_api_connections", "Open client connections"),
                &["listener"],
            )),
            scanner_claimed: must(IntCounter::new(
                "braid_scanner_claimed_total",
                "Transactions claimed by the recovery scanner",
            )),
            scanner_errors: must(IntCounterVec::new(
                Opts::new("braid_scanner_errors_total", "Recovery scan failures"),
                &["error"],
            )),
            engine_inflight: must(IntGaugeVec::new(
                Opts::new("braid_engine_inflight", "Processing passes running now"),
                &["trans_type"],
            )),
            xa_phase2_stuck: must(IntGaugeVec::new(
                Opts::new(
                    "braid_xa_phase2_stuck_transactions",
                    "XA transactions whose phase 2 failed to land and is being retried (resource managers hold prepared XA transactions)",
                ),
                &["op"],
            )),
            cluster_members: must(IntGauge::new(
                "braid_cluster_members",
                "Live cluster members as this replica sees them",
            )),
            cluster_partitions_owned: must(IntGauge::new(
                "braid_cluster_partitions_owned",
                "Partitions this replica owns and scans",
            )),
            cluster_lease_acquisitions: must(IntCounter::new(
                "braid_cluster_lease_acquisitions_total",
                "Partitions taken over by this replica",
            )),
            cluster_lease_releases: must(IntCounter::new(
                "braid_cluster_lease_releases_total",
                "Partitions this replica handed to another member",
            )),
            cluster_lease_losses: must(IntCounter::new(
                "braid_cluster_lease_losses_total",
                "Partitions this replica lost (taken by another, or not renewed within the renew deadline)",
            )),
            cluster_lease_renew_failures: must(IntCounter::new(
                "braid_cluster_lease_renew_failures_total",
                "Lease renewals that failed with a backend error",
            )),
            auth_failures: must(IntCounterVec::new(
                Opts::new(
                    "braid_auth_failures_total",
                    "Requests refused by authentication, by reason",
                ),
                &["reason"],
            )),
            cluster_fenced_rejections: must(IntCounterVec::new(
                Opts::new(
                    "braid_cluster_fenced_rejections_total",
                    "Scanner claims and writes refused by the store because the partition epoch was stale",
                ),
                &["op"],
            )),
            policy_reconcile: must(IntCounterVec::new(
                Opts::new(
                    "braid_policy_reconcile_total",
                    "TransactionPolicy status reconciles by outcome",
                ),
                &["outcome"],
            )),
            discovery_resolve: must(IntCounterVec::new(
                Opts::new(
                    "braid_discovery_resolve_total",
                    "Branch URLs resolved through EndpointSlices by outcome",
                ),
                &["outcome"],
            )),
            registry: registry.clone(),
        };
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        // process_start_time_seconds, ... as every Prometheus client exports them (DTM's dashboards use
        // them).
        #[cfg(target_os = "linux")]
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        reg(Box::new(m.server_process.clone()));
        reg(Box::new(m.server_response_duration.clone()));
        reg(Box::new(m.transaction_process.clone()));
        reg(Box::new(m.transaction_handled_duration.clone()));
        reg(Box::new(m.branch_process.clone()));
        reg(Box::new(m.branch_call_duration.clone()));
        reg(Box::new(m.transactions_finished.clone()));
        reg(Box::new(m.store_commits.clone()));
        reg(Box::new(m.store_commit_errors.clone()));
        reg(Box::new(m.store_batch_size.clone()));
        reg(Box::new(m.store_batch_bytes.clone()));
        reg(Box::new(m.store_commit_duration.clone()));
        reg(Box::new(m.store_queue_depth.clone()));
        reg(Box::new(m.api_rejected.clone()));
        reg(Box::new(m.api_inflight_bytes.clone()));
        reg(Box::new(m.api_inflight_requests.clone()));
        reg(Box::new(m.api_connections.clone()));
        reg(Box::new(m.scanner_claimed.clone()));
        reg(Box::new(m.scanner_errors.clone()));
        reg(Box::new(m.engine_inflight.clone()));
        reg(Box::new(m.xa_phase2_stuck.clone()));
        reg(Box::new(m.cluster_members.clone()));
        reg(Box::new(m.cluster_partitions_owned.clone()));
        reg(Box::new(m.cluster_lease_acquisitions.clone()));
        reg(Box::new(m.cluster_lease_releases.clone()));
        reg(Box::new(m.cluster_lease_losses.clone()));
        reg(Box::new(m.cluster_lease_renew_failures.clone()));
        reg(Box::new(m.cluster_fenced_rejections.clone()));
        reg(Box::new(m.auth_failures.clone()));
        reg(Box::new(m.policy_reconcile.clone()));
        reg(Box::new(m.discovery_resolve.clone()));
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_every_metric_once_and_renders_dtm_names() {
        let m = Metrics::new();
        m.server_process
            .with_label_values(&["http", "submit", "ok"])
            .inc();
        m.store_batch_size.observe(3.0);
        let text = m.render();
        for name in [
            "dtm_server_info",
            "dtm_server_process_total",
            "braid_store_batch_size_bucket",
            "braid_cluster_members",
            "braid_cluster_partitions_owned",
            "braid_cluster_lease_acquisitions_total",
            "braid_cluster_lease_losses_total",
            "braid_cluster_lease_renew_failures_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
