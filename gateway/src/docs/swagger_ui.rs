//! `/docs`: interactive documentation of the JSON API (Swagger UI, compiled
//! into the binary: nothing is fetched from the internet), reading the
//! served `/openapi.json`, with "Try it out" calls and the `Authorize`
//! dialog for the document's security scheme.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};

const BUNDLE: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const STYLE: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>API documentation</title>
<link rel="icon" href="/docs/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="docs"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#docs",
  deepLinking: true,
  persistAuthorization: true,
  displayRequestDuration: true,
});
</script>
</body>
</html>
"##;

/// The page's icon, also served as `/favicon.ico` to the browsers and
/// tools that ask for that without reading the page: a document with
/// braces, nothing of any particular API.
const ICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect x="1" y="1" width="14" height="14" rx="3" fill="#3b4151"/><path d="M6.5 4.5H6c-.8 0-1.2.4-1.2 1.2v1.1c0 .7-.4 1.2-1.1 1.2.7 0 1.1.5 1.1 1.2v1.1c0 .8.4 1.2 1.2 1.2h.5M9.5 4.5h.5c.8 0 1.2.4 1.2 1.2v1.1c0 .7.4 1.2 1.1 1.2-.7 0-1.1.5-1.1 1.2v1.1c0 .8-.4 1.2-1.2 1.2h-.5" fill="none" stroke="#fff" stroke-width="1.2" stroke-linecap="round"/></svg>
"##;

/// The answer to `GET path`, if `path` is one of the documentation's.
pub(crate) fn serve(path: &str) -> Option<Response<Body>> {
    let (body, content_type, cache) = match path {
        "/docs" | "/docs/" => (Body::from(PAGE), "text/html; charset=utf-8", "no-cache"),
        "/docs/swagger-ui-bundle.js" => (Body::from(BUNDLE), "text/javascript", "public, max-age=86400"),
        "/docs/swagger-ui.css" => (Body::from(STYLE), "text/css", "public, max-age=86400"),
        "/docs/favicon.svg" | "/favicon.ico" => (Body::from(ICON), "image/svg+xml", "public, max-age=86400"),
        _ => return None,
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Some(response)
}
