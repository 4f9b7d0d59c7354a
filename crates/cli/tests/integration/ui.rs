//! The admin page in a real headless Chromium, driven over WebDriver (chromedriver).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use agentbus_testkit::{TIMEOUT, TestServer};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// Chromium and chromedriver from Debian's packages; in CI their absence is a failure.
fn browser_ready() -> bool {
    let ok = ["/usr/bin/chromium", "/usr/bin/chromedriver"].iter().all(|p| std::path::Path::new(p).exists());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "chromium and chromium-driver are required in CI (scripts/test.sh installs them)"
        );
        eprintln!("skipping: chromium or chromedriver missing (run scripts/test.sh)");
    }
    ok
}

struct Driver {
    child: tokio::process::Child,
    client: Client,
    _profile: tempfile::TempDir,
}

async fn start_browser() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = tokio::process::Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1280,1000", format!("--user-data-dir={}", profile.path().display())]
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
            Ok(c) => break c,
            Err(e) if start.elapsed() < TIMEOUT => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("chromedriver did not start: {e}"),
        }
    };
    Driver { child, client, _profile: profile }
}

/// Waits until the text of the element `css` contains `needle`.
async fn wait_for_text(c: &Client, css: &str, needle: &str) -> String {
    let start = Instant::now();
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await
            && let Ok(text) = el.text().await
            && text.contains(needle)
        {
            return text;
        }
        assert!(start.elapsed() < TIMEOUT, "{css} never showed {needle:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_admin_page_shows_agents_topics_and_a_live_tail_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let server = TestServer::start().await;
    let mut agent = server.connect().await;
    agent.send(json!({"type":"register","agent_id":"ui-test-agent","capabilities":["testing","ui"]})).await;
    agent.recv_type("registered").await;
    agent.subscribe("ui-topic").await;
    agent.publish("ui-topic", json!("before the page opened")).await;

    let mut driver = start_browser().await;
    let c = driver.client.clone();
    c.goto(&format!("{}/ui?topic=ui-topic", server.http_url())).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "agentbus");
    let agents = wait_for_text(&c, "#agents", "ui-test-agent").await;
    assert!(agents.contains("testing") && agents.contains("ui-topic"), "{agents}");
    wait_for_text(&c, "#topics", "ui-topic").await;
    wait_for_text(&c, "#tail", "before the page opened").await;
    wait_for_text(&c, "#status", "live").await;

    // A message published now appears in the live tail.
    agent.publish("ui-topic", json!({"note": "published during the test"})).await;
    wait_for_text(&c, "#tail", "published during the test").await;

    // The publish box sends through the HTTP API; the agent receives it.
    c.find(Locator::Css("#pubtext")).await.unwrap().send_keys("typed in the browser").await.unwrap();
    c.find(Locator::Css("#pubbtn")).await.unwrap().click().await.unwrap();
    let m = agent.recv_until(|v| v["type"] == "message" && v["content"] == "typed in the browser").await;
    assert_eq!(m["from_agent"], "admin-ui");
    wait_for_text(&c, "#pubresult", "stored at offset").await;

    let png = c.screenshot().await.unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("admin-ui.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    assert!(png.starts_with(b"\x89PNG"));

    c.close().await.unwrap();
    let _ = driver.child.kill().await;
}

#[tokio::test]
async fn with_authentication_on_the_admin_page_asks_for_a_key_and_then_shows_the_bus() {
    if !browser_ready() {
        return;
    }
    let config = "[auth]\nrequired = true\n[[auth.agents]]\nid = \"watcher\"\nkey = \"watch-key\"\npublish = [\"*\"]\nsubscribe = [\"*\"]\n";
    let server = TestServer::builder().ephemeral().config(config).start().await;
    let mut agent = server.connect().await;
    agent.send(json!({"type":"register","agent_id":"watcher","token":"watch-key"})).await;
    agent.recv_type("registered").await;
    agent.subscribe("secured-topic").await;

    let mut driver = start_browser().await;
    let c = driver.client.clone();
    c.goto(&format!("{}/ui?topic=secured-topic", server.http_url())).await.unwrap();
    let start = Instant::now();
    loop {
        let shown = c.find(Locator::Css("#keybox")).await.unwrap().attr("class").await.unwrap();
        if shown.as_deref().is_some_and(|s| s.contains("show")) {
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "the page never asked for a key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!c.find(Locator::Css("#agents")).await.unwrap().text().await.unwrap().contains("watcher"));
    c.find(Locator::Css("#keyinput")).await.unwrap().send_keys("watch-key").await.unwrap();
    c.find(Locator::Css("#keyform button")).await.unwrap().click().await.unwrap();
    wait_for_text(&c, "#agents", "watcher").await;
    wait_for_text(&c, "#topics", "secured-topic").await;
    agent.publish("secured-topic", json!("visible with the key")).await;
    wait_for_text(&c, "#tail", "visible with the key").await;
    c.close().await.unwrap();
    let _ = driver.child.kill().await;
}
