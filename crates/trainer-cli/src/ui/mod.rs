//! The web page of a training run (`train --ui`): progress, live charts, checkpoints, settings and the
//! controls (Save now, Stop, live settings), served on loopback with a token. The job runs on the caller's
//! thread as always; the server runs on its own threads and only sees what the job's observer pushes, and
//! only sends commands through the job's control channel, so a page closing, a broken connection or a bad
//! request never touches the run.

mod assets;
mod form;
mod hub;
mod observer;
mod runs;
mod server;
mod setup;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use trainer_core::job::{ControlCommand, CHANGEABLE};

pub use hub::Hub;
pub use observer::{Both, BothSources, UiObserver};

/// The address `--ui` binds when given without one.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7860";

/// The web page flags of `train`.
#[derive(Debug, Clone, Args)]
pub struct UiFlags {
    /// Serve the run's page while it trains, on ADDR (default 127.0.0.1:7860; port 0 picks a free one). The
    /// address with its token is printed at start.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_ADDR)]
    pub ui: Option<String>,
    /// Allow --ui on an address that is not loopback (anyone who can reach it and has the token can steer
    /// the run).
    #[arg(long, requires = "ui")]
    pub ui_public: bool,
}

/// Parses `--ui`'s address; one that is not loopback needs `--ui-public`.
pub fn parse_addr(addr: &str, public: bool) -> Result<SocketAddr> {
    let a: SocketAddr = addr.parse().with_context(|| {
        format!("--ui: `{addr}` is not an IP address with a port (e.g. 127.0.0.1:7860)")
    })?;
    if !a.ip().is_loopback() && !public {
        bail!(
            "--ui: {addr} is not a loopback address; anyone who can reach it could watch and steer the run. \
             Add --ui-public to serve it anyway"
        );
    }
    Ok(a)
}

/// What the page shows besides the run's events: settings, data summary, step plan, warnings.
pub struct RunInfo {
    /// The output folder.
    pub output: String,
    /// The resolved settings, as written to training_parameters.toml.
    pub settings_toml: String,
    /// The data summary text.
    pub data_summary: String,
    /// The step plan text.
    pub plan: String,
    /// Warnings found while preparing the run.
    pub warnings: Vec<String>,
}

/// A bound listener with its runtime, token and address.
struct Bound {
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    auth: Arc<server::Auth>,
    /// `http://ADDR/` (a wildcard address shown as 127.0.0.1).
    base: String,
}

impl Bound {
    fn bind(flags: &UiFlags) -> Result<Self> {
        let Some(addr) = flags.ui.as_deref() else {
            bail!("no --ui address");
        };
        let addr = parse_addr(addr, flags.ui_public)?;
        if !addr.ip().is_loopback() {
            eprintln!(
                "warning: --ui-public: the page is served on {addr}; anyone who can reach it and has the token \
                 can watch and steer runs (plain HTTP: the token is not encrypted)"
            );
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ui-server")
            .enable_all()
            .build()
            .context("cannot start the web server's runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("--ui: cannot listen on {addr}"))?;
        let bound = listener.local_addr().context("--ui: no local address")?;
        let shown = if bound.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), bound.port())
        } else {
            bound
        };
        let auth = Arc::new(server::Auth {
            token: server::new_token().context("cannot draw the page's token")?,
            loopback_port: bound.ip().is_loopback().then_some(bound.port()),
        });
        Ok(Self {
            runtime,
            listener,
            auth,
            base: format!("http://{shown}/"),
        })
    }

    /// The address to open, with the token.
    fn url(&self) -> String {
        format!("{}?token={}", self.base, self.auth.token)
    }
}

