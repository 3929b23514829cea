//! `trainer-cli ui --runs DIR`: the runs under a folder, finished or running, each on the same page as
//! `train --ui` shows, built from the run's files (training_log.jsonl, training_parameters.toml, the
//! checkpoint folders). A running run's log is followed by the server and its new lines pushed to the page;
//! its controls go through the run's control file, as `trainer-cli control` sends them.

use std::convert::Infallible;
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use trainer_core::job::{ControlCommand, ControlFile, CHANGEABLE, LOG_FILE, PARAMETERS_FILE};

use super::assets;
use super::server::{self, Auth, TokenQuery, BODY_LIMIT};

/// How often the server looks for new lines in a running run's log.
const FOLLOW_EVERY: Duration = Duration::from_millis(300);

/// What the handlers share.
pub struct Runs {
    /// The token and the Host rule.
    pub auth: Arc<Auth>,
    /// The folder whose subfolders are runs (canonical).
    pub root: PathBuf,
    /// Whether the setup page is served (`--ui-root`): the list offers New run, Copy settings and Resume.
    pub setup: bool,
}

/// Whether a `train` holds the folder's output lock now (the lock file exists and cannot be shared).
fn running(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join(crate::lock::LOCK_FILE)) else {
        return false;
    };
    match f.try_lock_shared() {
        Ok(()) => {
            let _ = f.unlock();
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => false,
    }
}

impl Runs {
    /// The run folder `name` names: one plain folder name directly under the root, nothing else (no `..`,
    /// no separators, no link out of the root).
    fn run_dir(&self, name: &str) -> Option<PathBuf> {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains(['/', '\\', '\0'])
            && name.len() <= 255;
        if !plain {
            return None;
        }
        let dir = self.root.join(name).canonicalize().ok()?;
        (dir.parent() == Some(self.root.as_path()) && dir.join(PARAMETERS_FILE).is_file())
            .then_some(dir)
    }

    /// The runs under the root, newest first.
    fn list(&self) -> Vec<Value> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut runs: Vec<(std::time::SystemTime, Value)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let dir = self.run_dir(&name)?;
                let log = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
                let last: Option<Value> =
                    log.lines().rev().find_map(|l| serde_json::from_str(l).ok());
                let modified = std::fs::metadata(dir.join(LOG_FILE))
                    .or_else(|_| std::fs::metadata(dir.join(PARAMETERS_FILE)))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                let live = running(&dir);
                let v = json!({
                    "name": name,
                    "running": live,
                    "resumable": !live && unfinished(&dir, last.as_ref()),
                    "step": last.as_ref().and_then(|r| r.get("step").cloned()),
                    "epoch": last.as_ref().and_then(|r| r.get("epoch").cloned()),
                    "loss": last.as_ref().and_then(|r| r.get("loss").cloned()),
                    "checkpoints": checkpoint_folders(&dir).len(),
                });
                Some((modified, v))
            })
            .collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.0));
        runs.into_iter().map(|(_, v)| v).collect()
    }
}

/// Whether a run that is not running ended before its planned length (interrupted, stopped, or killed) and has a
/// checkpoint to resume from: its last logged epoch is short of `epochs` (or its step of `max_steps`).
fn unfinished(dir: &Path, last: Option<&Value>) -> bool {
    let resumable = checkpoint_folders(dir).iter().any(|c| {
        dir.join(c)
            .join(trainer_core::job::RUN_STATE_FILE)
            .is_file()
    });
    let text = std::fs::read_to_string(dir.join(PARAMETERS_FILE)).unwrap_or_default();
    let Ok(settings) = crate::settings::Settings::from_toml(&text) else {
        return false;
    };
    let field = |k: &str| last.and_then(|r| r.get(k)).and_then(Value::as_f64);
    let short = if settings.max_steps > 0 {
        field("step").is_none_or(|s| s < settings.max_steps as f64)
    } else {
        field("epoch").is_none_or(|e| e + 1e-9 < settings.epochs)
    };
    resumable && short
}

/// The checkpoint folders of a run, by name.
fn checkpoint_folders(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    v.sort();
    v
}

/// A checkpoint's reason, read back from its name (`checkpoint-12-user`, `checkpoint-30-epoch-2`, ...).
fn reason_of(name: &str) -> &'static str {
    let rest = name.trim_start_matches("checkpoint-");
    let tail = rest.split_once('-').map_or("", |(_, t)| t);
    match tail.split('-').next().unwrap_or("") {
        "" => "periodic",
        "epoch" => "epoch",
        "loss" => "loss",
        "best" => "best",
        "user" => "user",
        "final" => "final",
        _ => "other",
    }
}

