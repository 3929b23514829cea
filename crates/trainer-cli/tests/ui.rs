//! `train --ui`: the run's page in a real browser (chromium driven by chromedriver over WebDriver) against a
//! real training run on the test model, and the HTTP rules (token, Host, Origin, body limit, malformed
//! requests) checked at the socket.
//!
//! Skipped, with a message, only when `chromedriver` is not installed and `TRAINER_UI_TESTS` is not set; CI
//! installs chromium and chromium-driver and sets it, so there the test always runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::common::{small_text, tempdir, tiny_train};

/// How long any one wait of the test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(180);

/// Kills a child process when the test ends, however it ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `chromedriver` if it is installed; `None` (skip) only when `TRAINER_UI_TESTS` is unset.
pub fn chromedriver() -> Option<PathBuf> {
    let bin = std::env::var_os("CHROMEDRIVER")
        .map_or_else(|| PathBuf::from("chromedriver"), PathBuf::from);
    let found = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    match (found, std::env::var_os("TRAINER_UI_TESTS").is_some()) {
        (true, _) => Some(bin),
        (false, true) => panic!(
            "TRAINER_UI_TESTS is set but {} cannot run: install chromium and chromium-driver",
            bin.display()
        ),
        (false, false) => {
            eprintln!(
                "SKIPPED: the browser tests need chromedriver (apt-get install chromium chromium-driver); \
                 set TRAINER_UI_TESTS=1 to make its absence a failure"
            );
            None
        }
    }
}

/// One raw HTTP/1.1 exchange; returns the status code and the response.
pub fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

