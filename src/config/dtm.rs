//! DTM's own configuration, read as is: a DTM `conf.yml` given to `--config`, and DTM's environment
//! variables. DTM names every setting by its YAML path, and its environment variable is that path joined
//! with `_`, CamelCase split and upper-cased (`Store.Driver` -> `STORE_DRIVER`, `HttpPort` -> `HTTP_PORT`).
//! So a DTM file is read by flattening it to those names and taking them as DTM's environment is taken
//! ([`ServeArgs::from_dtm_env`](super::ServeArgs)).
//!
//! Invariant: no DTM setting is dropped without a word. Each name is either honoured (it sets a braid
//! setting) or listed in [`UNSUPPORTED`] with the reason, which start-up logs once as a warning when the
//! file or the environment sets it. A name in neither list is reported as unknown.

use std::collections::BTreeMap;

use super::ConfigError;

/// DTM's top-level keys: a YAML file with one of these at the top is a DTM file.
const DTM_TOP_KEYS: &[&str] = &[
    "Store",
    "TransCronInterval",
    "TimeoutToFail",
    "RetryInterval",
    "RequestTimeout",
    "HttpPort",
    "GrpcPort",
    "JsonRpcPort",
    "MicroService",
    "HttpMicroService",
    "UpdateBranchSync",
    "UpdateBranchAsyncGoroutineNum",
    "LogLevel",
    "Log",
    "TimeZoneOffset",
    "ConfigUpdateInterval",
    "AlertRetryLimit",
    "AlertWebHook",
    "AdminBasePath",
    "GrpcServiceConfig",
];

/// DTM names braid honours (through `from_dtm_env`; the store DSN from the `STORE_*` names).
const HONOURED: &[&str] = &[
    "STORE_DRIVER",
    "STORE_HOST",
    "STORE_PORT",
    "STORE_USER",
    "STORE_PASSWORD",
    "STORE_DB",
    "STORE_FINISHED_DATA_EXPIRE",
    "TRANS_CRON_INTERVAL",
    "TIMEOUT_TO_FAIL",
    "RETRY_INTERVAL",
    "REQUEST_TIMEOUT",
    "HTTP_PORT",
    "GRPC_PORT",
    "LOG_LEVEL",
    "ALERT_RETRY_LIMIT",
    "ALERT_WEB_HOOK",
    "ADMIN_BASE_PATH",
];

/// DTM names braid has no equivalent for, and why.
pub(super) const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "JSON_RPC_PORT",
        "braid serves JSON-RPC on the HTTP port at /api/json-rpc (DTM does too; the port is unused there)",
    ),
    (
        "STORE_SCHEMA",
        "braid keeps its own braid_* tables in the DSN's database and PostgreSQL's default search_path",
    ),
    (
        "STORE_MAX_OPEN_CONNS",
        "braid's pools are sized by the store (32 connections on MySQL and PostgreSQL)",
    ),
    (
        "STORE_MAX_IDLE_CONNS",
        "braid's pools are sized by the store (32 connections on MySQL and PostgreSQL)",
    ),
    (
        "STORE_CONN_MAX_LIFE_TIME",
        "braid's pooled connections live at most 5 minutes",
    ),
    (
        "STORE_DATA_EXPIRE",
        "braid never expires an unfinished transaction; finished ones follow --retention",
    ),
    (
        "STORE_REDIS_PREFIX",
        "braid's Redis keys carry one hash tag per partition so a cluster spreads them",
    ),
    (
        "STORE_TRANS_GLOBAL_TABLE",
        "braid keeps transactions in its own braid_txn table",
    ),
    (
        "STORE_TRANS_BRANCH_OP_TABLE",
        "braid keeps branches in its own braid_branch table",
    ),
    (
        "MICRO_SERVICE_DRIVER",
        "service registries other than Kubernetes are not supported yet; use resolvable host names",
    ),
    (
        "MICRO_SERVICE_TARGET",
        "service registries other than Kubernetes are not supported yet; use resolvable host names",
    ),
    (
        "MICRO_SERVICE_END_POINT",
        "braid does not register itself in a service registry; expose it through a Service",
    ),
    (
        "HTTP_MICRO_SERVICE_DRIVER",
        "declared by DTM but unused there; braid has no equivalent",
    ),
    (
        "HTTP_MICRO_SERVICE_REGISTRY_TYPE",
        "declared by DTM but unused there; braid has no equivalent",
    ),
    (
        "HTTP_MICRO_SERVICE_REGISTRY_ADDRESS",
        "declared by DTM but unused there; braid has no equivalent",
    ),
    (
        "HTTP_MICRO_SERVICE_REGISTRY_OPTIONS",
        "declared by DTM but unused there; braid has no equivalent",
    ),
    (
        "HTTP_MICRO_SERVICE_TARGET",
        "declared by DTM but unused there; braid has no equivalent",
    ),
    (
        "HTTP_MICRO_SERVICE_END_POINT",
        "declared by DTM but unused there; braid has no equivalent",
    ),
    (
        "UPDATE_BRANCH_SYNC",
        "braid always stores branch results before it goes on, through its group-commit writer",
    ),
    (
        "UPDATE_BRANCH_ASYNC_GOROUTINE_NUM",
        "braid always stores branch results before it goes on, through its group-commit writer",
    ),
    (
        "LOG_OUTPUTS",
        "braid logs to stderr (--log-format text|json); files and rotation belong to the platform",
    ),
    (
        "LOG_ROTATION_ENABLE",
        "braid logs to stderr; files and rotation belong to the platform",
    ),
    (
        "LOG_ROTATION_CONFIG_JSON",
        "braid logs to stderr; files and rotation belong to the platform",
    ),
    (
        "TIME_ZONE_OFFSET",
        "braid renders times in RFC 3339 with the server's UTC offset; set TZ for the process instead",
    ),
    (
        "CONFIG_UPDATE_INTERVAL",
        "braid reads topics from the store when a message is prepared, so there is nothing to refresh",
    ),
    (
        "GRPC_SERVICE_CONFIG",
        "braid balances gRPC branch calls over a service's endpoints itself (Kubernetes discovery)",
    ),
];

