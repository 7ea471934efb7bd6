//! The chat example's page (examples/chat.html), served by the real chat binary on its WebSocket
//! port: over plain HTTP, and in a real headless Chromium driven through chromedriver (WebDriver),
//! two people chatting.
//!
//! The browser test needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).
//! Without them it prints `browser_chat: skipped: <why>` and returns. Screenshots of both pages
//! land in `<target>/browser/chat-<n>.png`.

mod support;

use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::binary::run_example;
use support::{Client, WAIT, bounded, bounded_multi_thread_within, http_exchange};

const PAGE: &str = include_str!("../../examples/chat.html");

fn welcome() -> Value {
    json!({"type": "WELCOME", "meta": {}, "payload": {"message": "Connected to chat server"}})
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP, no browser

/// `GET /` (and `/index.html`) answers the page as `text/html`; other paths get the usual 400; an
/// upgrade on `/` (or any path) is still a WebSocket that gets `WELCOME`.
#[test]
fn chat_page_over_http() {
    let example = run_example("chat", &[], &[], WAIT * 2);
    let addr = SocketAddr::from(([127, 0, 0, 1], example.port));
    bounded(async move {
        for path in ["/", "/index.html"] {
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html\r\n\r\n");
            let (status, response) = http_exchange(addr, &request).await;
            assert_eq!(status, 200, "GET {path}: {response}");
            let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
            let head = head.to_ascii_lowercase();
            assert!(
                head.contains("\r\ncontent-type: text/html; charset=utf-8\r\n"),
                "GET {path}: {head}"
            );
            assert!(
                head.contains(&format!("\r\ncontent-length: {}\r\n", PAGE.len())),
                "GET {path}: {head}"
            );
            assert_eq!(body, PAGE, "GET {path}: the body is chat.html");
        }

        let (status, response) =
            http_exchange(addr, &format!("GET /nope HTTP/1.1\r\nHost: {addr}\r\n\r\n")).await;
        assert_eq!(status, 400, "GET /nope: {response}");
        assert!(!response.contains("<html"), "GET /nope: {response}");

        for path in ["/", "/ws"] {
            let mut client =
                tokio::time::timeout(WAIT, Client::connect(&format!("ws://{addr}{path}")))
                    .await
                    .expect("connect timed out");
            assert_eq!(client.recv().await, welcome(), "upgrade on {path}");
        }
    });
    drop(example);
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium

/// How long one WebDriver command, or one wait for the page to show something, may take.
const STEP: Duration = Duration::from_secs(20);

/// Two headless Chromium sessions load the page, pick names, join one room (a fresh one from the
/// "New room" button), see each other join, chat (markup in a message stays text), and one leaves.
#[test]
fn browser_chat() {
    let (chromium, chromedriver) = match browser() {
        Ok(found) => found,
        Err(why) => {
            use std::io::Write;
            // Not `eprintln!`, which the test harness captures: the skip shows in every run.
            let _ = writeln!(std::io::stderr(), "browser_chat: skipped: {why}");
            return;
        }
    };
    let out = target_dir().join("browser");
    std::fs::create_dir_all(&out).expect("create <target>/browser");
    let shots: Vec<PathBuf> = (1..=2).map(|n| out.join(format!("chat-{n}.png"))).collect();
    for shot in &shots {
        let _ = std::fs::remove_file(shot);
    }

    let example = run_example("chat", &[], &[], WAIT * 2);
    let page = format!("http://127.0.0.1:{}/", example.port);
    let driver = Chromedriver::start(&chromedriver, &out.join("chromedriver.log"));
    let webdriver = format!("http://127.0.0.1:{}", driver.port);

    let written = shots.clone();
    bounded_multi_thread_within(Duration::from_secs(180), async move {
        let mut sessions = Vec::new();
        let outcome = chat(&webdriver, &chromium, &page, &written, &mut sessions).await;
        // Closed whatever happened: chromedriver then quits its browsers.
        for session in sessions {
            let _ = tokio::time::timeout(STEP, session.browser.close()).await;
        }
        if let Err(failure) = outcome {
            panic!("{failure}");
        }
    });

    for shot in &shots {
        let png = std::fs::read(shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
            "{} is not a PNG screenshot ({} bytes)",
            shot.display(),
            png.len()
        );
    }
    drop(driver);
    drop(example);
}

async fn chat(
    webdriver: &str,
    chromium: &Path,
    page: &str,
    shots: &[PathBuf],
    sessions: &mut Vec<Page>,
) -> Result<(), String> {
    for who in ["ada", "bob"] {
        let session = Page::open(webdriver, chromium, who).await?;
        sessions.push(session);
    }
    let [ada, bob] = &sessions[..] else {
        unreachable!("two sessions")
    };
    for person in [ada, bob] {
        step(
            &format!("{}: load {page}", person.who),
            person.browser.goto(page),
        )
        .await?;
        person.wait_for_status("connected").await?;
        person.wait_for_line("Connected to chat server").await?;
        person.type_into("#name", person.who).await?;
    }

    // A fresh room from ada's "New room" button; bob types it in.
    ada.click("#newroom").await?;
    let room = ada.value("#room").await?;
    let parsed = uuid::Uuid::parse_str(&room).map_err(|e| format!("room {room:?}: {e}"))?;
    if parsed.get_version_num() != 4 {
        return Err(format!("room {room:?} is not a random (v4) UUID"));
    }
    bob.type_into("#room", &room).await?;

    ada.click("#join").await?;
    ada.wait_for_line("ada joined (1 in room)").await?;
    bob.click("#join").await?;
    bob.wait_for_line("bob joined (2 in room)").await?;
    ada.wait_for_line("bob joined (2 in room)").await?;

    ada.type_into("#text", "hello from ada").await?;
    ada.click("#send").await?;
    bob.wait_for_line("ada: hello from ada").await?;
    ada.wait_for_line("ada: hello from ada").await?;

    // Markup in a message is shown as text, never run.
    let markup = r#"hi <img src=x onerror="window.pwned=1"> from bob"#;
    bob.type_into("#text", markup).await?;
    bob.click("#send").await?;
    ada.wait_for_line(&format!("bob: {markup}")).await?;
    bob.wait_for_line(&format!("bob: {markup}")).await?;
    let injected = step(
        "ada: look for injected markup",
        ada.browser.execute(
            "return [document.querySelectorAll('#log img').length, window.pwned === undefined]",
            vec![],
        ),
    )
    .await?;
    if injected != json!([0, true]) {
        return Err(format!("a message was parsed as HTML: {injected}"));
    }

    // Who's here: presence, from the page.
    ada.click("#who").await?;
    let here = ada
        .wait_for_line_where("a HERE line", |l| l.starts_with("here: "))
        .await?;
    if !(here.contains("ada")
        && here.contains("bob")
        && here.ends_with("(2 connections, 2 people)"))
    {
        return Err(format!("ada: who's here: {here:?}"));
    }

    // Bob's socket drops; ada says two things while he is away; his page reconnects, rejoins
    // from its last position and shows exactly what he missed (his own leave and her two lines).
    step(
        "bob: drop the socket, reconnect in 3 s",
        bob.browser
            .execute("backoff = 3000; ws.close(); return true;", vec![]),
    )
    .await?;
    ada.wait_for_line("bob left (1 in room)").await?;
    for text in ["while you were away", "and again"] {
        ada.type_into("#text", text).await?;
        ada.click("#send").await?;
        ada.wait_for_line(&format!("ada: {text}")).await?;
    }
    bob.wait_for_line("back in the room: caught up on 3 missed")
        .await?;
    bob.wait_for_line("ada: while you were away").await?;
    bob.wait_for_line("ada: and again").await?;
    ada.wait_for_line("bob joined (2 in room)").await?;

    bob.click("#leave").await?;
    bob.wait_for_line("you left the room").await?;
    // His second leave (the first was the dropped socket).
    let deadline = Instant::now() + STEP;
    while ada
        .log_lines()
        .await?
        .iter()
        .filter(|l| *l == "bob left (1 in room)")
        .count()
        < 2
    {
        if Instant::now() > deadline {
            return Err("ada: bob's leave after his rejoin never showed".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for (person, shot) in [ada, bob].into_iter().zip(shots) {
        let png = step(
            &format!("{}: screenshot", person.who),
            person.browser.screenshot(),
        )
        .await?;
        std::fs::write(shot, png).map_err(|e| format!("{}: {e}", shot.display()))?;
    }
    Ok(())
}

/// One WebDriver session: a headless Chromium window showing the page, used by one person.
struct Page {
    who: &'static str,
    browser: fantoccini::Client,
}

impl Page {
    async fn open(webdriver: &str, chromium: &Path, who: &'static str) -> Result<Page, String> {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=900,720",
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let browser = step(
            &format!("{who}: new WebDriver session"),
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(webdriver),
        )
        .await?;
        Ok(Page { who, browser })
    }

    async fn find(&self, css: &str) -> Result<fantoccini::elements::Element, String> {
        step(
            &format!("{}: find {css}", self.who),
            self.browser.find(Locator::Css(css)),
        )
        .await
    }

    /// Replaces the text of the input `css` with `text`, typed as keys.
    async fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        let input = self.find(css).await?;
        step(&format!("{}: clear {css}", self.who), input.clear()).await?;
        step(
            &format!("{}: type into {css}", self.who),
            input.send_keys(text),
        )
        .await
    }

    async fn click(&self, css: &str) -> Result<(), String> {
        let button = self.find(css).await?;
        step(&format!("{}: click {css}", self.who), button.click()).await
    }

    async fn value(&self, css: &str) -> Result<String, String> {
        let input = self.find(css).await?;
        let value = step(
            &format!("{}: value of {css}", self.who),
            input.prop("value"),
        )
        .await?;
        Ok(value.unwrap_or_default())
    }

    /// The log's lines as the page shows them, without their time.
    async fn log_lines(&self) -> Result<Vec<String>, String> {
        const SCRIPT: &str = "return Array.from(document.querySelectorAll('#log > div'), \
             (line) => line.textContent.slice((line.querySelector('.time')?.textContent ?? '').length))";
        let lines = step(
            &format!("{}: read the log", self.who),
            self.browser.execute(SCRIPT, vec![]),
        )
        .await?;
        serde_json::from_value(lines).map_err(|e| format!("{}: the log: {e}", self.who))
    }

    /// Polls the DOM until the log has the line `line` (up to [`STEP`]).
    async fn wait_for_line(&self, line: &str) -> Result<(), String> {
        let deadline = Instant::now() + STEP;
        loop {
            let lines = self.log_lines().await?;
            if lines.iter().any(|l| l == line) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: no log line {line:?} within {STEP:?}; the log: {lines:#?}",
                    self.who
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls the DOM until the log has a line `matches` accepts (up to [`STEP`]); returns it.
    async fn wait_for_line_where(
        &self,
        what: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + STEP;
        loop {
            let lines = self.log_lines().await?;
            if let Some(line) = lines.iter().rev().find(|l| matches(l)) {
                return Ok(line.clone());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: no log line for {what} within {STEP:?}; the log: {lines:#?}",
                    self.who
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `#status` until it reads `status` (up to [`STEP`]).
    async fn wait_for_status(&self, status: &str) -> Result<(), String> {
        let deadline = Instant::now() + STEP;
        loop {
            let shown = step(
                &format!("{}: read #status", self.who),
                self.browser.execute(
                    "return document.getElementById('status').textContent",
                    vec![],
                ),
            )
            .await?;
            if shown == status {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: #status shows {shown}, not {status:?}, after {STEP:?}",
                    self.who
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `fut` within [`STEP`], its error or the timeout as a message naming `what`.
async fn step<T, E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {STEP:?}")),
    }
}

/// Chromium and chromedriver, or why the browser test cannot run.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    const INSTALL: &str = "(install Debian chromium and chromium-driver)";
    let chromedriver = on_path("chromedriver")
        .ok_or_else(|| format!("chromedriver not found on PATH {INSTALL}"))?;
    let debian = Path::new("/usr/bin/chromium");
    let chromium = if debian.is_file() {
        debian.to_path_buf()
    } else {
        ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find_map(on_path)
            .ok_or_else(|| format!("chromium not found {INSTALL}"))?
    };
    Ok((chromium, chromedriver))
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| file.is_file())
}

/// `CARGO_TARGET_DIR`, or `<target>` from this test's `<target>/<profile>/deps/<test>`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("<target>/<profile>/deps/<test>")
        .to_path_buf()
}

/// chromedriver on a free port, in a process group of its own with the browsers it starts: when
/// dropped, the whole group is stopped (by its id), so no Chromium outlives the test.
struct Chromedriver {
    child: std::process::Child,
    port: u16,
}

impl Chromedriver {
    /// Starts chromedriver and waits (bounded) until its `/status` says it is ready.
    fn start(binary: &Path, log: &Path) -> Chromedriver {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut driver = Chromedriver { child, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = driver.child.try_wait().expect("chromedriver status") {
                panic!(
                    "chromedriver exited at start ({status}); see {}",
                    log.display()
                );
            }
            if status_ready(port) {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within 15 s; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` to the process group; false once no process of it is left.
    fn signal(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if self.signal("-TERM") {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let _ = self.child.try_wait(); // reap chromedriver: a zombie still counts
                if !self.signal("-0") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            self.signal("-KILL");
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `GET /status` says `"ready": true`.
fn status_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str::<Value>(body).ok())
        .is_some_and(|status| status["value"]["ready"] == true)
}
