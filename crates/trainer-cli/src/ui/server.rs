//! The HTTP side of a run's page: the token (query once, then a cookie), the Host check against DNS
//! rebinding, the origin check on POSTs, body limits, the event stream and the control endpoint.

use std::convert::Infallible;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use trainer_core::job::{Change, ControlCommand};

use super::assets;
use super::hub::Hub;

/// The cookie that carries the token after the first visit.
pub const COOKIE: &str = "trainer_ui_token";
/// The largest request body accepted (a control command is a few dozen bytes).
pub const BODY_LIMIT: usize = 4096;

/// Who may talk to the server: the token, and the port the Host header must name when bound to loopback.
pub struct Auth {
    /// The secret every request that reads or changes a run must carry.
    pub token: String,
    /// `Some(port)`: bound to loopback, so the Host header must be a loopback name with this port.
    pub loopback_port: Option<u16>,
}

/// What the handlers of a run served by this process share.
pub struct Server {
    /// The token and the Host rule.
    pub auth: Arc<Auth>,
    /// The run's events.
    pub hub: Arc<Hub>,
    /// Commands for the running job (`None` once the run has ended and its receiver is gone).
    pub control: Mutex<Option<Sender<ControlCommand>>>,
}

/// 32 random hex digits from the operating system's generator.
pub fn new_token() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(std::io::Error::other)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> &str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn cookie_token(h: &HeaderMap) -> Option<&str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// 403 with the reason.
pub fn forbidden(why: &str) -> Response {
    (StatusCode::FORBIDDEN, format!("forbidden: {why}\n")).into_response()
}

impl Auth {
    /// Whether the request carries the token's cookie.
    pub fn has_cookie(&self, h: &HeaderMap) -> bool {
        cookie_token(h).is_some_and(|t| same_secret(t, &self.token))
    }

    fn host_ok(&self, host: &str) -> bool {
        match self.loopback_port {
            None => true,
            Some(port) => ["127.0.0.1", "localhost", "[::1]"]
                .iter()
                .any(|name| host == format!("{name}:{port}")),
        }
    }
}

/// Refuses a request whose Host is not this loopback server (a DNS-rebinding page's requests name their own
/// host).
pub async fn guard_host(State(s): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    if !s.host_ok(header_str(req.headers(), header::HOST)) {
        return forbidden("the Host header is not this server's loopback address");
    }
    next.run(req).await
}

/// The `?token=` of a page's address.
#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// Serves `html` to a request with the token (in the query: the cookie is set) or its cookie; 403 otherwise.
pub fn page(
    auth: &Auth,
    query: Result<Query<TokenQuery>, QueryRejection>,
    h: &HeaderMap,
    html: &'static str,
) -> Response {
    let by_query = query
        .ok()
        .and_then(|Query(q)| q.token)
        .is_some_and(|t| same_secret(&t, &auth.token));
    if !by_query && !auth.has_cookie(h) {
        return forbidden("open the address with the token that the server printed at start");
    }
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response();
    if by_query {
        let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", auth.token);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    r
}

async fn run_page(
    State(s): State<Arc<Server>>,
    query: Result<Query<TokenQuery>, QueryRejection>,
    h: HeaderMap,
) -> Response {
    page(&s.auth, query, &h, assets::RUN_HTML)
}

async fn events(
    State(s): State<Arc<Server>>,
    h: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    if !s.auth.has_cookie(&h) {
        return Err(forbidden("no token"));
    }
    let (past, rx) = s.hub.subscribe();
    let past = stream::iter(past).map(|e| Ok(Event::default().data(&*e)));
    // A page too slow to keep up loses its stream; it reconnects and gets the whole history again.
    let live = stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(e) => Some((Ok(Event::default().data(&*e)), rx)),
            Err(RecvError::Lagged(_) | RecvError::Closed) => None,
        }
    });
    Ok(Sse::new(past.chain(live)).keep_alive(KeepAlive::default()))
}

/// A POST must carry the token and come from this server's own page.
pub fn check_post(s: &Auth, h: &HeaderMap) -> Result<(), Response> {
    if !s.has_cookie(h) {
        return Err(forbidden("no token"));
    }
    let origin = header_str(h, header::ORIGIN);
    let host = header_str(h, header::HOST);
    if host.is_empty() || origin != format!("http://{host}") {
        return Err(forbidden(
            "the request does not come from this server's page (Origin)",
        ));
    }
    Ok(())
}

/// A control POST checked: token, origin, a readable command, a `set` the run would accept.
pub fn control_command(
    auth: &Auth,
    h: &HeaderMap,
    body: Result<Json<ControlCommand>, JsonRejection>,
) -> Result<ControlCommand, Response> {
    check_post(auth, h)?;
    let command = match body {
        Ok(Json(c)) => c,
        Err(e) => return Err((e.status(), format!("{}\n", e.body_text())).into_response()),
    };
    if let ControlCommand::Set { assignment } = &command {
        if let Err(e) = Change::parse(assignment) {
            return Err((StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response());
        }
    }
    Ok(command)
}

async fn control(
    State(s): State<Arc<Server>>,
    h: HeaderMap,
    body: Result<Json<ControlCommand>, JsonRejection>,
) -> Response {
    let command = match control_command(&s.auth, &h, body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let guard = s.control.lock().unwrap_or_else(|e| e.into_inner());
    match guard.as_ref().map(|tx| tx.send(command)) {
        Some(Ok(())) => (
            StatusCode::ACCEPTED,
            "queued: the run applies it after the current step\n",
        )
            .into_response(),
        _ => (StatusCode::CONFLICT, "the run has ended\n").into_response(),
    }
}

/// The routes of a run's page.
pub fn router(s: Arc<Server>) -> Router {
    Router::new()
        .route("/", get(run_page))
        .route("/api/events", get(events))
        .route("/api/control", post(control))
        .merge(assets::routes())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(s.auth.clone(), guard_host))
        .with_state(s)
}
