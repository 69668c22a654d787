//! Tokens with two roles. `client` may run transactions (newGid, prepare, submit, abort, registerBranch and
//! its aliases, prepareWorkflow, query, version, JSON-RPC); `admin` may do everything, including forceStop,
//! the cron resets, `all`, topics, KV and `/api/braid/*`. HTTP and JSON-RPC read `Authorization: Bearer
//! <token>`, gRPC the `authorization` metadata. A request without a token gets the anonymous role: `admin`
//! when no token is configured (a laptop), `client` by default once tokens exist (DTM SDKs send none and
//! keep running transactions), or what `--auth-anonymous-role` says (`none` closes everything).
//!
//! Tokens come from `BRAID_AUTH_TOKEN_ADMIN` / `BRAID_AUTH_TOKEN_CLIENT` and from `--auth-tokens-file`, a YAML
//! list of `{name, role, sha256}` that is re-read when it changes (a file that fails to parse keeps the
//! tokens in force, so a bad edit neither opens nor closes the API). Only SHA-256 digests of the tokens are
//! kept, compared in constant time. Failures are counted in
//! `braid_auth_failures_total{reason}` and logged without the token. `/api/ping` and `/api/ready` are always
//! open; `/api/metrics` is open unless `--metrics-token` is set. The admin page's static files are open
//! (they hold no data); every route the page calls needs `admin`.

use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AppState, Error};

/// What a token (or an anonymous request) may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Run transactions.
    Client,
    /// Everything.
    Admin,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing (ping, ready, the admin page's static files).
    Open,
    /// The metrics token, when one is set.
    Metrics,
    /// At least `client`.
    Client,
    /// `admin`.
    Admin,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No token, and the anonymous role does not reach: 401.
    Missing,
    /// A token that matches none: 401.
    Invalid,
    /// A valid token whose role does not reach: 403.
    Forbidden,
}

impl Denied {
    fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Forbidden => "forbidden",
        }
    }

    /// The API error for it, in DTM's JSON shape.
    pub(crate) fn error(self) -> Error {
        match self {
            Self::Missing => Error::Unauthorized(
                "this route needs a token: send Authorization: Bearer <token>".to_owned(),
            ),
            Self::Invalid => Error::Unauthorized("the token is not valid".to_owned()),
            Self::Forbidden => Error::Forbidden("this route needs an admin token".to_owned()),
        }
    }
}

/// One configured token: its digest, its role, and a name for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// A name for logs (the env tokens are `env-admin` and `env-client`).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
}

/// A tokens file entry as written: `{name, role, sha256}` with the digest in hex.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    role: FileRole,
    sha256: String,
}

#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum FileRole {
    Client,
    Admin,
}

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// It could not be read.
    #[error("tokens file {path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not a YAML list of `{name, role, sha256}` with valid values.
    #[error("tokens file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, without any digest.
        reason: String,
    },
}

/// Parses a tokens file: a YAML list of `{name, role: client|admin, sha256: <64 hex digits>}`.
pub fn parse_tokens_file(path: &str, text: &str) -> Result<Vec<TokenEntry>, TokensFileError> {
    let invalid = |reason: String| TokensFileError::Invalid {
        path: path.to_owned(),
        reason,
    };
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<FileEntry> = serde_saphyr::from_str(text)
        .map_err(|e| invalid(format!("not a YAML list of {{name, role, sha256}}: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let name = e.name.trim().to_owned();
        if name.is_empty() {
            return Err(invalid(format!("entry {i} has an empty name")));
        }
        if !seen.insert(name.clone()) {
            return Err(invalid(format!("the name '{name}' appears twice")));
        }
        let hex = e.sha256.trim();
        let mut sha256 = [0u8; 32];
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "entry '{name}': sha256 must be 64 hex digits (the SHA-256 of the token, e.g. \
                 `printf %s TOKEN | sha256sum`)"
            )));
        }
        for (j, byte) in sha256.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * j..2 * j + 2], 16)
                .map_err(|_| invalid(format!("entry '{name}': sha256 is not hex")))?;
        }
        out.push(TokenEntry {
            name,
            role: match e.role {
                FileRole::Client => Role::Client,
                FileRole::Admin => Role::Admin,
            },
            sha256,
        });
    }
    Ok(out)
}

/// The configured tokens. The default has none: every request is admin (today's behaviour). Clones share
/// the token set, so a reloaded tokens file reaches every API at once.
#[derive(Clone)]
pub struct Auth {
    /// The env tokens, fixed.
    fixed: Vec<TokenEntry>,
    /// The tokens file's entries, replaced on reload.
    file: Arc<RwLock<Vec<TokenEntry>>>,
    /// `--auth-anonymous-role`, if given.
    anonymous: Option<Option<Role>>,
    metrics: Option<[u8; 32]>,
}

