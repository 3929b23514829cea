//! `trainer-cli ui --runs DIR --ui-root ROOT`: the setup page in a real browser (a bad value shows the command
//! line's error next to its field, Preview shows the dry run, Start trains on the test model and opens the run's
//! page, which gains points; Copy settings; Resume of a stopped run), the roots enforced at the socket, and the
//! adapter of a run started from the page byte-identical to `train` with the same settings.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};

use crate::common::{cli, model, small_text, tempdir};
use crate::ui::{
    browser, chromedriver, http, js_u64, screenshot_dir, start_driver, text, until, Killed,
    PATIENCE,
};

/// `ui --runs runs --ui-root ...` on a free port: the child, its address and its token.
fn serve(runs: &Path, roots: &[&Path]) -> (Killed, SocketAddr, String) {
    let mut c = cli();
    c.arg("ui").arg("--runs").arg(runs);
    for r in roots {
        c.arg("--ui-root").arg(r);
    }
    c.args(["--ui", "127.0.0.1:0"]);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = Killed(c.spawn().unwrap());
    let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("`ui` ended early").unwrap();
        if let Some(url) = line.strip_prefix("setup page: ") {
            break url.to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let rest = url.strip_prefix("http://").unwrap();
    let (host, token) = rest.split_once("/setup?token=").unwrap();
    (child, host.parse().unwrap(), token.to_string())
}

/// A POST from the page (token cookie and Origin); the status and the response.
fn post(addr: SocketAddr, token: &str, path: &str, body: &str) -> (u16, String) {
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: trainer_ui_token={token}\r\nOrigin: http://{addr}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn get(addr: SocketAddr, token: &str, path: &str) -> (u16, String) {
    http(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: trainer_ui_token={token}\r\nConnection: close\r\n\r\n"
        ),
    )
}

/// The first `error: ` line `train` prints for these flags, without the prefix.
fn cli_error(args: &[&str]) -> String {
    let out = cli().arg("train").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"))
        .to_string()
}

/// The settings of the run started from the page, and of the `train` run it is compared with.
const SETTINGS: [(&str, &str); 8] = [
    ("cutoff", "64"),
    ("rank", "4"),
    ("alpha", "8"),
    ("batch_size", "2"),
    ("learning_rate", "1e-3"),
    ("save_under_loss", "0"),
    ("epochs", "1"),
    ("dropout", "0.05"),
];

