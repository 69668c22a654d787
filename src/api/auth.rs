//! Tokens with two roles. `client` may run transactions (newGid, prepare, submit, abort, registerBranch and
//! its aliases, prepareWorkflow, query, version, JSON-RPC); `admin` may do everything, including forceStop,
//! the cron resets, `all`, topics, KV and `/api/braid/*`. HTTP and JSON-RPC read `Authorization: Bearer
//! <token>`, gRPC the `authorization` metadata. A request without a token gets the anonymous role: `admin`
//! when no token is configured (a laptop), `client` by default once tokens exist (DTM SDKs send none and
//! keep running transactions), or what `--auth-anonymous-role` says (`none` closes everything).
//!
//! Only SHA-256 digests of the tokens are kept, compared in constant time. Failures are counted in
//! `braid_auth_failures_total{reason}` and logged without the token. `/api/ping` and `/api/ready` are always
//! open; `/api/metrics` is open unless `--metrics-token` is set. The admin page's static files are open
//! (they hold no data); every route the page calls needs `admin`.

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

/// The configured tokens. The default has none: every request is admin (today's behaviour).
#[derive(Clone)]
pub struct Auth {
    tokens: Vec<([u8; 32], Role)>,
    anonymous: Option<Role>,
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
        let tokens: Vec<([u8; 32], Role)> = [(admin, Role::Admin), (client, Role::Client)]
            .into_iter()
            .filter_map(|(t, role)| t.filter(|t| !t.is_empty()).map(|t| (digest(t), role)))
            .collect();
        let anonymous = anonymous.unwrap_or(if tokens.is_empty() {
            Some(Role::Admin)
        } else {
            Some(Role::Client)
        });
        Self {
            tokens,
            anonymous,
            metrics: metrics.filter(|t| !t.is_empty()).map(digest),
        }
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
        // Without configured tokens a presented one means nothing (a proxy or an SDK may send its own
        // Authorization header): the request is anonymous, as before tokens existed.
        let token = token.filter(|_| !self.tokens.is_empty());
        let role = match token {
            None => match self.anonymous {
                Some(role) => role,
                None => return Err(Denied::Missing),
            },
            Some(token) => {
                let d = digest(token);
                // Every configured token is compared, so the time does not tell which one matched.
                let mut found = None;
                for (expected, role) in &self.tokens {
                    if bool::from(d.ct_eq(expected)) {
                        found = Some(*role);
                    }
                }
                found.ok_or(Denied::Invalid)?
            }
        };
        if role >= needed {
            Ok(())
        } else if token.is_none() {
            Err(Denied::Missing)
        } else {
            Err(Denied::Forbidden)
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

/// What an HTTP route needs.
pub(crate) fn http_need(path: &str) -> Need {
    match path {
        "/api/ping" | "/api/ready" | "/" | "/admin" | "/admin.js" | "/admin.css" => Need::Open,
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
    let need = http_need(req.uri().path());
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
        assert_eq!(bearer(Some("Basic abc")), None);
    }
}
