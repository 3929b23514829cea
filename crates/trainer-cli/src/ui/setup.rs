//! The setup page of `trainer-cli ui --runs DIR --ui-root ROOT...`: the form (pre-filled with the defaults, or
//! with an earlier run's settings), the files under the roots it may name, Preview (the dry run), Start (the
//! job in this process, one at a time, writing `DIR/NAME` as `train --output DIR/NAME` would) and Resume.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use trainer_core::job::{Interrupter, PARAMETERS_FILE};

use super::assets;
use super::form::{self, FieldError, Form};
use super::server::{self, Auth, TokenQuery};
use crate::settings::Settings;
use crate::train::{self, TrainArgs};

/// The largest form accepted.
const FORM_LIMIT: usize = 64 * 1024;
/// How deep under a root the file list looks, and how many entries it lists at most.
const LIST_DEPTH: usize = 4;
const LIST_MAX: usize = 2000;

/// The job this server runs (at most one at a time).
#[derive(Default)]
pub struct Slot {
    /// The run's folder name.
    name: String,
    /// `running`, `finished`, `interrupted` or `failed` (`""`: none yet).
    state: &'static str,
    /// The error of a failed run.
    message: String,
    interrupter: Interrupter,
    handle: Option<JoinHandle<()>>,
}

/// What the setup handlers share.
pub struct Setup {
    /// The token and the Host rule.
    pub auth: Arc<Auth>,
    /// The folders the form may name files under (canonical).
    pub roots: Vec<PathBuf>,
    /// The folder runs are written under (canonical).
    pub runs_root: PathBuf,
    /// The job.
    pub slot: Mutex<Slot>,
    /// One Preview at a time (each loads the model).
    pub preview: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn errors(status: StatusCode, errors: Vec<FieldError>) -> Response {
    (status, Json(json!({ "errors": errors }))).into_response()
}

fn one_error(status: StatusCode, field: &str, message: String) -> Response {
    errors(
        status,
        vec![FieldError {
            field: field.to_string(),
            message,
        }],
    )
}

/// An error chain as one line (as `main` prints it).
fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

impl Setup {
    /// The `.gguf` files and model folders, and the `.txt`/`.json`/`.jsonl` files and folders, under the roots.
    fn files(&self) -> Value {
        let (mut models, mut data) = (Vec::new(), Vec::new());
        let mut seen = 0;
        for root in &self.roots {
            walk(root, root, 0, &mut seen, &mut models, &mut data);
        }
        json!({ "roots": self.roots, "models": models, "data": data })
    }

    /// Stops the running job (a resumable checkpoint is saved) and waits for it; its exit code.
    pub fn stop_and_wait(&self) -> Option<ExitCode> {
        let (interrupter, handle) = {
            let mut slot = lock(&self.slot);
            (slot.interrupter.clone(), slot.handle.take())
        };
        let handle = handle?;
        if !handle.is_finished() {
            eprintln!("interrupt: the run finishes its current step, then saves a checkpoint");
        }
        interrupter.stop();
        let _ = handle.join();
        let state = lock(&self.slot).state;
        Some(if state == "interrupted" {
            ExitCode::from(130)
        } else {
            ExitCode::SUCCESS
        })
    }

    /// Starts `args` in a thread as run `name`, unless a job is running.
    fn start(self: &Arc<Self>, name: String, mut args: TrainArgs) -> Response {
        let mut slot = lock(&self.slot);
        if slot.state == "running" {
            return one_error(
                StatusCode::CONFLICT,
                "",
                format!(
                    "run `{}` is still running: this server runs one at a time. Stop it on its page, or wait",
                    slot.name
                ),
            );
        }
        if let Some(h) = slot.handle.take() {
            let _ = h.join();
        }
        let interrupter = Interrupter::new();
        args.progress = crate::observer::ProgressMode::None;
        let me = self.clone();
        let run_interrupter = interrupter.clone();
        let thread_name = name.clone();
        eprintln!("starting run {name}");
        let handle = std::thread::Builder::new()
            .name("ui-job".into())
            .spawn(move || {
                let result = train::run_with(&args, Some(run_interrupter));
                let mut slot = lock(&me.slot);
                match result {
                    Ok(code) if code == ExitCode::from(130) => slot.state = "interrupted",
                    Ok(_) => slot.state = "finished",
                    Err(e) => {
                        slot.state = "failed";
                        slot.message = chain(&e);
                        eprintln!("run {thread_name} failed: {}", slot.message);
                    }
                }
            });
        match handle {
            Ok(h) => {
                *slot = Slot {
                    name: name.clone(),
                    state: "running",
                    message: String::new(),
                    interrupter,
                    handle: Some(h),
                };
                (StatusCode::ACCEPTED, Json(json!({ "name": name }))).into_response()
            }
            Err(e) => one_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "",
                format!("cannot start the run's thread: {e}"),
            ),
        }
    }
}

