//! What the dashboard answers: the page and its two assets (compiled into the binary), the run
//! summary as JSON and as a server-sent event stream, the Prometheus metrics, and the signed
//! audit reports' files. Everything is read-only: any method but GET and HEAD is refused.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Shared;

/// A response body: a whole buffer or an event stream.
pub(super) type Body = BoxBody<Bytes, Infallible>;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The cookie that carries the token once `/?token=…` has been opened.
const TOKEN_COOKIE: &str = "medfed_dashboard";
/// The page's own files only; nothing inline, nothing from elsewhere.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";
/// The audit pages carry their style inline and run no script.
const REPORT_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/// An event stream whose client has taken no event for this long is dropped.
const STALLED_CLIENT: Duration = Duration::from_secs(30);
/// Comment lines that keep an idle event stream open through proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The event stream sends at most one summary this often, however fast the run changes.
const EVENT_SPACING: Duration = Duration::from_millis(250);

/// Answers one request.
pub(super) async fn handle(
    shared: Arc<Shared>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = closing(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "read-only: GET and HEAD only\n",
        ));
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    let path = request.uri().path().to_owned();
    // Without a token, the page is for this machine: a Host that is a name other than
    // `localhost` is a web page's DNS-rebinding attempt to read it from the operator's browser.
    if shared.token.is_none() && !is_local_host(&request) {
        return Ok(closing(text(
            StatusCode::MISDIRECTED_REQUEST,
            "this dashboard answers only to an IP address or localhost\n",
        )));
    }
    if let Some(token) = &shared.token {
        // `/?token=…`: set the cookie and go to the page without the token in the address.
        if let Some(presented) = query_token(request.uri().query())
            && token.accepts(presented)
        {
            return Ok(set_cookie_and_redirect(token.session(), shared.tls));
        }
        let (mut bearers, mut cookies) = presented_tokens(&request);
        if !bearers.any(|presented| token.accepts(presented))
            && !cookies.any(|presented| token.accepts_session(presented))
        {
            let mut response = closing(text(
                StatusCode::UNAUTHORIZED,
                "a dashboard token is needed\n",
            ));
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"medfed dashboard\""),
            );
            return Ok(response);
        }
    }
    let response = match path.as_str() {
        "/" | "/index.html" => page(INDEX_HTML, "text/html; charset=utf-8"),
        "/assets/app.js" => page(APP_JS, "text/javascript; charset=utf-8"),
        "/assets/app.css" => page(APP_CSS, "text/css; charset=utf-8"),
        "/api/summary" => json(&shared),
        "/events" => events(shared),
        "/metrics" => metrics(&shared),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => match path.strip_prefix("/reports/") {
            Some(file) => report_file(&shared.reports_dir, file).await,
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    };
    Ok(response)
}

/// Whether the request's `Host` (or, for HTTP/1.0, its absence) names this machine by an IP
/// address or as `localhost`.
fn is_local_host(request: &Request<hyper::body::Incoming>) -> bool {
    let Some(host) = request.headers().get(header::HOST) else {
        return request.uri().host().is_none();
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // `[::1]:9464`
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// What the request presents: tokens (`Authorization: Bearer …`) and session cookies.
fn presented_tokens<'a>(
    request: &'a Request<hyper::body::Incoming>,
) -> (
    impl Iterator<Item = &'a str> + 'a,
    impl Iterator<Item = &'a str> + 'a,
) {
    let bearer = request
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let cookies = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='));
    (bearer, cookies)
}

/// The `token` parameter of a query string.
fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

fn set_cookie_and_redirect(session: &str, tls: bool) -> Response<Body> {
    let secure = if tls { "; Secure" } else { "" };
    let cookie = format!("{TOKEN_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/{secure}");
    let mut response = empty(StatusCode::SEE_OTHER);
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// One of the page's files.
fn page(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = with_body(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    );
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    response
}

fn json(shared: &Shared) -> Response<Body> {
    match serde_json::to_vec(&shared.console.summary()) {
        Ok(body) => with_body(StatusCode::OK, "application/json", Bytes::from(body)),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the summary\n",
        ),
    }
}

fn metrics(shared: &Shared) -> Response<Body> {
    with_body(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(shared.console.render_metrics()),
    )
}

/// The summary now and after every change, as server-sent events, until the client leaves or
/// the process ends.
fn events(shared: Arc<Shared>) -> Response<Body> {
    let Ok(stream_slot) = shared.event_streams.clone().try_acquire_owned() else {
        let mut response = closing(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams open; poll /api/summary\n",
        ));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    };
    let (sender, receiver) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let mut changes = shared.console.subscribe();
    tokio::spawn(async move {
        let _slot = stream_slot;
        // Sends a frame; false once the client is gone or has stopped reading.
        let send = |frame: Bytes| {
            let sender = sender.clone();
            async move {
                let sent =
                    tokio::time::timeout(STALLED_CLIENT, sender.send(Ok(Frame::data(frame))));
                matches!(sent.await, Ok(Ok(())))
            }
        };
        // The first event goes at once; then one per change, spaced.
        changes.borrow_and_update();
        loop {
            let event = match serde_json::to_string(&shared.console.summary()) {
                Ok(json) => format!("event: summary\ndata: {json}\n\n"),
                Err(_) => return,
            };
            if !send(Bytes::from(event)).await {
                return;
            }
            tokio::time::sleep(EVENT_SPACING).await;
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    () = tokio::time::sleep(KEEP_ALIVE) => {
                        if !send(Bytes::from_static(b": keep-alive\n\n")).await {
                            return;
                        }
                    }
                }
            }
        }
    });
    let mut response = Response::new(StreamBody::new(ReceiverStream::new(receiver)).boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A file of the audit reports' folder: its page (`/reports/`), a round's signed report, or
/// the model card. Only these names are served; no path reaches outside the folder.
async fn report_file(reports_dir: &Path, name: &str) -> Response<Body> {
    let name = if name.is_empty() { "index.html" } else { name };
    let content_type = match name {
        "index.html" | "model_card.html" => "text/html; charset=utf-8",
        "model_card.json" | "model_card.json.sig" => "application/json",
        _ if is_round_report(name) => "application/json",
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    match tokio::fs::read(reports_dir.join(name)).await {
        Ok(body) => {
            let mut response = with_body(StatusCode::OK, content_type, Bytes::from(body));
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(REPORT_POLICY),
            );
            response
        }
        Err(_) => text(StatusCode::NOT_FOUND, "no such report yet\n"),
    }
}

/// `round-NNNNN.json`, the name of a round's signed report.
fn is_round_report(name: &str) -> bool {
    name.strip_prefix("round-")
        .and_then(|rest| rest.strip_suffix(".json"))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// `response`, closing its connection after it (a refusal does not keep a connection slot).
fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_body(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn empty(status: StatusCode) -> Response<Body> {
    with_body(status, "text/plain; charset=utf-8", Bytes::new())
}

fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_round_report_names_are_round_reports() {
        assert!(is_round_report("round-00012.json"));
        for name in [
            "round-.json",
            "round-1.json.sig",
            "../state.sqlite",
            "round-1/../x.json",
        ] {
            assert!(!is_round_report(name), "{name}");
        }
    }

    #[test]
    fn the_token_is_found_among_other_query_parameters() {
        assert_eq!(query_token(Some("a=1&token=xyz")), Some("xyz"));
        assert_eq!(query_token(Some("tokens=xyz")), None);
        assert_eq!(query_token(None), None);
    }
}