/// DTM's environment name for a YAML path: `Store.MaxOpenConns` -> `STORE_MAX_OPEN_CONNS`.
pub(super) fn env_name(path: &[&str]) -> String {
    let mut out = String::new();
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            out.push('_');
        }
        let chars: Vec<char> = part.chars().collect();
        for (j, c) in chars.iter().enumerate() {
            // A new word starts at an upper-case letter after a lower-case one or a digit, or before a
            // lower-case one in a run of capitals (`JSONRPCPort` -> `JSONRPC_PORT`).
            let prev = j.checked_sub(1).and_then(|k| chars.get(k));
            let next = chars.get(j + 1);
            if c.is_uppercase()
                && j > 0
                && (prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit())
                    || (prev.is_some_and(|p| p.is_uppercase())
                        && next.is_some_and(|n| n.is_lowercase())))
            {
                out.push('_');
            }
            out.extend(c.to_uppercase());
        }
    }
    out
}

/// Whether a parsed YAML document is DTM's format: a mapping with one of DTM's top-level keys.
pub(super) fn is_dtm(doc: &serde_json::Value) -> bool {
    doc.as_object()
        .is_some_and(|m| m.keys().any(|k| DTM_TOP_KEYS.contains(&k.as_str())))
}

/// A DTM file flattened to DTM's environment names; scalars as text, as DTM's environment carries them.
pub(super) fn flatten(doc: &serde_json::Value) -> Result<BTreeMap<String, String>, ConfigError> {
    fn walk(
        v: &serde_json::Value,
        path: &mut Vec<String>,
        out: &mut BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        let name = || env_name(&path.iter().map(String::as_str).collect::<Vec<_>>());
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, out)?;
                    path.pop();
                }
            }
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => {
                out.insert(name(), s.clone());
            }
            serde_json::Value::Bool(b) => {
                out.insert(name(), if *b { "1" } else { "0" }.to_owned());
            }
            serde_json::Value::Number(n) => {
                out.insert(name(), n.to_string());
            }
            serde_json::Value::Array(_) => {
                return Err(ConfigError(format!(
                    "DTM config key {} holds a list, which DTM's format does not have",
                    path.join(".")
                )));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(doc, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// The warnings for DTM names that are set (in `names`) but not honoured: one per name, with the reason.
pub(super) fn warnings<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    for name in names {
        if HONOURED.contains(&name) {
            continue;
        }
        match UNSUPPORTED.iter().find(|(n, _)| *n == name) {
            Some((_, why)) => out.push(format!("DTM setting {name} is not used: {why}")),
            None => out.push(format!(
                "DTM setting {name} is not a setting braid knows (nor DTM, as far as braid knows); ignored"
            )),
        }
    }
    out
}

/// The DTM environment names set in the process environment that braid does not honour.
pub(super) fn env_warnings(get: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let set = UNSUPPORTED
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| get(n).is_some_and(|v| !v.is_empty()));
    warnings(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_dtm() {
        let cases: &[(&[&str], &str)] = &[
            (&["Store", "Driver"], "STORE_DRIVER"),
            (&["HttpPort"], "HTTP_PORT"),
            (&["JsonRpcPort"], "JSON_RPC_PORT"),
            (&["MicroService", "EndPoint"], "MICRO_SERVICE_END_POINT"),
            (&["Store", "RedisPrefix"], "STORE_REDIS_PREFIX"),
            (&["Store", "ConnMaxLifeTime"], "STORE_CONN_MAX_LIFE_TIME"),
            (&["Log", "RotationConfigJSON"], "LOG_ROTATION_CONFIG_JSON"),
            (&["AlertWebHook"], "ALERT_WEB_HOOK"),
            (
                &["UpdateBranchAsyncGoroutineNum"],
                "UPDATE_BRANCH_ASYNC_GOROUTINE_NUM",
            ),
        ];
        for (path, want) in cases {
            assert_eq!(env_name(path), *want, "{path:?}");
        }
    }

    #[test]
    fn every_dtm_name_is_honoured_or_explained() {
        for (name, why) in UNSUPPORTED {
            assert!(!HONOURED.contains(name), "{name} is both");
            assert!(!why.is_empty());
        }
        let w = warnings(["HTTP_PORT", "UPDATE_BRANCH_SYNC", "NO_SUCH_THING"]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("UPDATE_BRANCH_SYNC") && w[0].contains("group-commit"),
            "{w:?}"
        );
        assert!(w[1].contains("NO_SUCH_THING"), "{w:?}");
    }
}
