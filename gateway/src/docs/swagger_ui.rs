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

/// The answer to `GET path`, if `path` is one of the documentation's.
pub(crate) fn serve(path: &str) -> Option<Response<Body>> {
    let (body, content_type, cache) = match path {
        "/docs" | "/docs/" => (Body::from(PAGE), "text/html; charset=utf-8", "no-cache"),
        "/docs/swagger-ui-bundle.js" => (Body::from(BUNDLE), "text/javascript", "public, max-age=86400"),
        "/docs/swagger-ui.css" => (Body::from(STYLE), "text/css", "public, max-age=86400"),
        _ => return None,
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Some(response)
}