async fn set(c: &Client, key: &str, value: &str) {
    let field = c.find(Locator::Id(&format!("f-{key}"))).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

/// Waits for the server's job to leave `running`; its state.
fn job_end(addr: SocketAddr, token: &str) -> String {
    let t0 = Instant::now();
    loop {
        let (_, body) = get(addr, token, "/api/setup/job");
        if !body.contains(r#""state":"running""#) {
            return body;
        }
        assert!(t0.elapsed() < PATIENCE, "the run did not end: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn setup_page_in_a_browser() {
    let Some(driver) = chromedriver() else { return };
    let dir = tempdir("ui-setup");
    let runs = dir.join("runs");
    let root = dir.join("root");
    std::fs::create_dir_all(&runs).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    let text_file = small_text(&root).canonicalize().unwrap();
    let outside = dir.join("outside.txt");
    std::fs::write(&outside, "not for the form").unwrap();
    let model = model().canonicalize().unwrap();
    let model_dir = model.parent().unwrap().to_path_buf();
    let (mut server, addr, tok) = serve(&runs, &[&root, &model_dir]);

    // --- the roots, at the socket ---
    let (code, files) = get(addr, &tok, "/api/setup/files");
    assert_eq!(code, 200);
    assert!(files.contains(&text_file.display().to_string()), "{files}");
    assert!(!files.contains("outside.txt"), "{files}");
    let sneaky = root.join("..").join("outside.txt");
    for (key, path) in [
        ("text", sneaky.display().to_string()),
        ("text", outside.display().to_string()),
        ("dataset", "/etc/passwd".to_string()),
        ("format", "../outside.txt".to_string()),
        ("model", "/".to_string()),
    ] {
        let body = serde_json::json!({ "values": { key: path } }).to_string();
        for route in ["/api/setup/check", "/api/setup/preview"] {
            let (code, resp) = post(addr, &tok, route, &body);
            assert_eq!(code, 422, "{route} {key}={path}: {resp}");
            assert!(resp.contains(&format!(r#""field":"{key}""#)), "{resp}");
        }
        let named = serde_json::json!({ "name": "evil", "values": { key: path } }).to_string();
        assert_eq!(post(addr, &tok, "/api/setup/start", &named).0, 422);
    }
    assert!(!runs.join("evil").exists(), "a refused Start wrote nothing");
    for bad in ["..", "../x", "a/b", ".hidden"] {
        let body = serde_json::json!({ "name": bad, "values": {} }).to_string();
        assert_eq!(post(addr, &tok, "/api/setup/start", &body).0, 422, "{bad}");
    }
    assert_eq!(
        get(addr, &tok, "/api/setup/defaults?copy=..").0,
        404,
        "Copy settings reads runs only"
    );
    assert_eq!(get(addr, "wrong", "/api/setup/files").0, 403);
    assert_eq!(
        http(
            addr,
            &format!(
                "POST /api/setup/check HTTP/1.1\r\nHost: {addr}\r\nCookie: trainer_ui_token={tok}\r\n\
                 Content-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{{\"values\":{{}}}}"
            )
        )
        .0,
        403,
        "a POST without Origin"
    );
    let huge = format!(r#"{{"values":{{"text":"{}"}}}}"#, "x".repeat(100_000));
    assert_eq!(post(addr, &tok, "/api/setup/check", &huge).0, 413);
    for bad in ["{", "[]", r#"{"values":{"rank":4}}"#, r#"{"name":"x"}"#] {
        let code = post(addr, &tok, "/api/setup/start", bad).0;
        assert!((400..500).contains(&code), "{bad}: {code}");
    }
    assert!(!runs.join("x").exists());

    // What the command line prints for the same bad values.
    let m = model.display().to_string();
    let t = text_file.display().to_string();
    let o = dir.join("never").display().to_string();
    let common = ["--model", &m, "--text", &t, "--output", &o];
    let dropout_error = cli_error(&[&common[..], &["--dropout", "1.5"]].concat());
    let cutoff_error = cli_error(&[&common[..], &["--cutoff", "6x"]].concat());

    let (_driver, driver_port, rt) = start_driver(&driver);
    rt.block_on(async {
        let c = browser(driver_port, &dir.join("profile-1")).await;
        c.goto(&format!("http://{addr}/setup?token={tok}"))
            .await
            .unwrap();
        until(
            &c,
            "return window.trainerSetup && window.trainerSetup.ready",
            "the form",
        )
        .await;
        assert_eq!(
            c.find(Locator::Id("f-rank"))
                .await
                .unwrap()
                .prop("value")
                .await
                .unwrap()
                .as_deref(),
            Some("32"),
            "pre-filled with the defaults"
        );
        set(&c, "model", &m).await;
        set(&c, "text", &t).await;
        for (k, v) in SETTINGS {
            set(&c, k, v).await;
        }
        // A bad value: the command line's message next to its field.
        set(&c, "dropout", "1.5").await;
        set(&c, "cutoff", "6x").await;
        c.find(Locator::Id("preview"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(
            &c,
            "return document.getElementById('err-cutoff').textContent !== ''",
            "the cutoff error",
        )
        .await;
        assert_eq!(text(&c, "err-cutoff").await, cutoff_error);
        set(&c, "cutoff", "64").await;
        c.find(Locator::Id("preview"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(
            &c,
            "return document.getElementById('err-dropout').textContent !== ''",
            "the dropout error",
        )
        .await;
        let shown = text(&c, "err-dropout").await;
        assert!(
            dropout_error.starts_with(&shown),
            "page: {shown}\ncommand line: {dropout_error}"
        );
        assert_eq!(
            text(&c, "err-cutoff").await,
            "",
            "the fixed field's error is gone"
        );

        // Preview: the dry run's text (the first block as trained) and the LR curve.
        set(&c, "dropout", "0.05").await;
        c.find(Locator::Id("preview"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(&c, "return window.trainerSetup.previewed", "the preview").await;
        let preview = text(&c, "preview-text").await;
        assert!(preview.contains("# sample 0: text block 0"), "{preview}");
        assert!(
            preview.contains("# plan") && preview.contains("optimizer steps"),
            "{preview}"
        );
        assert_eq!(text(&c, "err-dropout").await, "");
        c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
        std::fs::write(
            screenshot_dir().join("setup.png"),
            c.screenshot().await.unwrap(),
        )
        .unwrap();

        // Start: the run's page opens and gains points; a second Start is refused while it runs.
        set(&c, "name", "from-page").await;
        c.find(Locator::Id("start"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let t0 = Instant::now();
        loop {
            if js_u64(
                &c,
                "return window.trainerUi ? window.trainerUi.points() : 0",
            )
            .await
                >= 1
            {
                break;
            }
            assert!(t0.elapsed() < PATIENCE, "the run's page shows no step");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (code, resp) = post(
            addr,
            &tok,
            "/api/setup/start",
            &serde_json::json!({
            "name": "second", "values": { "model": m, "text": t } })
            .to_string(),
        );
        assert_eq!(code, 409, "{resp}");
        assert!(resp.contains("one at a time"), "{resp}");
        let url = c.current_url().await.unwrap();
        assert!(url.path().ends_with("/run/from-page/"), "{url}");
        let n = js_u64(&c, "return window.trainerUi.points()").await;
        until(
            &c,
            &format!("return window.trainerUi.points() > {n}"),
            "the chart gaining a point",
        )
        .await;
        until(&c, "return window.trainerUi.ended()", "the run's end").await;
        c.close().await.unwrap();
    });
    let state = job_end(addr, &tok);
    assert!(state.contains(r#""state":"finished""#), "{state}");

    // The same settings through `train`: the same adapter, byte for byte.
    let cli_out = dir.join("cli-run");
    let mut c = cli();
    c.arg("train")
        .args(["--model", &m, "--text", &t, "--progress", "none"]);
    c.arg("--output").arg(&cli_out);
    for (k, v) in SETTINGS {
        c.arg(format!("--{}", k.replace('_', "-"))).arg(v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page_run = runs.join("from-page");
    let a = std::fs::read(page_run.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(cli_out.join("adapter_model.safetensors")).unwrap();
    assert!(a == b, "the page's adapter differs from train's");
    assert!(page_run.join("training_parameters.toml").is_file());

    // Copy settings, then a long run interrupted by Ctrl-C on the server shows Resume, which continues it.
    rt.block_on(async {
        let c = browser(driver_port, &dir.join("profile-2")).await;
        c.goto(&format!("http://{addr}/?token={tok}"))
            .await
            .unwrap();
        c.wait()
            .for_element(Locator::Css("#runs tr[data-name='from-page'] a.copy"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(
            &c,
            "return window.trainerSetup && window.trainerSetup.ready",
            "the copied form",
        )
        .await;
        for (key, value) in [("rank", "4"), ("cutoff", "64"), ("text", t.as_str())] {
            let v = c
                .find(Locator::Id(&format!("f-{key}")))
                .await
                .unwrap()
                .prop("value")
                .await
                .unwrap();
            assert_eq!(v.as_deref(), Some(value), "{key}");
        }
        set(&c, "epochs", "50").await;
        set(&c, "name", "long").await;
        c.find(Locator::Id("start"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(
            &c,
            "return window.trainerUi && window.trainerUi.points() >= 2",
            "the long run's steps",
        )
        .await;
        c.close().await.unwrap();
    });
    // Ctrl-C on the server: the run finishes its step, saves a resumable checkpoint, and the server exits 130.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(t0.elapsed() < PATIENCE, "the server did not end on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130), "{status}");
    let (_server, addr, tok) = serve(&runs, &[&root, &model_dir]);
    let steps_before = std::fs::read_to_string(runs.join("long/training_log.jsonl"))
        .unwrap()
        .lines()
        .count();
    rt.block_on(async {
        let c = browser(driver_port, &dir.join("profile-3")).await;
        c.goto(&format!("http://{addr}/?token={tok}"))
            .await
            .unwrap();
        assert!(
            c.find(Locator::Css(
                "#runs tr[data-name='from-page'] button.resume"
            ))
            .await
            .is_err(),
            "a finished run has no Resume"
        );
        c.wait()
            .for_element(Locator::Css("#runs tr[data-name='long'] button.resume"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(
            &c,
            &format!(
                "return window.trainerUi && window.trainerUi.points() > {}",
                steps_before + 1
            ),
            "the resumed run's new steps",
        )
        .await;
        c.find(Locator::Id("stop"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(
            &c,
            "return window.trainerUi.ended()",
            "the resumed run's end",
        )
        .await;
        c.close().await.unwrap();
    });
    let state = job_end(addr, &tok);
    assert!(state.contains(r#""state":"finished""#), "{state}");
    let log = std::fs::read_to_string(runs.join("long/training_log.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(steps.len() > steps_before, "the resumed run trained on");
}