impl Default for Auth {
    fn default() -> Self {
        Self::new(None, None, None, None)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    /// Tokens from the configuration. `anonymous`: `Some(None)` for `none`, `Some(Some(role))` for a role,
    /// `None` for the default (admin without tokens, client with).
    pub fn new(
        admin: Option<&str>,
        client: Option<&str>,
        anonymous: Option<Option<Role>>,
        metrics: Option<&str>,
    ) -> Self {
        let fixed = [
            (admin, Role::Admin, "env-admin"),
            (client, Role::Client, "env-client"),
        ]
        .into_iter()
        .filter_map(|(t, role, name)| {
            t.filter(|t| !t.is_empty()).map(|t| TokenEntry {
                name: name.to_owned(),
                role,
                sha256: digest(t),
            })
        })
        .collect();
        Self {
            fixed,
            file: Arc::default(),
            anonymous,
            metrics: metrics.filter(|t| !t.is_empty()).map(digest),
        }
    }

    /// Adds the entries of a tokens file (replacing earlier ones of a file).
    pub fn set_file_tokens(&self, entries: Vec<TokenEntry>) {
        *self
            .file
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = entries;
    }

    /// Decides a request that presents `token` (the bearer value, if any) for a route that needs `need`.
    pub(crate) fn check(&self, token: Option<&str>, need: Need) -> Result<(), Denied> {
        let needed = match need {
            Need::Open => return Ok(()),
            Need::Metrics => {
                let Some(expected) = &self.metrics else {
                    return Ok(());
                };
                let Some(token) = token else {
                    return Err(Denied::Missing);
                };
                return if bool::from(digest(token).ct_eq(expected)) {
                    Ok(())
                } else {
                    Err(Denied::Invalid)
                };
            }
            Need::Client => Role::Client,
            Need::Admin => Role::Admin,
        };
        let file = self
            .file
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let configured = !self.fixed.is_empty() || !file.is_empty();
        // Without configured tokens a presented one means nothing (a proxy or an SDK may send its own
        // Authorization header): the request is anonymous, as before tokens existed.
        let token = token.filter(|_| configured);
        let anonymous = self.anonymous.unwrap_or(if configured {
            Some(Role::Client)
        } else {
            Some(Role::Admin)
        });
        let role = match token {
            None => match anonymous {
                Some(role) => role,
                None => return Err(Denied::Missing),
            },
            Some(token) => {
                let d = digest(token);
                // Every configured token is compared, so the time does not tell which one matched.
                let mut found = None;
                for entry in self.fixed.iter().chain(file.iter()) {
                    if bool::from(d.ct_eq(&entry.sha256)) {
                        found = Some(entry.role);
                    }
                }
                found.ok_or(Denied::Invalid)?
            }
        };
        drop(file);
        if role >= needed {
            Ok(())
        } else if token.is_none() {
            Err(Denied::Missing)
        } else {
            Err(Denied::Forbidden)
        }
    }
}

/// The tokens file of an [`Auth`], re-read by [`crate::reload::watch`]: a changed file that parses replaces
/// the file's tokens; one that cannot be read or parsed keeps the tokens in force.
pub struct TokensFile {
    path: std::path::PathBuf,
    auth: Auth,
    /// The contents last looked at (taken or refused), so each change is tried and reported once.
    seen: std::sync::Mutex<Option<Vec<u8>>>,
}

impl TokensFile {
    /// Loads the file at `path` into `auth` now; an error names the file.
    pub fn load(path: &std::path::Path, auth: Auth) -> Result<Self, TokensFileError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| TokensFileError::Read {
            path: shown.clone(),
            source,
        })?;
        auth.set_file_tokens(Self::parse(&shown, &bytes)?);
        Ok(Self {
            path: path.to_owned(),
            auth,
            seen: std::sync::Mutex::new(Some(bytes)),
        })
    }

    fn parse(shown: &str, bytes: &[u8]) -> Result<Vec<TokenEntry>, TokensFileError> {
        let text = std::str::from_utf8(bytes).map_err(|e| TokensFileError::Invalid {
            path: shown.to_owned(),
            reason: format!("not UTF-8: {e}"),
        })?;
        parse_tokens_file(shown, text)
    }
}

impl crate::reload::Reloadable for TokensFile {
    fn what(&self) -> &'static str {
        "tokens file"
    }

    fn reload(&self) -> crate::reload::Reload {
        use crate::reload::Reload;
        let shown = self.path.display().to_string();
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) => return Reload::Failed(format!("tokens file {shown}: cannot read it: {e}")),
        };
        let Ok(mut seen) = self.seen.lock() else {
            return Reload::Unchanged;
        };
        if seen.as_ref() == Some(&bytes) {
            return Reload::Unchanged;
        }
        let parsed = Self::parse(&shown, &bytes);
        *seen = Some(bytes);
        match parsed {
            Ok(entries) => {
                self.auth.set_file_tokens(entries);
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e.to_string()),
        }
    }
}

