//! JSON shapes of stored records, as DTM renders them (spec §3.1, §3.2, §4.9): keys omitted when empty,
//! times in RFC 3339 with the server's offset, branch bodies in base64.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::model::{Branch, GlobalTxn, KvRecord, Millis, TransOptions};

fn put_str(m: &mut Map<String, Value>, k: &str, v: &str) {
    if !v.is_empty() {
        m.insert(k.to_owned(), Value::String(v.to_owned()));
    }
}

fn put_time(m: &mut Map<String, Value>, k: &str, v: Option<Millis>) {
    if let Some(t) = v {
        m.insert(k.to_owned(), Value::String(t.to_rfc3339()));
    }
}

fn put_num(m: &mut Map<String, Value>, k: &str, v: i64) {
    if v != 0 {
        m.insert(k.to_owned(), json!(v));
    }
}

/// Header-name patterns of `--sensitive-headers`, lowercased; process-wide (one server per process).
static EXTRA_SENSITIVE: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Sets the extra sensitive header-name patterns (`--sensitive-headers`): names, or patterns with `*`
/// for any run of characters (`x-api-*`, `*-signature`). They add to the built-in ones, never replace
/// them.
pub fn set_sensitive_headers(patterns: &[String]) {
    let patterns = patterns
        .iter()
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    *EXTRA_SENSITIVE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = patterns;
}

/// Whether `name` (lowercase) matches `pattern` (lowercase, `*` for any run of characters).
fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether a branch header carries a secret by its name: `Authorization`, `Proxy-Authorization`, `Cookie`,
/// a name containing `token`, `secret`, `key`, `password` or `session` (any case), or one matching
/// `--sensitive-headers`. Such values are shown as `***` wherever braid renders a transaction; branches
/// still receive them unchanged.
pub(crate) fn is_sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    if matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie"
    ) || ["token", "secret", "key", "password", "session"]
        .iter()
        .any(|w| n.contains(w))
    {
        return true;
    }
    EXTRA_SENSITIVE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .any(|p| glob_match(p, &n))
}

/// The options as rendered: sensitive branch header values masked.
fn shown_options(o: &TransOptions) -> TransOptions {
    let mut shown = o.clone();
    for (name, value) in &mut shown.branch_headers {
        if is_sensitive_header(name) {
            "***".clone_into(value);
        }
    }
    shown
}

/// A global transaction (sensitive branch header values masked).
pub(crate) fn txn(t: &GlobalTxn) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(t.id));
    m.insert("create_time".into(), json!(t.create_time.to_rfc3339()));
    m.insert("update_time".into(), json!(t.update_time.to_rfc3339()));
    put_str(&mut m, "gid", t.gid.as_str());
    put_str(&mut m, "trans_type", t.trans_type.as_str());
    put_str(&mut m, "status", t.status.as_str());
    put_str(&mut m, "query_prepared", &t.query_prepared);
    put_str(&mut m, "protocol", t.protocol.as_str());
    put_time(&mut m, "finish_time", t.finish_time);
    put_time(&mut m, "rollback_time", t.rollback_time);
    put_str(&mut m, "result", &t.result);
    put_str(&mut m, "rollback_reason", &t.rollback_reason);
    let o = shown_options(&t.options);
    put_str(
        &mut m,
        "options",
        &serde_json::to_string(&o).unwrap_or_default(),
    );
    put_str(&mut m, "custom_data", &t.custom_data);
    put_num(&mut m, "next_cron_interval", t.next_cron_interval);
    put_time(&mut m, "next_cron_time", t.next_cron_time);
    put_str(&mut m, "owner", &t.owner);
    if o.wait_result {
        m.insert("wait_result".into(), json!(true));
    }
    put_num(&mut m, "timeout_to_fail", o.timeout_to_fail);
    put_num(&mut m, "request_timeout", o.request_timeout);
    put_num(&mut m, "retry_interval", o.retry_interval);
    if !o.branch_headers.is_empty() {
        m.insert("branch_headers".into(), json!(o.branch_headers));
    }
    put_num(&mut m, "retry_limit", o.retry_limit);
    put_num(&mut m, "retry_count", o.retry_count);
    put_num(&mut m, "backoff_cap", o.backoff_cap);
    put_str(&mut m, "policy", &o.policy);
    m.insert("concurrent".into(), json!(o.concurrent));
    Value::Object(m)
}

/// A branch.
pub(crate) fn branch(b: &Branch) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(b.id));
    m.insert("create_time".into(), json!(b.create_time.to_rfc3339()));
    m.insert("update_time".into(), json!(b.update_time.to_rfc3339()));
    put_str(&mut m, "gid", b.gid.as_str());
    put_str(&mut m, "url", &b.url);
    if !b.bin_data.is_empty() {
        m.insert(
            "bin_data".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(&b.bin_data)),
        );
    }
    put_str(&mut m, "branch_id", b.branch_id.as_str());
    put_str(&mut m, "op", b.op.as_str());
    put_str(&mut m, "status", b.status.as_str());
    put_time(&mut m, "finish_time", b.finish_time);
    put_time(&mut m, "rollback_time", b.rollback_time);
    Value::Object(m)
}

/// A KV record.
pub(crate) fn kv(r: &KvRecord) -> Value {
    json!({
        "id": r.id,
        "create_time": r.create_time.to_rfc3339(),
        "update_time": r.update_time.to_rfc3339(),
        "cat": r.cat,
        "k": r.k,
        "v": r.v,
        "version": r.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_patterns_match_with_stars() {
        let cases = [
            ("x-api-*", "x-api-sig", true),
            ("x-api-*", "x-apix", false),
            ("*-signature", "hmac-signature", true),
            ("*-signature", "signature", false),
            ("x-*-id", "x-tenant-id", true),
            ("x-*-id", "x-id", false),
            ("x-sig", "x-sig", true),
            ("x-sig", "x-sig2", false),
            ("*", "anything", true),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(glob_match(pattern, name), want, "{pattern} ~ {name}");
        }
    }

    #[test]
    fn sensitive_header_values_are_masked_everywhere_they_are_shown() {
        let mut t = crate::store::testing::txn("g");
        t.options.branch_headers = [
            ("Authorization", "Bearer abc"),
            ("X-Api-Key", "k1"),
            ("x-session-id", "s1"),
            ("X-Trace", "visible"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let shown = txn(&t).to_string();
        for secret in ["Bearer abc", "k1", "s1"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(shown.contains("visible"), "{shown}");
        assert_eq!(
            t.options.branch_headers["Authorization"], "Bearer abc",
            "stored unchanged"
        );
    }
}