/// The page's events for one line of a training log: its step, and the checkpoint saved at it. A line that is not
/// a JSON object gives none.
pub fn log_line_events(line: &str) -> Vec<(&'static str, Value)> {
    let Ok(Value::Object(mut r)) = serde_json::from_str::<Value>(line) else {
        return Vec::new();
    };
    for key in [
        "loss",
        "lr",
        "eval_loss",
        "grad_norm",
        "tokens_per_s",
        "time_s",
        "checkpoint",
    ] {
        r.entry(key).or_insert(Value::Null);
    }
    let checkpoint = r
        .get("checkpoint")
        .and_then(Value::as_str)
        .map(str::to_string);
    let step = r.get("step").cloned().unwrap_or(Value::Null);
    let controls = match r.remove("control") {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    };
    let mut out = vec![("step", Value::Object(r))];
    // The live-control outcomes the run logged at this step, as a served run's page gets them.
    for c in controls {
        let field = |k: &str| c.get(k).cloned().unwrap_or(Value::Null);
        out.push((
            "control",
            json!({
                "outcome": field("outcome"),
                "command": {"command": field("command"), "assignment": field("assignment")},
                "reason": field("reason"),
            }),
        ));
    }
    if let Some(name) = checkpoint {
        let reason = reason_of(&name);
        out.push((
            "checkpoint",
            json!({"name": name, "step": step, "reason": reason}),
        ));
    }
    out
}

/// Turns a run folder into the page's events, following its log while a `train` holds it.
struct Follower {
    dir: PathBuf,
    seq: u64,
    offset: u64,
    seen: Vec<String>,
}

impl Follower {
    fn event(&mut self, kind: &str, fields: Value) -> String {
        let mut obj = serde_json::Map::new();
        obj.insert("seq".into(), json!(self.seq));
        obj.insert("type".into(), json!(kind));
        if let Value::Object(f) = fields {
            obj.extend(f);
        }
        self.seq += 1;
        Value::Object(obj).to_string()
    }

    fn info(&mut self) -> String {
        let settings = std::fs::read_to_string(self.dir.join(PARAMETERS_FILE)).unwrap_or_default();
        let output = self.dir.display().to_string();
        self.event(
            "info",
            json!({
                "output": output,
                "settings_toml": settings,
                "data_summary": "(a run shown from its folder: the data summary is printed by the run, not kept)",
                "plan": "",
                "warnings": [],
                "changeable": CHANGEABLE,
            }),
        )
    }

    /// The complete lines added to the log since the last call, as events.
    fn new_lines(&mut self) -> Vec<String> {
        let mut buf = String::new();
        let read = File::open(self.dir.join(LOG_FILE)).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.offset))?;
            f.read_to_string(&mut buf)
        });
        if read.is_err() {
            return Vec::new();
        }
        let complete = buf.rfind('\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        let mut out = Vec::new();
        for line in buf[..complete].lines() {
            for (kind, fields) in log_line_events(line) {
                if kind == "checkpoint" {
                    if let Some(name) = fields.get("name").and_then(Value::as_str) {
                        self.seen.push(name.to_string());
                    }
                }
                out.push(self.event(kind, fields));
            }
        }
        out
    }

    /// The checkpoints logged that are gone from the folder (deleted by retention).
    fn deleted(&mut self) -> Vec<String> {
        let present = checkpoint_folders(&self.dir);
        let gone: Vec<String> = self
            .seen
            .iter()
            .filter(|n| !present.contains(n))
            .cloned()
            .collect();
        self.seen.retain(|n| present.contains(n));
        gone.into_iter()
            .map(|name| self.event("checkpoint_deleted", json!({ "name": name })))
            .collect()
    }

    fn end(&mut self) -> String {
        let text = "not running: the page shows what the folder holds".to_string();
        self.event(
            "finish",
            json!({"end": text, "step": Value::Null, "total_steps": Value::Null,
            "loss": Value::Null, "adapter": self.dir.display().to_string()}),
        )
    }

    /// Sends the folder's events to `tx` until the run is not running any more (or the page went away).
    fn follow(mut self, tx: &mpsc::Sender<String>) {
        let info = self.info();
        if tx.blocking_send(info).is_err() {
            return;
        }
        loop {
            let live = running(&self.dir);
            let mut batch = self.new_lines();
            batch.extend(self.deleted());
            for e in batch {
                if tx.blocking_send(e).is_err() {
                    return;
                }
            }
            if !live {
                let end = self.end();
                let _ = tx.blocking_send(end);
                return;
            }
            std::thread::sleep(FOLLOW_EVERY);
        }
    }
}

