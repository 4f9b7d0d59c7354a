//! Metrics in the Prometheus/OpenMetrics text format, health and readiness.

use std::collections::HashMap;

use agentbus_testkit::TestServer;
use serde_json::json;

/// Parses the exposition text into `name{labels}` → value, checking its shape.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with('#') {
            let mut parts = line.splitn(4, ' ');
            let (hash, kind) = (parts.next(), parts.next());
            assert_eq!(hash, Some("#"), "{line}");
            assert!(matches!(kind, Some("HELP" | "TYPE" | "UNIT" | "EOF")), "{line}");
            if kind == Some("EOF") {
                assert!(lines.peek().is_none(), "# EOF ends the exposition");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(series.starts_with("agentbus_"), "{series}");
        out.insert(series.to_owned(), value.parse::<f64>().unwrap_or_else(|_| panic!("bad value: {line}")));
    }
    assert!(text.trim_end().ends_with("# EOF"));
    out
}

async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let res = reqwest::get(format!("{}/metrics", server.http_url())).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    parse(&res.text().await.unwrap())
}

#[tokio::test]
async fn metrics_count_what_flows_through_the_bus() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.register("metered").await;
    c.subscribe("m").await;
    for i in 0..5 {
        c.publish("m", json!(i)).await;
    }
    c.send_text("not json").await;
    c.recv_type("error").await;
    let before = scrape(&server).await;
    let get = |m: &HashMap<String, f64>, k: &str| *m.get(k).unwrap_or_else(|| panic!("missing {k}"));
    assert_eq!(get(&before, "agentbus_messages_published_total"), 5.0);
    assert_eq!(get(&before, "agentbus_messages_delivered_total"), 5.0);
    assert_eq!(get(&before, "agentbus_acks_total"), 5.0);
    assert_eq!(get(&before, "agentbus_agents_online"), 1.0);
    assert!(get(&before, "agentbus_connections") >= 1.0);
    assert!(get(&before, "agentbus_topics") >= 2.0, "the topic and the inbox");
    assert!(get(&before, "agentbus_subscriptions") >= 2.0);
    assert_eq!(get(&before, "agentbus_ack_latency_seconds_count"), 5.0);
    assert_eq!(get(&before, "agentbus_delivery_latency_seconds_count"), 5.0);
    assert!(get(&before, "agentbus_store_commit_batch_size_count") >= 1.0);
    assert!(get(&before, "agentbus_received_bytes_total") > 0.0);
    assert!(get(&before, "agentbus_sent_bytes_total") > 0.0);
    assert_eq!(get(&before, r#"agentbus_frames_rejected_total{code="invalid_json"}"#), 1.0);

    let mut r = server.connect().await;
    r.send(json!({"type":"subscribe","topic":"m","since":2})).await;
    r.recv_type("subscribed").await;
    for _ in 0..5 {
        c.publish("m", json!("more")).await;
    }
    let after = scrape(&server).await;
    assert_eq!(get(&after, "agentbus_messages_published_total"), 10.0);
    assert_eq!(get(&after, "agentbus_messages_delivered_total"), 5.0 + 10.0, "two subscribers now");
    assert_eq!(get(&after, r#"agentbus_recoveries_total{outcome="full"}"#), 1.0);
    assert!(get(&after, "agentbus_sent_bytes_total") > get(&before, "agentbus_sent_bytes_total"));
}
