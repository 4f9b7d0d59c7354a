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
async fn sigterm_right_after_the_ready_line_is_a_graceful_stop() {
    // The handler is in place before the server says it listens: a supervisor that
    // stops it at once gets a clean exit, not a kill by the signal's default action.
    let mut server = TestServer::builder().start().await;
    assert_eq!(server.stop().await, Some(0));
    assert!(server.log().contains("shut down"), "{}", server.log());
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

async fn agentbus(args: &[&str], data: &std::path::Path) -> (i32, String, String) {
    let out = tokio::process::Command::new(agentbus_testkit::agentbus_bin())
        .args(args)
        .arg("--data")
        .arg(data)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn start_status_stop_status_runs_the_server_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, out, err) = agentbus(&["start", "--listen", "127.0.0.1:0"], &data).await;
    assert_eq!(code, 0, "{out}{err}");
    let pid: u32 = out.split("PID: ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
    let url = out.lines().find_map(|l| l.trim().strip_prefix("URL: ")).unwrap().to_owned();
    assert!(url.starts_with("ws://127.0.0.1:"), "{out}");
    let log = data.join("agentbus.log");
    assert!(out.contains(&format!("Log: {}", log.display())), "{out}");

    let mut c = agentbus_testkit::WsClient::connect(&url).await;
    c.register("background-user").await;
    let (code, out, _) = agentbus(&["status"], &data).await;
    assert_eq!(code, 0);
    assert!(out.contains("running") && out.contains(&format!("PID: {pid}")) && out.contains(&url), "{out}");
    assert!(out.contains("Connections: 1") && out.contains("Uptime: "), "{out}");

    let (code, _, err) = agentbus(&["start", "--listen", "127.0.0.1:0"], &data).await;
    assert_ne!(code, 0);
    assert!(err.contains("already running"), "{err}");
    let (code, _, err) = agentbus(&["serve", "--listen", "127.0.0.1:0"], &data).await;
    assert_ne!(code, 0);
    assert!(err.contains("already using the data folder"), "{err}");

    let (code, out, err) = agentbus(&["stop"], &data).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("stopped"), "{out}");
    assert_eq!(c.closed().await, Some(1001));
    assert!(!data.join("agentbus.pid").exists());
    let (code, out, _) = agentbus(&["status"], &data).await;
    assert_eq!((code, out.trim()), (3, "agentbus is stopped"));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("Agent 'background-user' connected") && logged.contains("shut down"), "{logged}");
}