async fn index(
    State(s): State<Arc<Runs>>,
    q: Result<Query<TokenQuery>, QueryRejection>,
    h: HeaderMap,
) -> Response {
    server::page(&s.auth, q, &h, assets::RUNS_HTML)
}

async fn list(State(s): State<Arc<Runs>>, h: HeaderMap) -> Response {
    if !s.auth.has_cookie(&h) {
        return server::forbidden("no token");
    }
    let setup = s.setup;
    let runs = tokio::task::spawn_blocking(move || s.list())
        .await
        .unwrap_or_default();
    Json(json!({ "runs": runs, "setup": setup })).into_response()
}

async fn run_page(
    State(s): State<Arc<Runs>>,
    UrlPath(name): UrlPath<String>,
    q: Result<Query<TokenQuery>, QueryRejection>,
    h: HeaderMap,
) -> Response {
    if !s.auth.has_cookie(&h) {
        return server::page(&s.auth, q, &h, assets::RUN_HTML);
    }
    match s.run_dir(&name) {
        Some(_) => server::page(&s.auth, q, &h, assets::RUN_HTML),
        None => (StatusCode::NOT_FOUND, "no such run\n").into_response(),
    }
}

async fn events(
    State(s): State<Arc<Runs>>,
    UrlPath(name): UrlPath<String>,
    h: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    if !s.auth.has_cookie(&h) {
        return Err(server::forbidden("no token"));
    }
    let Some(dir) = s.run_dir(&name) else {
        return Err((StatusCode::NOT_FOUND, "no such run\n").into_response());
    };
    let (tx, rx) = mpsc::channel(256);
    let follower = Follower {
        dir,
        seq: 0,
        offset: 0,
        seen: Vec::new(),
    };
    tokio::task::spawn_blocking(move || follower.follow(&tx));
    let stream = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok(Event::default().data(e)), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn control(
    State(s): State<Arc<Runs>>,
    UrlPath(name): UrlPath<String>,
    h: HeaderMap,
    body: Result<Json<ControlCommand>, JsonRejection>,
) -> Response {
    let command = match server::control_command(&s.auth, &h, body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(dir) = s.run_dir(&name) else {
        return (StatusCode::NOT_FOUND, "no such run\n").into_response();
    };
    if !running(&dir) {
        return (StatusCode::CONFLICT, "the run is not running\n").into_response();
    }
    match ControlFile::send(&dir, &command) {
        Ok(_) => (
            StatusCode::ACCEPTED,
            "queued: the run applies it after its current step\n",
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot queue the command: {e}\n"),
        )
            .into_response(),
    }
}

/// The routes of `trainer-cli ui --runs DIR`.
pub fn router(s: Arc<Runs>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/runs", get(list))
        .route("/run/{name}/", get(run_page))
        .route("/run/{name}/api/events", get(events))
        .route("/run/{name}/api/control", post(control))
        .merge(assets::routes())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            s.auth.clone(),
            server::guard_host,
        ))
        .with_state(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_control_outcomes_become_control_events() {
        let line = r#"{"step":3,"epoch":0.5,"loss":2.0,"control":[{"command":"set","assignment":"stop_at_loss=1.5","outcome":"applied"},{"outcome":"unreadable","reason":"not JSON"}]}"#;
        let events = log_line_events(line);
        let kinds: Vec<&str> = events.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, ["step", "control", "control"]);
        assert_eq!(events[1].1["command"]["assignment"], "stop_at_loss=1.5");
        assert_eq!(events[1].1["outcome"], "applied");
        assert_eq!(events[2].1["reason"], "not JSON");
    }

    #[test]
    fn reasons_from_names() {
        assert_eq!(reason_of("checkpoint-12"), "periodic");
        assert_eq!(reason_of("checkpoint-12-user"), "user");
        assert_eq!(reason_of("checkpoint-30-epoch-2"), "epoch");
        assert_eq!(reason_of("checkpoint-7-loss-1_62"), "loss");
        assert_eq!(reason_of("checkpoint-7-best-1_50"), "best");
        assert_eq!(reason_of("checkpoint-40-final"), "final");
    }

    #[test]
    fn only_plain_folder_names_under_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("a")).unwrap();
        std::fs::write(root.join("a").join(PARAMETERS_FILE), "").unwrap();
        std::fs::create_dir(root.join("b")).unwrap();
        let runs = Runs {
            auth: Arc::new(Auth {
                token: "t".into(),
                loopback_port: None,
            }),
            root: root.clone(),
            setup: false,
        };
        assert_eq!(runs.run_dir("a"), Some(root.join("a")));
        for bad in ["", ".", "..", "../a", "a/..", "/etc", "b", ".hidden", "a\0"] {
            assert_eq!(runs.run_dir(bad), None, "{bad:?}");
        }
    }
}
