//! Example binaries in tests: built on demand, run as child processes that are killed (by PID)
//! and reaped when the test ends, passed or not.

use std::io::BufRead;
use std::time::{Duration, Instant};

/// Kills the child (by its PID) and reaps it, whatever happens in the test.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `<target>/<profile>/examples/<name>`, next to this test's `<target>/<profile>/deps/<test>`,
/// freshly built with `features` of ws-kit-examples: `cargo test -p ws-kit-tests` does not build
/// another package's examples.
pub(crate) fn example_binary(name: &str, features: &[&str]) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("<target>/<profile>/deps/<test>");
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .expect("profile dir name");
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .args([
            "build",
            "--quiet",
            "-p",
            "ws-kit-examples",
            "--example",
            name,
        ])
        .args(features.iter().flat_map(|f| ["--features", f]))
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    match profile {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    let build = KillOnDrop(cargo.spawn().expect("run cargo"));
    let started = Instant::now();
    let mut build = build;
    let status = loop {
        if let Some(status) = build.0.try_wait().expect("cargo build") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "building example {name} took over 300 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = build.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        panic!("building example {name} failed: {stderr}");
    }
    let binary = profile_dir.join("examples").join(name);
    assert!(
        binary.exists(),
        "{} missing after the build",
        binary.display()
    );
    binary
}

/// An example running as a child process on a free port (`PORT=0`).
pub(crate) struct RunningExample {
    pub(crate) child: KillOnDrop,
    /// The port from its one `listening on` line.
    pub(crate) port: u16,
    /// The lines it printed after that one.
    pub(crate) lines: std::sync::mpsc::Receiver<String>,
}

/// Builds the example `name` (with `features`), starts it with `PORT=0` and the extra `env`, and
/// waits (up to `wait`) for its `listening on <scheme>://127.0.0.1:<port>` line.
pub(crate) fn run_example(
    name: &str,
    features: &[&str],
    env: &[(&str, &str)],
    wait: Duration,
) -> RunningExample {
    let binary = example_binary(name, features);
    let child = std::process::Command::new(&binary)
        .env("PORT", "0")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start the {name} example: {e}"));
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = lines
        .recv_timeout(wait)
        .unwrap_or_else(|_| panic!("the {name} example printed no line"));
    let port = line
        .strip_prefix("listening on ")
        .and_then(|url| url.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    RunningExample { child, port, lines }
}