/// Lists what the form may pick under `dir`, at most [`LIST_DEPTH`] folders deep and [`LIST_MAX`] entries;
/// hidden entries are skipped, and links are followed only where they stay under `root`.
fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    seen: &mut usize,
    models: &mut Vec<String>,
    data: &mut Vec<String>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        *seen += 1;
        if *seen > LIST_MAX {
            return;
        }
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        let Ok(canonical) = path.canonicalize() else {
            continue;
        };
        if hidden || !canonical.starts_with(root) {
            continue;
        }
        let shown = canonical.display().to_string();
        if canonical.is_dir() {
            if canonical.join("config.json").is_file() {
                models.push(shown);
            } else if depth < LIST_DEPTH {
                let has_text = std::fs::read_dir(&canonical).is_ok_and(|mut e| {
                    e.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "txt")))
                });
                if has_text {
                    data.push(format!("{shown}/"));
                }
                walk(root, &canonical, depth + 1, seen, models, data);
            }
        } else {
            match canonical.extension().and_then(|x| x.to_str()) {
                Some("gguf") => models.push(shown),
                Some("txt" | "json" | "jsonl" | "jinja") => data.push(shown),
                _ => {}
            }
        }
    }
}

async fn page(
    State(s): State<Arc<Setup>>,
    q: Result<Query<TokenQuery>, QueryRejection>,
    h: HeaderMap,
) -> Response {
    server::page(&s.auth, q, &h, assets::SETUP_HTML)
}

async fn files(State(s): State<Arc<Setup>>, h: HeaderMap) -> Response {
    if !s.auth.has_cookie(&h) {
        return server::forbidden("no token");
    }
    let listing = tokio::task::spawn_blocking(move || s.files())
        .await
        .unwrap_or_default();
    Json(listing).into_response()
}

/// `?copy=NAME`: the form starts from run NAME's training_parameters.toml.
#[derive(Deserialize)]
struct DefaultsQuery {
    copy: Option<String>,
}

async fn defaults(
    State(s): State<Arc<Setup>>,
    q: Result<Query<DefaultsQuery>, QueryRejection>,
    h: HeaderMap,
) -> Response {
    if !s.auth.has_cookie(&h) {
        return server::forbidden("no token");
    }
    let mut settings = Settings::default();
    if let Some(name) = q.ok().and_then(|Query(q)| q.copy) {
        let dir = form::plain_name(&name)
            .then(|| s.runs_root.join(&name).canonicalize().ok())
            .flatten()
            .filter(|d| d.parent() == Some(s.runs_root.as_path()));
        let Some(dir) = dir else {
            return (StatusCode::NOT_FOUND, "no such run\n").into_response();
        };
        let text = std::fs::read_to_string(dir.join(PARAMETERS_FILE)).unwrap_or_default();
        if let Err(e) = settings.overlay_toml(&text) {
            return one_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "",
                format!("{name}/{PARAMETERS_FILE}: {e:#}"),
            );
        }
    }
    let help = form::help_texts();
    let values: serde_json::Map<String, Value> = form::values_of(&settings)
        .into_iter()
        .map(|(k, (v, kind))| {
            let h = help.get(&k).cloned().unwrap_or_default();
            (k, json!({ "value": v, "kind": kind, "help": h }))
        })
        .collect();
    Json(json!({ "values": values })).into_response()
}

