//! The admin web page: list, filter and inspect transactions; force-stop one or retry it now.
//!
//! Invariants:
//! - The page's shell (HTML), script and style hold no data, so they are served to anyone: a browser must
//!   load them to show the token prompt. Every route that returns or changes data needs the `admin` role
//!   when tokens are configured ([`AdminUi::need`] and [`super::auth::http_need`]).
//! - Everything the page shows comes from the API and goes through the script's escaping before it lands in
//!   markup; the page runs under [`ADMIN_CSP`] (no inline script or style, no framing, no other origin).
//! - With a base path, the page, its files and the data routes it calls live under it, and nothing of the
//!   page lives outside it. A base path is checked by [`BasePath::parse`] (a leading `/`, no trailing `/`,
//!   letters, digits and `-._~` in non-empty segments, not under `/api`), so it is written into the page as
//!   it is.
//! - Turned off, neither the page nor its files nor the prefixed routes exist (404); `/api/*` is unchanged.

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::auth::Need;
use super::{AppState, dtmsvr};

/// The page's Content-Security-Policy: its script and style come from braid itself, it talks to braid
/// only, and no other site may frame it.
pub(crate) const ADMIN_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What [`BasePath::parse`] accepts, for error messages.
const BASE_PATH_RULE: &str = "must start with '/', must not end with '/', and may hold only letters, digits \
     and -._~ in non-empty segments (e.g. /ops/braid)";

/// A checked path prefix of the admin page: empty (the root) or `/seg[/seg...]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BasePath(String);

impl BasePath {
    /// Checks a prefix as `--admin-base-path` gives it; the empty string is the root.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(Self::default());
        }
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(format!("'{raw}' {BASE_PATH_RULE}"));
        };
        if rest.is_empty() {
            return Err(format!(
                "'{raw}' {BASE_PATH_RULE}; leave it empty to serve the page at the root"
            ));
        }
        let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
        for segment in rest.split('/') {
            if segment.is_empty() || !segment.chars().all(safe) || matches!(segment, "." | "..") {
                return Err(format!("'{raw}' {BASE_PATH_RULE}"));
            }
        }
        if rest == "api" || rest.starts_with("api/") {
            return Err(format!(
                "'{raw}' must not be under /api, where braid's API lives"
            ));
        }
        if raw.len() > 200 {
            return Err(format!("'{raw}' is longer than 200 bytes"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The prefix: empty, or starting with `/` and not ending with one.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether and where the admin page is served.
#[derive(Debug, Clone)]
pub struct AdminUi {
    enabled: bool,
    base: BasePath,
    /// The page with the base path written in.
    page: Bytes,
    /// The paths of the shell and files: `{base}/`, `{base}/admin`, `{base}/admin.js`, `{base}/admin.css`.
    paths: [String; 4],
}

impl Default for AdminUi {
    fn default() -> Self {
        Self::new(true, BasePath::default())
    }
}

impl AdminUi {
    /// The page on (`enabled`) or off, under `base`.
    pub fn new(enabled: bool, base: BasePath) -> Self {
        // The base holds only characters that mean nothing in HTML (see `BasePath::parse`).
        let b = base.as_str();
        let page = include_str!("admin.html").replace("{{base}}", b);
        let paths = [
            format!("{b}/"),
            format!("{b}/admin"),
            format!("{b}/admin.js"),
            format!("{b}/admin.css"),
        ];
        Self {
            enabled,
            page: Bytes::from(page),
            paths,
            base,
        }
    }

    /// What a path of the page needs, or `None` when the path is not the page's (then the API's rules
    /// apply). The shell and files are open; the data routes under a base path need `admin`.
    pub(crate) fn need(&self, path: &str) -> Option<Need> {
        if !self.enabled {
            return None;
        }
        let b = self.base.as_str();
        if (!b.is_empty() && path == b) || self.paths.iter().any(|p| p == path) {
            return Some(Need::Open);
        }
        if !b.is_empty() && path.strip_prefix(b)?.starts_with("/api/") {
            return Some(Need::Admin);
        }
        None
    }

    /// The page's routes: nothing when it is off; with a base path also the data routes the page calls.
    pub(crate) fn routes(&self) -> Router<AppState> {
        if !self.enabled {
            return Router::new();
        }
        let [root, page, script, style] = &self.paths;
        let html = self.page.clone();
        let shell = move || {
            let html = html.clone();
            async move { asset("text/html; charset=utf-8", html) }
        };
        let mut router = Router::new()
            .route(root, get(shell.clone()))
            .route(page, get(shell.clone()))
            .route(
                script,
                get(|| async {
                    asset(
                        "text/javascript; charset=utf-8",
                        Bytes::from_static(include_bytes!("admin.js")),
                    )
                }),
            )
            .route(
                style,
                get(|| async {
                    asset(
                        "text/css; charset=utf-8",
                        Bytes::from_static(include_bytes!("admin.css")),
                    )
                }),
            );
        let b = self.base.as_str();
        if !b.is_empty() {
            router = router
                .route(b, get(shell))
                .nest(&format!("{b}/api/dtmsvr"), dtmsvr::page_routes());
        }
        router
    }
}

/// A file of the page with its type and the page's security headers.
fn asset(content_type: &'static str, body: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, ADMIN_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_paths_are_checked_and_name_the_rule() {
        for ok in ["", "/braid", "/ops/braid-admin", "/a.b/c_d/~e"] {
            assert_eq!(BasePath::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "braid",
            "/",
            "/braid/",
            "//braid",
            "/a//b",
            "/a b",
            "/a\"b",
            "/a<b",
            "/a?b",
            "/a#b",
            "/a%2fb",
            "/./a",
            "/a/..",
            "/api",
            "/api/admin",
            "/é",
        ] {
            assert!(BasePath::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(BasePath::parse(&format!("/{}", "a".repeat(300))).is_err());
        assert!(
            BasePath::parse("/a/")
                .unwrap_err()
                .contains("must not end with '/'")
        );
    }

    #[test]
    fn the_shell_and_files_are_open_and_prefixed_data_routes_need_admin() {
        let root = AdminUi::default();
        for p in ["/", "/admin", "/admin.js", "/admin.css"] {
            assert_eq!(root.need(p), Some(Need::Open), "{p}");
        }
        assert_eq!(root.need("/api/dtmsvr/all"), None, "the API's own rules");
        let ui = AdminUi::new(true, BasePath::parse("/ops/braid").unwrap());
        for p in [
            "/ops/braid",
            "/ops/braid/",
            "/ops/braid/admin",
            "/ops/braid/admin.js",
            "/ops/braid/admin.css",
        ] {
            assert_eq!(ui.need(p), Some(Need::Open), "{p}");
        }
        for p in [
            "/ops/braid/api/dtmsvr/query",
            "/ops/braid/api/dtmsvr/version",
        ] {
            assert_eq!(ui.need(p), Some(Need::Admin), "{p}");
        }
        assert_eq!(
            ui.need("/admin"),
            None,
            "nothing of the page outside its base"
        );
        assert_eq!(ui.need("/ops/braidx/admin"), None);
        let off = AdminUi::new(false, BasePath::parse("/ops/braid").unwrap());
        assert_eq!(off.need("/ops/braid/admin"), None);
        assert!(
            String::from_utf8_lossy(&ui.page).contains(r#"src="/ops/braid/admin.js""#),
            "the base is written into the page"
        );
    }
}
