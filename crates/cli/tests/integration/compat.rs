//! The original system's clients, unchanged: Python's `websockets` running the seed's
//! own script ("Test 2") and further checks of the same protocol.

use std::path::PathBuf;
use std::process::Stdio;

use agentbus_testkit::{TIMEOUT, TestServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

/// Whether Python with `websockets` is here; in CI its absence is a failure.
fn python_ready() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "python3 with `websockets` is required in CI (scripts/test.sh installs it)"
        );
        eprintln!("skipping: python3 with `websockets` is not installed (run scripts/test.sh)");
    }
    ok
}

#[tokio::test]
async fn the_seed_client_script_runs_unchanged() {
    if !python_ready() {
        return;
    }
    let server = TestServer::builder().ephemeral().start().await;
    let script = std::fs::read_to_string(python_dir().join("seed_test2.py")).unwrap();
    assert!(script.contains("ws://<your-ip>:3030"));
    let script = script.replace("ws://<your-ip>:3030", &server.ws_url());
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The script listens forever; stop it once it has shown everything it should.
    let done = tokio::time::timeout(TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
            let has = |s: &str| seen.iter().any(|l| l.contains(s));
            if (has(r#""type": "ack""#) || has(r#""type":"ack""#))
                && seen.iter().any(|l| l.contains(r#""type":"message""#) && l.contains("Hello from remote!"))
            {
                return true;
            }
        }
        false
    })
    .await;
    let _ = child.kill().await;
    assert_eq!(done, Ok(true), "output: {seen:#?}");
    assert!(seen[0].contains(r#""type":"registered""#), "{seen:#?}");
    assert!(seen[1].contains(r#""type":"subscribed""#), "{seen:#?}");
    assert!(seen[2..].iter().all(|l| l.starts_with("Received: ")), "{seen:#?}");
}

#[tokio::test]
async fn python_websockets_clients_get_history_recovery_direct_messages_and_errors() {
    if !python_ready() {
        return;
    }
    let server = TestServer::builder().ephemeral().start().await;
    let out = tokio::time::timeout(
        TIMEOUT * 3,
        Command::new("python3").arg(python_dir().join("compat_checks.py")).arg(server.ws_url()).output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 5, "{stdout}");
}
