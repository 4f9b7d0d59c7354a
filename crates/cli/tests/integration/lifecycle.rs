//! Start-up and graceful shutdown.

use agentbus_testkit::TestServer;

#[tokio::test]
async fn sigterm_closes_connections_with_1001_and_exits_zero() {
    let mut server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    c.register("leaving").await;
    c.subscribe("t").await;
    let stop = tokio::spawn(async move {
        let code = server.stop().await;
        (code, server)
    });
    assert_eq!(c.closed().await, Some(1001));
    let (code, server) = stop.await.unwrap();
    assert_eq!(code, Some(0));
    assert!(server.log().contains("shut down"));
}

#[tokio::test]
async fn an_unusable_config_file_stops_start_up_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[limits]\nno_such_setting = 1\n").unwrap();
    let out = std::process::Command::new(agentbus_testkit::agentbus_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--ephemeral", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid configuration") && err.contains("no_such_setting"), "{err}");
}

#[tokio::test]
async fn logs_go_to_a_file_as_json_lines_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/agentbus.log");
    let server = TestServer::builder()
        .ephemeral()
        .config("[log]\nformat = \"json\"\n")
        .arg("--log-file")
        .arg(log.to_str().unwrap())
        .start()
        .await;
    let mut c = server.connect().await;
    c.register("logged-agent").await;
    c.subscribe("logged-topic").await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "Agent 'logged-agent' connected"), "{text}");
    assert!(lines.iter().any(|l| l["fields"]["message"] == "Agent 'logged-agent' subscribed to topic 'logged-topic'"));
}

#[tokio::test]
async fn environment_variables_override_the_config_file() {
    let server = TestServer::builder().config("ephemeral = false\n").env("AGENTBUS_EPHEMERAL", "true").start().await;
    assert!(server.log().contains("memory (ephemeral)"), "{}", server.log());
    assert!(!server.data_dir().join("agentbus.db").exists());
}
