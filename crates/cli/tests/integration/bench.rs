//! `agentbus bench` against the real server: each scenario runs briefly, ends by itself
//! and accounts for every message. Its figures are measured, never asserted here
//! (docs/BENCHMARKS.md).

use std::time::Duration;

use agentbus_testkit::{TestServer, agentbus_bin};
use serde_json::Value;
use tokio::process::Command;

/// Runs `agentbus bench ARGS --duration 1 --json` against `server`; returns `results`.
async fn bench(server: &TestServer, args: &[&str]) -> Value {
    let url = server.ws_url();
    let mut cmd = Command::new(agentbus_bin());
    cmd.arg("bench").args(args).args(["--duration", "1", "--json", "--url", &url]);
    if let Some(pid) = server.pid() {
        cmd.args(["--server-pid", &pid.to_string()]);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.expect("bench ended").expect("ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {args:?} failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["scenario"], args[0]);
    report["results"].clone()
}

#[tokio::test]
async fn every_scenario_runs_to_its_end_and_loses_nothing() {
    let server = TestServer::start().await;

    for args in [
        &["fanout", "--subscribers", "20"][..],
        &["pairs", "--pairs", "3"],
        &["rate", "--rate", "200", "--subscribers", "3"],
    ] {
        let r = bench(&server, args).await;
        assert!(r["acked"].as_u64().unwrap() > 0, "{args:?}: nothing acked: {r}");
        assert_eq!(r["deliveries"], r["expected_deliveries"], "{args:?}: {r}");
        assert_eq!((r["loss"].as_u64(), r["offset_gaps"].as_u64()), (Some(0), Some(0)), "{args:?}: {r}");
        assert!(r["server_cpu_secs"].as_f64().is_some(), "{args:?}: no server CPU with --server-pid: {r}");
    }

    let r = bench(&server, &["durable", "--replay", "1000"]).await;
    assert!(r["acked"].as_u64().unwrap() >= 1000, "{r}");
    assert_eq!(
        (r["replayed"].as_u64(), r["replay_missing"].as_u64(), r["replay_gaps"].as_u64()),
        (Some(1000), Some(0), Some(0)),
        "{r}"
    );

    let r = bench(&server, &["request", "--requesters", "3"]).await;
    assert!(r["round_trips_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["unanswered"].as_u64(), Some(0), "{r}");

    let r = bench(&server, &["idle", "--connections", "50"]).await;
    assert_eq!(r["dropped_while_idle"].as_u64(), Some(0), "{r}");
    assert!(r["server_rss_per_connection_bytes"].as_f64().is_some(), "{r}");
}

/// `loopback` needs no server: its sender thread writes every message to every
/// subscriber, and each one is read and timed.
#[tokio::test]
async fn loopback_measures_the_machine_without_a_server() {
    let mut cmd = Command::new(agentbus_bin());
    cmd.args(["bench", "loopback", "--subscribers", "5", "--rate", "200", "--sender-cpu", "0"]);
    cmd.args(["--duration", "1", "--json"]);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.expect("bench ended").expect("ran");
    assert!(out.status.success(), "bench loopback failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["scenario"], "loopback");
    let r = &report["results"];
    let sent = r["sent"].as_u64().unwrap();
    assert!(sent >= 100, "a second at 200/s sends about 200 messages: {r}");
    assert_eq!((r["deliveries"].as_u64(), r["loss"].as_i64()), (Some(5 * sent), Some(0)), "{r}");
    assert_eq!(r["latency_samples"], r["deliveries"], "{r}");
    assert!(r["server_cpu_per_delivery_us"].as_f64().is_some_and(|us| us > 0.0), "the sender's CPU: {r}");
}
