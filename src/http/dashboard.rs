//! The web dashboard: one page and its static files, embedded in the binary.
//!
//! Owns: serving the page at `GET /` (when the request is not a WebSocket upgrade) and
//! its files at `GET /dashboard/{file}`, with their content types and the security
//! headers, a restrictive Content-Security-Policy among them. The files themselves live
//! beside this module in `src/http/dashboard/` (plain HTML, CSS and JavaScript modules;
//! no build step) and are compiled in with `include_str!`, with the JavaScript client
//! of `clients/js/src/` that the page's feed runs on.
//!
//! Must not: hold or show data of its own. The page reads everything through the public
//! API (the WebSocket protocol on `/ws`, `/api/stats`, `/api/dead-letters`) with the
//! user's token, so these files are served without authentication: they are the same
//! for every caller and reveal nothing about the router.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::{ErrorCode, HttpError};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// The page itself, served at `/`.
const INDEX: Asset = Asset {
    name: "index.html",
    content_type: HTML,
    body: include_str!("dashboard/index.html"),
};

/// Everything under `/dashboard/`.
const ASSETS: &[Asset] = &[
    INDEX,
    Asset {
        name: "style.css",
        content_type: CSS,
        body: include_str!("dashboard/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: SVG,
        body: include_str!("dashboard/icon.svg"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_str!("dashboard/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_str!("dashboard/api.js"),
    },
    Asset {
        name: "feed.js",
        content_type: JS,
        body: include_str!("dashboard/feed.js"),
    },
    // The TypeScript/JavaScript client (clients/js), served as it is: the page's feed
    // runs on it, and any page on this origin may import it from here.
    Asset {
        name: "client.js",
        content_type: JS,
        body: include_str!("../../clients/js/src/client.js"),
    },
    Asset {
        name: "backoff.js",
        content_type: JS,
        body: include_str!("../../clients/js/src/backoff.js"),
    },
    Asset {
        name: "errors.js",
        content_type: JS,
        body: include_str!("../../clients/js/src/errors.js"),
    },
    Asset {
        name: "subscription.js",
        content_type: JS,
        body: include_str!("../../clients/js/src/subscription.js"),
    },
    Asset {
        name: "resume.js",
        content_type: JS,
        body: include_str!("../../clients/js/src/resume.js"),
    },
    Asset {
        name: "stream.js",
        content_type: JS,
        body: include_str!("../../clients/js/src/stream.js"),
    },
    Asset {
        name: "index.js",
        content_type: JS,
        body: include_str!("../../clients/js/src/index.js"),
    },
    Asset {
        name: "timeline.js",
        content_type: JS,
        body: include_str!("dashboard/timeline.js"),
    },
    Asset {
        name: "filters.js",
        content_type: JS,
        body: include_str!("dashboard/filters.js"),
    },
    Asset {
        name: "stats.js",
        content_type: JS,
        body: include_str!("dashboard/stats.js"),
    },
    Asset {
        name: "deadletters.js",
        content_type: JS,
        body: include_str!("dashboard/deadletters.js"),
    },
];

/// `GET /` without an upgrade: the page.
pub fn page(req: &HttpRequest) -> HttpResponse {
    respond(req, &INDEX)
}

/// `GET /dashboard/{file}`: one of the embedded files, or 404.
pub async fn asset(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse, HttpError> {
    let name = name.into_inner();
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map(|a| respond(&req, a))
        .ok_or_else(|| HttpError::new(ErrorCode::NotFound, format!("no dashboard file `{name}`")))
}

fn respond(req: &HttpRequest, asset: &Asset) -> HttpResponse {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let mut res = HttpResponse::Ok();
    res.content_type(asset.content_type)
        // Embedded in the binary: revalidate, so an upgraded server is never mixed with
        // files cached from the previous one.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"));
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(host)) {
        res.insert_header((header::CONTENT_SECURITY_POLICY, csp));
    }
    res.body(asset.body)
}

/// The page's Content-Security-Policy: its own origin only (no inline script or style,
/// no other origin, no framing), plus WebSockets to the host it was loaded from. `host`
/// comes from the request; one that is not a plain `name[:port]` or `[v6]:port` is left
/// out, so a forged Host header cannot widen the policy.
pub fn content_security_policy(host: Option<&str>) -> String {
    let sockets = match host.filter(|h| is_plain_host(h)) {
        Some(h) => format!(" ws://{h} wss://{h}"),
        None => String::new(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'{sockets}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csp_allows_websockets_to_a_plain_host_only() {
        let cases = [
            (Some("127.0.0.1:9090"), true),
            (Some("router.example"), true),
            (Some("[::1]:9090"), true),
            (Some("evil; script-src *"), false),
            (Some("a b"), false),
            (Some("host/path"), false),
            (Some("*"), false),
            (Some(""), false),
            (None, false),
        ];
        for (host, allowed) in cases {
            let csp = content_security_policy(host);
            assert!(csp.contains("script-src 'self';"), "{csp}");
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert!(!csp.contains("unsafe"), "{csp}");
            let has_ws = csp.contains("ws://");
            assert_eq!(has_ws, allowed, "host {host:?}: {csp}");
            if let (true, Some(h)) = (allowed, host) {
                assert!(csp.contains(&format!("connect-src 'self' ws://{h} wss://{h};")));
            }
        }
    }

    /// Every `/dashboard/x` (HTML) and `"./x"` (module import) reference in `text`.
    fn references(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for marker in ["/dashboard/", "\"./"] {
            for (at, _) in text.match_indices(marker) {
                let tail = &text[at + marker.len()..];
                let end = tail.find(['"', '\'']).unwrap_or(tail.len());
                found.push(tail[..end].to_owned());
            }
        }
        found
    }

    #[test]
    fn every_file_the_page_loads_is_embedded() {
        let wanted: Vec<String> = ASSETS.iter().flat_map(|a| references(a.body)).collect();
        assert!(wanted.len() >= 10, "found references: {wanted:?}");
        for name in wanted {
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "`{name}` is referenced but not embedded"
            );
        }
    }

    #[test]
    fn content_types_follow_the_extension() {
        for a in ASSETS {
            let expected = match a.name.rsplit('.').next() {
                Some("html") => HTML,
                Some("js") => JS,
                Some("css") => CSS,
                Some("svg") => SVG,
                other => panic!("unexpected extension {other:?}"),
            };
            assert_eq!(a.content_type, expected, "{}", a.name);
        }
    }

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        let page = INDEX.body;
        assert!(!page.contains("<script>"), "inline script breaks the CSP");
        assert!(!page.contains("style="), "inline style breaks the CSP");
        assert!(!page.contains("<style"), "inline style breaks the CSP");
        for (at, _) in page.match_indices(" on") {
            let attr: String = page[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            let after = &page[at + 1 + attr.len()..];
            assert!(
                !after.starts_with('='),
                "inline handler `{attr}` breaks the CSP"
            );
        }
    }
}