/// The form read and checked: the train arguments, or the errors to show.
fn checked(
    s: &Setup,
    h: &HeaderMap,
    body: Result<Json<Form>, JsonRejection>,
    with_output: bool,
) -> Result<(String, TrainArgs), Response> {
    server::check_post(&s.auth, h)?;
    let form = match body {
        Ok(Json(f)) => f,
        Err(e) => return Err((e.status(), format!("{}\n", e.body_text())).into_response()),
    };
    let output = if with_output {
        if !form::plain_name(&form.name) {
            return Err(one_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "name",
                "name: give the run a folder name (letters, digits, - or _; no / and not starting with .)"
                    .into(),
            ));
        }
        let out = s.runs_root.join(&form.name);
        if out.exists() {
            return Err(one_error(
                StatusCode::CONFLICT,
                "name",
                format!("name: {} exists already: choose another name", form.name),
            ));
        }
        Some(out)
    } else {
        None
    };
    let args = form::train_args(&form, &s.roots, output.as_deref())
        .map_err(|e| errors(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    Ok((form.name, args))
}

async fn check(
    State(s): State<Arc<Setup>>,
    h: HeaderMap,
    body: Result<Json<Form>, JsonRejection>,
) -> Response {
    match checked(&s, &h, body, false) {
        Ok(_) => Json(json!({ "errors": [] })).into_response(),
        Err(r) => r,
    }
}

async fn preview(
    State(s): State<Arc<Setup>>,
    h: HeaderMap,
    body: Result<Json<Form>, JsonRejection>,
) -> Response {
    let args = match checked(&s, &h, body, false) {
        Ok((_, a)) => a,
        Err(r) => return r,
    };
    let done = tokio::task::spawn_blocking(move || {
        let _one = lock(&s.preview);
        crate::dry_run::preview(&args)
    })
    .await;
    match done {
        Ok(Ok(p)) => Json(json!({ "text": p.text, "lr_curve": p.lr_curve })).into_response(),
        Ok(Err(e)) => one_error(StatusCode::UNPROCESSABLE_ENTITY, "", chain(&e)),
        Err(e) => one_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "",
            format!("the preview failed: {e}"),
        ),
    }
}

async fn start(
    State(s): State<Arc<Setup>>,
    h: HeaderMap,
    body: Result<Json<Form>, JsonRejection>,
) -> Response {
    match checked(&s, &h, body, true) {
        Ok((name, args)) => s.start(name, args),
        Err(r) => r,
    }
}

/// `{"name": NAME}` of Resume.
#[derive(Deserialize)]
struct ResumeBody {
    name: String,
}

async fn resume(
    State(s): State<Arc<Setup>>,
    h: HeaderMap,
    body: Result<Json<ResumeBody>, JsonRejection>,
) -> Response {
    if let Err(r) = server::check_post(&s.auth, &h) {
        return r;
    }
    let name = match body {
        Ok(Json(b)) => b.name,
        Err(e) => return (e.status(), format!("{}\n", e.body_text())).into_response(),
    };
    let dir = form::plain_name(&name)
        .then(|| s.runs_root.join(&name).canonicalize().ok())
        .flatten()
        .filter(|d| d.parent() == Some(s.runs_root.as_path()) && d.join(PARAMETERS_FILE).is_file());
    let Some(dir) = dir else {
        return (StatusCode::NOT_FOUND, "no such run\n").into_response();
    };
    let mut args = TrainArgs::from_settings(Default::default());
    args.settings.run.output = Some(dir);
    args.resume = Some("latest".into());
    s.start(name, args)
}

async fn job(State(s): State<Arc<Setup>>, h: HeaderMap) -> Response {
    if !s.auth.has_cookie(&h) {
        return server::forbidden("no token");
    }
    let slot = lock(&s.slot);
    Json(json!({ "name": slot.name, "state": slot.state, "message": slot.message })).into_response()
}

/// The routes of the setup page.
pub fn router(s: Arc<Setup>) -> Router {
    Router::new()
        .route("/setup", get(page))
        .route("/api/setup/files", get(files))
        .route("/api/setup/defaults", get(defaults))
        .route("/api/setup/check", post(check))
        .route("/api/setup/preview", post(preview))
        .route("/api/setup/start", post(start))
        .route("/api/setup/resume", post(resume))
        .route("/api/setup/job", get(job))
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .layer(middleware::from_fn_with_state(
            s.auth.clone(),
            server::guard_host,
        ))
        .with_state(s)
}
