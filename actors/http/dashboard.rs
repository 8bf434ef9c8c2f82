//! The dashboard: one page of plain HTML, CSS and JavaScript (`assets/`), built into the binary
//! and served at `/`. It needs no build step and loads nothing from elsewhere; everything it
//! shows it reads from `/api/v1` in the browser, with the token typed into its login field.
//!
//! The files hold no data, so they are served without the token (a browser cannot send one
//! when it opens a page); the `Host` check and the security headers of [`super::guard`] apply
//! to them as to the API. Each answer carries an `ETag` (a hash of the file) and
//! `Cache-Control: no-cache`: a browser keeps the file and asks again each time, and an
//! unchanged file costs a `304` with no body.

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One file of the dashboard.
pub(super) struct Asset {
    /// Where it is served.
    pub(super) path: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes, built into the binary.
    body: &'static [u8],
}

/// Every file of the dashboard.
pub(super) const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("assets/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/app.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
];

/// True when `path` is one of the dashboard's files (served without the token).
pub(super) fn is_asset(path: &str) -> bool {
    ASSETS.iter().any(|a| a.path == path)
}

/// The entity tag of each of [`ASSETS`], in order: a quoted hash of its bytes.
fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let hex: String = Sha256::digest(a.body)[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

/// Answers a `GET` (or `HEAD`) of asset number `index`: the file, or `304` when the browser's
/// copy (`If-None-Match`) is current.
pub(super) fn serve(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    if let Ok(tag) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, tag);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_its_own_tag_and_a_current_copy_costs_no_body() {
        let tags = etags();
        assert_eq!(tags.len(), ASSETS.len());
        for (i, tag) in tags.iter().enumerate() {
            assert!(tag.starts_with('"') && tag.len() == 18, "{tag}");
            assert!(!tags[..i].contains(tag), "two assets share {tag}");
        }
        let mut headers = HeaderMap::new();
        let full = serve(1, &headers);
        assert_eq!(full.status(), StatusCode::OK);
        assert_eq!(full.headers()[header::ETAG], tags[1].as_str());
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"0\", {}", tags[1])).unwrap(),
        );
        assert_eq!(serve(1, &headers).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(serve(2, &headers).status(), StatusCode::OK, "another file");
        assert!(is_asset("/app.js") && is_asset("/") && !is_asset("/api/v1/overview"));
    }
}
