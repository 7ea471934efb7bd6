//! Keeps the benchmark tool from rotting: `compare --quick` must run the three servers (the
//! baseline, ws-kit, WS-Kit on Bun) through every mode and print the table, within a bounded time.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn compare_quick_runs_every_mode() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ws-kit-bench"))
        .args(["compare", "--quick"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ws-kit-bench");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("compare --quick took longer than 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("read stdout");
    assert!(status.success(), "compare --quick failed:\n{out}");
    for mode in [
        "rpc 4×4 RPC/s",
        "rpc 1×1 p99",
        "fanout 1→20 200 msg/s",
        "full speed",
        "idle 200",
    ] {
        assert!(out.contains(mode), "missing {mode} in:\n{out}");
    }
    // WS-Kit on Bun needs npm (the bench installs Bun with it); without npm its column says so.
    assert!(
        out.contains("Bun (WS-Kit 0.10)"),
        "no Bun column in:\n{out}"
    );
    if out.contains("not run: npm not found") {
        println!(
            "compare_quick_runs_every_mode: skipped: the WS-Kit on Bun column (npm not found)"
        );
        return;
    }
    assert!(
        !out.contains("not run: "),
        "a server did not run in compare --quick:\n{out}"
    );
}
