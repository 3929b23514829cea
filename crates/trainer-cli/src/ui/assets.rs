//! The page's files, embedded in the binary (the page works with no network): our HTML and script, and
//! uPlot 1.6.32 from the npm registry (MIT licence, `assets/uPlot-LICENSE`).

use axum::http::header;
use axum::routing::get;
use axum::Router;

/// A run's page.
pub const RUN_HTML: &str = include_str!("assets/run.html");
/// The list of runs (`ui --runs`).
pub const RUNS_HTML: &str = include_str!("assets/runs.html");
/// The setup page (`ui --ui-root`).
pub const SETUP_HTML: &str = include_str!("assets/setup.html");
const SETUP_JS: &str = include_str!("assets/setup.js");
const RUNS_JS: &str = include_str!("assets/runs.js");
const RUN_JS: &str = include_str!("assets/run.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const UPLOT_JS: &str = include_str!("assets/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("assets/uPlot-LICENSE");

fn file<S: Clone + Send + Sync + 'static>(
    path: &str,
    mime: &'static str,
    body: &'static str,
) -> Router<S> {
    Router::new().route(
        path,
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, mime),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
        }),
    )
}

/// The static files: public code, no run data, so no token.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .merge(file(
            "/assets/run.js",
            "text/javascript; charset=utf-8",
            RUN_JS,
        ))
        .merge(file(
            "/assets/runs.js",
            "text/javascript; charset=utf-8",
            RUNS_JS,
        ))
        .merge(file(
            "/assets/setup.js",
            "text/javascript; charset=utf-8",
            SETUP_JS,
        ))
        .merge(file(
            "/assets/style.css",
            "text/css; charset=utf-8",
            STYLE_CSS,
        ))
        .merge(file(
            "/assets/uPlot.js",
            "text/javascript; charset=utf-8",
            UPLOT_JS,
        ))
        .merge(file(
            "/assets/uPlot.css",
            "text/css; charset=utf-8",
            UPLOT_CSS,
        ))
        .merge(file(
            "/assets/uPlot-LICENSE.txt",
            "text/plain; charset=utf-8",
            UPLOT_LICENSE,
        ))
}