/// A running page server; dropping it stops the server (the run's last state stays in its folder).
pub struct RunUi {
    /// The page's events; the job's [`UiObserver`] pushes into it.
    pub hub: Arc<Hub>,
    /// The address with the token, to open in a browser.
    pub url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl RunUi {
    /// Binds `flags`' address and serves the page of a run described by `info`. Returns the server and the
    /// receiving end of the page's commands (a [`ControlSource`](trainer_core::job::ControlSource)).
    pub fn start(flags: &UiFlags, info: RunInfo) -> Result<(Self, Receiver<ControlCommand>)> {
        let bound = Bound::bind(flags)?;
        let url = bound.url();
        let hub = Arc::new(Hub::new());
        hub.push(
            "info",
            json!({
                "output": info.output,
                "settings_toml": info.settings_toml,
                "data_summary": info.data_summary,
                "plan": info.plan,
                "warnings": info.warnings,
                "changeable": CHANGEABLE,
            }),
        );
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(server::Server {
            auth: bound.auth,
            hub: hub.clone(),
            control: Mutex::new(Some(tx)),
        });
        let app = server::router(state);
        let listener = bound.listener;
        bound.runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("warning: the run's web page stopped: {e}");
            }
        });
        Ok((
            Self {
                hub,
                url,
                runtime: Some(bound.runtime),
            },
            rx,
        ))
    }
}

impl Drop for RunUi {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Open event streams never end by themselves: do not wait for them.
            rt.shutdown_background();
        }
    }
}

/// Arguments of `trainer-cli ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// The folder whose subfolders are training outputs (finished or running).
    #[arg(long)]
    pub runs: PathBuf,
    /// Listen on ADDR (default 127.0.0.1:7860; port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub ui: String,
    /// Allow an address that is not loopback.
    #[arg(long)]
    pub ui_public: bool,
    /// Serve the setup page (a form to set up, preview and start runs, written under --runs): the form may name
    /// models and data files under DIR only. Repeatable.
    #[arg(long, value_name = "DIR")]
    pub ui_root: Vec<PathBuf>,
}

/// Ctrl-C, or SIGTERM where there is one (as `train` stops on either).
async fn interrupt_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            let ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
            let term = std::pin::pin!(term.recv());
            futures_util::future::select(ctrl_c, term).await;
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs `trainer-cli ui`: serves the runs under `--runs` until Ctrl-C.
pub fn serve_runs(args: &UiArgs) -> Result<ExitCode> {
    let root = args
        .runs
        .canonicalize()
        .with_context(|| format!("--runs: cannot open folder {}", args.runs.display()))?;
    if !root.is_dir() {
        bail!("--runs: {} is not a folder", args.runs.display());
    }
    let flags = UiFlags {
        ui: Some(args.ui.clone()),
        ui_public: args.ui_public,
    };
    let bound = Bound::bind(&flags)?;
    eprintln!("runs page: {}", bound.url());
    let mut roots = Vec::new();
    for r in &args.ui_root {
        let c = r
            .canonicalize()
            .with_context(|| format!("--ui-root: cannot open folder {}", r.display()))?;
        if !c.is_dir() {
            bail!("--ui-root: {} is not a folder", r.display());
        }
        roots.push(c);
    }
    let setup = (!roots.is_empty()).then(|| {
        Arc::new(setup::Setup {
            auth: bound.auth.clone(),
            roots,
            runs_root: root.clone(),
            slot: Mutex::default(),
            preview: Mutex::default(),
        })
    });
    let state = Arc::new(runs::Runs {
        auth: bound.auth.clone(),
        root,
        setup: setup.is_some(),
    });
    let mut app = runs::router(state);
    if let Some(s) = &setup {
        app = app.merge(setup::router(s.clone()));
        eprintln!("setup page: {}setup?token={}", bound.base, bound.auth.token);
    }
    let listener = bound.listener;
    // Ctrl-C ends the server at once: open event streams never end by themselves, so no graceful wait.
    bound.runtime.block_on(async move {
        let served = std::pin::pin!(axum::serve(listener, app).into_future());
        let interrupted = std::pin::pin!(interrupt_signal());
        match futures_util::future::select(served, interrupted).await {
            futures_util::future::Either::Left((served, _)) => served,
            futures_util::future::Either::Right(_) => Ok(()),
        }
    })?;
    bound.runtime.shutdown_background();
    // Ctrl-C: a run started from the page finishes its step and saves a resumable checkpoint, as `train` does.
    if let Some(code) = setup.and_then(|s| s.stop_and_wait()) {
        return Ok(code);
    }
    Ok(ExitCode::SUCCESS)
}