fn post(addr: SocketAddr, extra_headers: &str, body: &str) -> u16 {
    http(
        addr,
        &format!(
            "POST /api/control HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .0
}

/// A training run with its page: the child, its stderr lines as they come, the page's address and token.
struct Run {
    child: Killed,
    stderr: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    url: String,
    token: String,
    out: PathBuf,
}

impl Run {
    fn start(dir: &Path) -> Run {
        let out = dir.join("out");
        let mut c = tiny_train(&out, "64");
        // Long enough to be steered; the test stops it with stop_at_loss.
        c.arg("--text")
            .arg(small_text(dir))
            .args(["--epochs", "50", "--ui", "127.0.0.1:0"]);
        Run::spawn(c, out)
    }

    /// Runs `c` (a `train --ui` writing into `out`) and waits for its page's address.
    fn spawn(mut c: Command, out: PathBuf) -> Run {
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = Killed(c.spawn().unwrap());
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = stderr.clone();
        let pipe = child.0.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("run page: ") {
                    let _ = tx.send(url.to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let url = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            panic!(
                "no `run page:` line; stderr:\n{}",
                stderr.lock().unwrap().join("\n")
            )
        });
        let rest = url.strip_prefix("http://").unwrap();
        let (host, query) = rest.split_once("/?token=").unwrap();
        Run {
            addr: host.parse().unwrap(),
            token: query.to_string(),
            url,
            stderr,
            child,
            out,
        }
    }

    /// Optimizer steps in the training log so far.
    fn logged_steps(&self) -> usize {
        std::fs::read_to_string(self.out.join("training_log.jsonl"))
            .map_or(0, |s| s.lines().count())
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                t0.elapsed() < PATIENCE,
                "the run did not end; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

/// `trainer-cli ui --runs DIR` on a free port: the child and its page's address.
fn serve_runs(dir: &Path) -> (Killed, String) {
    let mut c = crate::common::cli();
    c.arg("ui")
        .arg("--runs")
        .arg(dir)
        .args(["--ui", "127.0.0.1:0"]);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = Killed(c.spawn().unwrap());
    let pipe = child.0.stderr.take().unwrap();
    let mut lines = BufReader::new(pipe).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("`ui` ended without printing its address")
            .unwrap();
        if let Some(url) = line.strip_prefix("runs page: ") {
            break url.to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, url)
}

/// Where the browser test leaves its screenshots (docs/ui.md says how to refresh the ones in docs/).
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `chromedriver` started on a free port (killed when the first value drops), the port, and a tokio runtime
/// for the WebDriver client.
pub fn start_driver(driver: &Path) -> (Killed, u16, tokio::runtime::Runtime) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (Killed(child), port, rt)
}

pub async fn browser(driver_port: u16, profile: &Path) -> Client {
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1200,1000",
                     format!("--user-data-dir={}", profile.display())],
        }
    });
    let caps = caps.as_object().unwrap().clone();
    let t0 = Instant::now();
    loop {
        // chromedriver needs a moment before it listens.
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
        {
            Ok(c) => return c,
            Err(e) if t0.elapsed() > Duration::from_secs(30) => panic!("no WebDriver session: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub async fn js_u64(c: &Client, script: &str) -> u64 {
    c.execute(script, vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(0)
}

/// Waits until `script` returns true in the page.
pub async fn until(c: &Client, script: &str, what: &str) {
    let t0 = Instant::now();
    while c.execute(script, vec![]).await.unwrap().as_bool() != Some(true) {
        assert!(t0.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn text(c: &Client, id: &str) -> String {
    c.find(Locator::Id(id)).await.unwrap().text().await.unwrap()
}

#[test]
fn run_page_in_a_browser() {
    let Some(driver) = chromedriver() else { return };
    let dir = tempdir("ui-run");
    let mut run = Run::start(&dir);
    let addr = run.addr;
    let tok = run.token.clone();

    // --- the HTTP rules, at the socket, while the run trains ---
    let get = |path: &str, headers: &str| {
        http(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"),
        )
        .0
    };
    assert_eq!(get("/", ""), 403, "the page without the token");
    assert_eq!(get("/?token=0123", ""), 403, "a wrong token");
    assert_eq!(get(&format!("/?token={tok}"), ""), 200);
    assert_eq!(
        get("/api/events", ""),
        403,
        "the event stream without the cookie"
    );
    let foreign = http(
        addr,
        &format!(
            "GET /?token={tok} HTTP/1.1\r\nHost: attacker.example:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        ),
    );
    assert_eq!(
        foreign.0, 403,
        "a non-loopback Host header (DNS rebinding): {}",
        foreign.1
    );
    let cookie = format!("Cookie: trainer_ui_token={tok}\r\n");
    let origin = format!("Origin: http://{addr}\r\n");
    let save = r#"{"command":"save-now"}"#;
    assert_eq!(post(addr, "", save), 403, "a POST without the token");
    assert_eq!(post(addr, &cookie, save), 403, "a POST without an Origin");
    assert_eq!(
        post(
            addr,
            &format!("{cookie}Origin: http://attacker.example\r\n"),
            save
        ),
        403,
        "a foreign Origin"
    );
    let both = format!("{cookie}{origin}");
    assert_eq!(
        post(addr, &both, &"x".repeat(100_000)),
        413,
        "an oversized body"
    );
    for bad in [
        "{",
        "[]",
        r#"{"command":"format-disk"}"#,
        r#"{"command":"set","assignment":"lr=1"}"#,
    ] {
        let code = post(addr, &both, bad);
        assert!((400..500).contains(&code), "{bad}: {code}");
    }
    assert_eq!(get("/../../etc/passwd", &cookie), 404);

    // --- `ui --runs` over the same folder, while the run trains ---
    let (_runs_server, runs_url) = serve_runs(&dir);
    let runs_addr: SocketAddr = runs_url
        .strip_prefix("http://")
        .and_then(|r| r.split_once('/'))
        .map(|(h, _)| h.parse().unwrap())
        .unwrap();
    let runs_tok = runs_url.split_once("?token=").unwrap().1.to_string();
    let runs_cookie = format!("Cookie: trainer_ui_token={runs_tok}\r\n");
    let runs_get = |path: &str, headers: &str| {
        http(
            runs_addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: {runs_addr}\r\n{headers}Connection: close\r\n\r\n"
            ),
        )
    };
    assert_eq!(
        runs_get("/api/runs", "").0,
        403,
        "the list without the token"
    );
    // The run writes training_parameters.toml (what makes a folder a run) just before its first step.
    let t0 = Instant::now();
    loop {
        let (code, listing) = runs_get("/api/runs", &runs_cookie);
        assert_eq!(code, 200);
        if listing.contains(r#""name":"out""#) && listing.contains(r#""running":true"#) {
            break;
        }
        assert!(
            t0.elapsed() < PATIENCE,
            "the running run is not listed: {listing}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for path in [
        "/run/../../etc/passwd/",
        "/run/..%2F..%2Fetc/",
        "/run/%2Fetc/",
        "/run/profile-1/",
        "/run/nope/api/events",
    ] {
        assert_eq!(runs_get(path, &runs_cookie).0, 404, "{path}");
    }
    assert_eq!(
        get(
            "/api/events",
            &format!("Cookie: trainer_ui_token={runs_tok}\r\n")
        ),
        403,
        "one server's token opens only its own pages"
    );

    // --- the page in chromium ---
    let (_driver, driver_port, rt) = start_driver(&driver);
    rt.block_on(async {
        let c = browser(driver_port, &dir.join("profile-1")).await;
        c.goto(&format!("http://{addr}/")).await.unwrap();
        let body = c.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
        assert!(body.contains("forbidden"), "the page without the token: {body}");

        c.goto(&run.url).await.unwrap();
        until(&c, "return window.trainerUi.points() >= 2", "two steps on the chart").await;
        let n = js_u64(&c, "return window.trainerUi.points()").await;
        until(&c, &format!("return window.trainerUi.points() > {n}"), "the chart gaining a point").await;
        assert!(text(&c, "settings").await.contains("rank"), "the settings are shown");
        assert!(text(&c, "data-summary").await.contains("blocks"), "the data summary is shown");

        // Save now: the run saves checkpoint-N-user, and the page lists it.
        c.find(Locator::Id("save-now")).await.unwrap().click().await.unwrap();
        until(
            &c,
            "return [...document.querySelectorAll('#checkpoints tbody tr')].some(r => r.dataset.name.endsWith('-user'))",
            "a -user checkpoint on the page",
        )
        .await;
        let name: String = c
            .execute(
                "return [...document.querySelectorAll('#checkpoints tbody tr')].map(r => r.dataset.name).find(n => n.endsWith('-user'))",
                vec![],
            )
            .await
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        assert!(run.out.join(&name).join("adapter_model.safetensors").is_file(), "{name} on disk");
        assert!(text(&c, "control-log").await.contains("applied: save-now"));

        // Closing the browser leaves the run going; a new page shows every logged step.
        c.close().await.unwrap();
        let before = run.logged_steps();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(run.child.0.try_wait().unwrap().is_none(), "the run ended with the browser");
        let c = browser(driver_port, &dir.join("profile-2")).await;
        c.goto(&run.url).await.unwrap();
        until(&c, &format!("return window.trainerUi.points() >= {}", before + 1), "the history after a reload").await;
        let steps = c.execute("return window.trainerUi.steps()", vec![]).await.unwrap();
        let steps: Vec<u64> = serde_json::from_value(steps).unwrap();
        assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>(), "every step, in order, once");
        // The cookie now stands for the token: a reload without it in the address works.
        c.goto(&format!("http://{addr}/")).await.unwrap();
        until(&c, &format!("return window.trainerUi.points() >= {}", steps.len()), "the page by cookie").await;

        // Stop at loss above the current loss: the run stops, and the page says why.
        let field = c.find(Locator::Id("set-stop_at_loss")).await.unwrap();
        field.send_keys("1000").await.unwrap();
        c.find(Locator::Id("set-stop_at_loss-button")).await.unwrap().click().await.unwrap();
        until(&c, "return window.trainerUi.ended()", "the end of the run on the page").await;
        let end = text(&c, "end").await;
        assert!(end.contains("stop_at_loss"), "{end}");
        assert!(text(&c, "control-log").await.contains("applied: set stop_at_loss=1000"));
        let shots = screenshot_dir();
        std::fs::write(shots.join("run.png"), c.screenshot().await.unwrap()).unwrap();
        c.close().await.unwrap();

        // The finished run from its folder: the list, then its page with every logged step and checkpoint.
        let mut t0 = Instant::now();
        while run.child.0.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < PATIENCE, "the run did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let c = browser(driver_port, &dir.join("profile-3")).await;
        c.goto(&runs_url).await.unwrap();
        c.wait().for_element(Locator::Css("#runs tr[data-name='out'] a")).await.unwrap().click().await.unwrap();
        let logged = run.logged_steps() as u64;
        t0 = Instant::now();
        while js_u64(&c, "return window.trainerUi ? window.trainerUi.points() : 0").await != logged {
            assert!(t0.elapsed() < PATIENCE, "the folder's page did not show the {logged} logged steps");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        until(&c, "return window.trainerUi.ended()", "the folder run shown as not running").await;
        let listed = c
            .execute("return [...document.querySelectorAll('#checkpoints tbody tr')].map(r => r.dataset.name)", vec![])
            .await
            .unwrap();
        assert!(listed.as_array().unwrap().iter().any(|n| n.as_str() == Some(name.as_str())), "{listed}");
        // The control outcomes, read back from the training log.
        let controls = text(&c, "control-log").await;
        assert!(controls.contains("applied: save-now"), "{controls}");
        assert!(controls.contains("applied: set stop_at_loss=1000"), "{controls}");
        std::fs::write(shots.join("runs-run.png"), c.screenshot().await.unwrap()).unwrap();
        c.close().await.unwrap();
    });
    let status = run.wait_exit();
    assert!(status.success(), "{status}; stderr:\n{}", run.stderr());
    let stderr = run.stderr();
    assert!(stderr.contains("stopped at loss"), "{stderr}");

    // A run resumed with --ui: its page shows the steps logged before the checkpoint too.
    let user = std::fs::read_dir(&run.out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().ends_with("-user"))
        .expect("the user checkpoint");
    let resumed_at: u64 = user
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split('-')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut c = crate::common::cli();
    c.arg("train")
        .arg("--output")
        .arg(&run.out)
        .arg("--resume")
        .arg(&user);
    c.args(["--progress", "jsonl", "--ui", "127.0.0.1:0"]);
    let mut resumed = Run::spawn(c, run.out.clone());
    rt.block_on(async {
        let c = browser(driver_port, &dir.join("profile-4")).await;
        c.goto(&resumed.url).await.unwrap();
        until(
            &c,
            &format!("return window.trainerUi.points() > {}", resumed_at + 1),
            "the resumed run's steps",
        )
        .await;
        let steps: Vec<u64> = serde_json::from_value(
            c.execute("return window.trainerUi.steps()", vec![])
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            steps,
            (1..=steps.len() as u64).collect::<Vec<_>>(),
            "the steps before and after the resume"
        );
        c.close().await.unwrap();
    });
    let stop = r#"{"command":"stop"}"#;
    let origin = format!(
        "Cookie: trainer_ui_token={}\r\nOrigin: http://{}\r\n",
        resumed.token, resumed.addr
    );
    assert_eq!(post(resumed.addr, &origin, stop), 202);
    let status = resumed.wait_exit();
    assert!(status.success(), "{status}; stderr:\n{}", resumed.stderr());
    assert!(
        resumed.stderr().contains("stopped on request"),
        "{}",
        resumed.stderr()
    );
}
