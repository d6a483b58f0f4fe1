//! The web console (DESIGN.md section 11): `/` redirects to `/console/`, a single page over the
//! REST API and the live feed, served from the binary. Its files (`src/console/`: plain ES
//! modules, a stylesheet and the vendored uPlot chart library, MIT) are embedded at compile time,
//! so `cargo run --release` is all it needs and it works with no network but Tally's.
//!
//! Every reply under `/console` carries the API's security headers plus a strict
//! Content-Security-Policy: scripts, styles and connections only from this origin, no inline
//! code, no framing.

use actix_web::{http::header, web, HttpResponse};

use crate::error::ApiError;

/// `default-src 'self'` and nothing inline: the console's scripts are modules loaded from
/// `/console/`, its styles a stylesheet (uPlot sets element styles through the CSSOM, which a
/// policy does not restrict). `connect-src 'self'` covers the API and, in CSP Level 3, the
/// same-origin WebSocket of the live feed.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

/// One embedded file: its path under `/console/`, media type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../console/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file of the console; anything else under `/console/` is a 404 problem.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("feed.js", JS),
    asset!("money.js", JS),
    asset!("ui.js", JS),
    asset!("style.css", CSS),
    asset!("vendor/uPlot.esm.js", JS),
    asset!("vendor/uPlot.min.css", CSS),
];

/// Mounts `/`, `/console` and `/console/{path}`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/").route(web::get().to(to_console)))
        .service(web::resource("/console").route(web::get().to(to_console)))
        .service(
            web::scope("/console")
                .wrap(super::middleware::page_security_headers(
                    CONTENT_SECURITY_POLICY,
                ))
                .service(web::resource("/{path:.*}").route(web::get().to(file))),
        );
}

/// 302 to `/console/`.
async fn to_console() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/console/"))
        .finish()
}

/// The file at `path` (`index.html` for the directory itself). Errors: 404 `not_found`.
async fn file(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let path = path.into_inner();
    let path = if path.is_empty() { "index.html" } else { &path };
    let asset = ASSETS
        .iter()
        .find(|asset| asset.path == path)
        .ok_or(ApiError::NotFound("no such console file"))?;
    Ok(HttpResponse::Ok()
        .content_type(asset.content_type)
        // Revalidated on every load, so an upgraded binary's console is used at once.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(asset.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_an_asset_imports_is_embedded() {
        // A module imported but not listed would load in development and 404 in the binary.
        for asset in ASSETS.iter().filter(|asset| asset.content_type == JS) {
            let text = std::str::from_utf8(asset.body).expect("UTF-8");
            for line in text.lines().filter(|line| line.starts_with("import ")) {
                let Some(from) = line.split(" from ").nth(1) else {
                    continue;
                };
                let target = from.trim_matches(|c| c == '"' || c == ';' || c == ' ');
                let target = target.trim_start_matches("./");
                let base = asset.path.rsplit_once('/').map_or("", |(dir, _)| dir);
                let full = if base.is_empty() {
                    target.to_owned()
                } else {
                    format!("{base}/{target}")
                };
                assert!(
                    ASSETS.iter().any(|other| other.path == full),
                    "{} imports {full}, which is not embedded",
                    asset.path
                );
            }
        }
    }

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        let page = std::str::from_utf8(ASSETS[0].body).expect("UTF-8");
        assert!(!page.contains("<style"), "inline <style>");
        assert!(!page.contains(" style="), "inline style attribute");
        let handler = page.match_indices(" on").any(|(at, _)| {
            let rest = &page[at + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
        for script in page.split("<script").skip(1) {
            assert!(script.contains("src="), "inline <script>");
        }
    }
}