/// The bearer token of an `Authorization` value.
pub(crate) fn bearer(value: Option<&str>) -> Option<&str> {
    let v = value?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// What an HTTP route of the API needs (the admin page's own paths are decided by
/// [`super::admin::AdminUi::need`] first).
pub(crate) fn http_need(path: &str) -> Need {
    match path {
        "/api/ping" | "/api/ready" => Need::Open,
        "/api/metrics" => Need::Metrics,
        "/api/json-rpc" => Need::Client,
        _ => match path.strip_prefix("/api/dtmsvr/") {
            Some(
                "newGid" | "prepare" | "submit" | "abort" | "registerBranch" | "registerXaBranch"
                | "registerTccBranch" | "prepareWorkflow" | "query" | "version",
            ) => Need::Client,
            _ => Need::Admin,
        },
    }
}

/// What a gRPC method of `dtmgimp.Dtm` needs.
pub(crate) fn grpc_need(method: &str) -> Need {
    match method {
        "Subscribe" | "Unsubscribe" | "DeleteTopic" => Need::Admin,
        _ => Need::Client,
    }
}

/// Counts and logs a refusal, without the token.
pub(crate) fn refused(state: &AppState, denied: Denied, route: &str) {
    state
        .metrics
        .auth_failures
        .with_label_values(&[denied.reason()])
        .inc();
    tracing::info!(
        route,
        reason = denied.reason(),
        "request refused by authentication"
    );
}

/// The HTTP middleware.
pub(crate) async fn require_role(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let need = state.admin.need(path).unwrap_or_else(|| http_need(path));
    let token = bearer(
        req.headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    if let Err(denied) = state.auth.check(token, need) {
        refused(&state, denied, req.uri().path());
        return denied.error().into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_tokens_and_the_anonymous_default() {
        let open = Auth::new(None, None, None, None);
        assert_eq!(
            open.check(None, Need::Admin),
            Ok(()),
            "no tokens: today's behaviour"
        );
        let auth = Auth::new(Some("adm"), Some("cli"), None, Some("met"));
        assert_eq!(auth.check(None, Need::Client), Ok(()), "anonymous = client");
        assert_eq!(auth.check(None, Need::Admin), Err(Denied::Missing));
        assert_eq!(auth.check(Some("cli"), Need::Admin), Err(Denied::Forbidden));
        assert_eq!(auth.check(Some("adm"), Need::Admin), Ok(()));
        assert_eq!(auth.check(Some("nope"), Need::Client), Err(Denied::Invalid));
        assert_eq!(auth.check(None, Need::Metrics), Err(Denied::Missing));
        assert_eq!(auth.check(Some("met"), Need::Metrics), Ok(()));
        let closed = Auth::new(Some("adm"), None, Some(None), None);
        assert_eq!(closed.check(None, Need::Client), Err(Denied::Missing));
        assert_eq!(closed.check(None, Need::Open), Ok(()));
        assert_eq!(bearer(Some("Bearer  abc ")), Some("abc"));
        // Tokens from a file count as configured tokens: anonymous drops to client.
        let filed = Auth::new(None, None, None, None);
        assert_eq!(filed.check(None, Need::Admin), Ok(()));
        filed.set_file_tokens(vec![TokenEntry {
            name: "ops".into(),
            role: Role::Admin,
            sha256: digest("ops-token"),
        }]);
        assert_eq!(filed.check(None, Need::Admin), Err(Denied::Missing));
        assert_eq!(filed.check(Some("ops-token"), Need::Admin), Ok(()));
        assert_eq!(bearer(Some("Basic abc")), None);
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    fn hex(token: &str) -> String {
        digest(token).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_tokens_file_lists_names_roles_and_digests() {
        let text = format!(
            "- name: ci\n  role: client\n  sha256: {}\n- name: ops\n  role: admin\n  sha256: {}\n",
            hex("c"),
            hex("a").to_uppercase()
        );
        let entries = parse_tokens_file("t.yaml", &text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (entries[0].name.as_str(), entries[0].role),
            ("ci", Role::Client)
        );
        assert_eq!(entries[1].sha256, digest("a"));
        assert!(parse_tokens_file("t.yaml", "").unwrap().is_empty());
    }

    #[test]
    fn bad_tokens_files_name_the_file_and_the_entry() {
        let cases = [
            ("- name: x\n  role: root\n  sha256: 00\n", "not a YAML list"),
            (
                "- name: x\n  role: admin\n  sha256: 1234\n",
                "entry 'x': sha256 must be 64 hex",
            ),
            ("- name: ''\n  role: admin\n  sha256: 1234\n", "empty name"),
            (
                "- name: x\n  role: admin\n  sha256: 1234\n  token: plain\n",
                "not a YAML list",
            ),
        ];
        for (text, want) in cases {
            let err = parse_tokens_file("/etc/braid/tokens.yaml", text)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("/etc/braid/tokens.yaml") && err.contains(want),
                "{text:?}: {err}"
            );
        }
        let twice = format!(
            "- name: x\n  role: admin\n  sha256: {0}\n- name: x\n  role: client\n  sha256: {0}\n",
            hex("t")
        );
        let err = parse_tokens_file("f", &twice).unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
    }
}
