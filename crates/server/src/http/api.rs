//! The REST API: publish, history with long-poll, topics, agents, search, readiness.

use std::collections::HashMap;
use std::sync::Arc;

use agentbus_protocol::{ErrorCode, SendFrame, ServerFrame, TopicName};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::{ApiError, Caller, MAX_WAIT};
use crate::broker::{Command, Reply};
use crate::shared::{Shared, search_hits};
use crate::store::SearchQuery;

type Params = Query<HashMap<String, String>>;

pub(super) fn topic_param(raw: &str) -> Result<TopicName, ApiError> {
    TopicName::new(raw).map_err(|e| ApiError::new(ErrorCode::InvalidTopic, format!("invalid topic {raw:?}: {e}")))
}

pub(super) fn u64_param(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidField,
                    format!("query parameter `{name}` must be a non-negative integer"),
                )
            })
        })
        .transpose()
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::internal(what, e)),
        Err(e) => Err(ApiError::internal(what, e)),
    }
}

async fn ask<T>(shared: &Shared, cmd: Command, rx: oneshot::Receiver<T>) -> Result<T, ApiError> {
    let gone = || ApiError::new(ErrorCode::Unavailable, "the server is shutting down");
    shared.broker.send(cmd).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

/// `GET /readyz`: 200 when the broker answers and the store can be read and written.
pub(super) async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let (tx, rx) = oneshot::channel();
    let stats = ask(&shared, Command::Stats { reply: tx }, rx).await.ok();
    let broker_ok = stats.is_some();
    let writing = stats.is_some_and(|s| s.store_writer_running);
    let store = shared.store.clone();
    let store_ok = writing && tokio::task::spawn_blocking(move || store.ready()).await.unwrap_or(false);
    if broker_ok && store_ok {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: broker {broker_ok}, store {store_ok}\n")).into_response()
    }
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
pub(super) async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let (tx, rx) = oneshot::channel();
    let stats = ask(&shared, Command::Stats { reply: tx }, rx).await?;
    let m = &shared.metrics;
    m.connections.set(stats.connections as i64);
    m.agents_online.set(stats.agents as i64);
    m.topics.set(stats.topics as i64);
    m.subscriptions.set(stats.subscriptions as i64);
    let headers = [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")];
    Ok((headers, m.render()).into_response())
}

/// `POST /v1/topics/{topic}/messages`: publish; answers with the ack once stored.
pub(super) async fn publish(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(topic): Path<String>,
    body: String,
) -> Result<Json<ServerFrame>, ApiError> {
    let topic = topic_param(&topic)?;
    if body.len() > shared.config.limits.max_message_bytes {
        return Err(ApiError::new(ErrorCode::TooLarge, "body over the message size limit"));
    }
    let send = SendFrame::parse_body(&body, topic, &shared.parse_limits)?;
    shared.auth.check_publish(caller.grant(), &send.destination(), send.from_agent.as_ref())?;
    let (tx, rx) = oneshot::channel();
    let as_agent = caller.grant().map(|g| &g.agent);
    let publish = shared.prepare_publish(&send, as_agent, Some("anonymous"), Reply::Oneshot(tx))?;
    let ack = ask(&shared, Command::Publish(Box::new(publish)), rx).await??;
    Ok(Json(ServerFrame::Ack {
        id: ack.id,
        topic: ack.topic.to_string(),
        offset: ack.offset,
        delivered: ack.delivered,
        duplicate: ack.duplicate,
        reference: None,
    }))
}

/// `GET /v1/topics/{topic}/messages?after=&before=&limit=&wait=`: stored messages,
/// oldest first. With `after`, the oldest ones after it (and `wait` seconds of
/// long-poll when there are none yet); otherwise the newest ones (before `before`).
pub(super) async fn history(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(topic): Path<String>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let topic = topic_param(&topic)?;
    shared.auth.check_read(caller.grant(), &topic)?;
    let after = u64_param(&params, "after")?;
    let before = u64_param(&params, "before")?;
    let limit = u64_param(&params, "limit")?.unwrap_or(100).min(shared.config.limits.max_page).max(1) as usize;
    let wait = u64_param(&params, "wait")?.map(std::time::Duration::from_secs).unwrap_or_default().min(MAX_WAIT);
    let read = |shared: &Arc<Shared>| {
        let (store, topic) = (shared.store.clone(), topic.clone());
        blocking("history read", move || {
            let messages = match after {
                Some(after) => store.read_range(&topic, after, u64::MAX, limit)?,
                None => store.read_before(&topic, before.unwrap_or(u64::MAX), limit)?,
            };
            let first = store.first_offset(&topic)?;
            let last = store.last_offset(&topic)?;
            Ok((messages, first, last))
        })
    };
    let (mut messages, mut first, mut last_stored) = read(&shared).await?;
    if messages.is_empty()
        && !wait.is_zero()
        && let Some(after) = after
    {
        let (tx, rx) = oneshot::channel();
        shared.broker.send(Command::WaitFor { topic: topic.clone(), after, reply: tx }).await.ok();
        let mut shutdown = shared.shutdown.clone();
        tokio::select! {
            _ = tokio::time::timeout(wait, rx) => {}
            _ = shutdown.changed() => {}
        }
        (messages, first, last_stored) = read(&shared).await?;
    }
    let raw: Vec<&RawValue> = messages.iter().filter_map(|m| serde_json::from_str(m.frame.as_str()).ok()).collect();
    let last = messages.last().map(|m| m.offset);
    let mut body = serde_json::json!({
        "topic": topic.as_str(),
        "messages": raw,
        "next_after": last.or(after).unwrap_or(0),
    });
    if let Some(after) = after {
        // Complete unless retention already dropped messages right after `after`.
        let recovered = after <= last_stored
            && (last_stored == after
                || (first != 0 && first <= after + 1)
                || messages.first().is_some_and(|m| m.offset == after + 1));
        body["recovered"] = serde_json::Value::Bool(recovered);
    }
    Ok(Json(body).into_response())
}

/// `GET /v1/topics`: every known topic with its offsets and subscribers.
pub(super) async fn topics(State(shared): State<Arc<Shared>>, caller: Caller) -> Result<Response, ApiError> {
    let (tx, rx) = oneshot::channel();
    let mut topics = ask(&shared, Command::Topics { reply: tx }, rx).await?;
    topics.retain(|t| shared.auth.may_see(caller.grant(), &t.topic));
    let store = shared.store.clone();
    let names: Vec<String> = topics.iter().map(|t| t.topic.clone()).collect();
    let firsts = blocking("topic listing", move || {
        names.iter().map(|n| TopicName::new(n).map_or(Ok(0), |t| store.first_offset(&t))).collect::<Result<Vec<_>, _>>()
    })
    .await?;
    for (t, first) in topics.iter_mut().zip(firsts) {
        t.first_offset = first;
    }
    Ok(Json(serde_json::json!({ "topics": topics })).into_response())
}

/// `GET /v1/agents`: agents online.
pub(super) async fn agents(
    State(shared): State<Arc<Shared>>,
    _caller: Caller,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let topic = params.get("topic").map(|t| topic_param(t)).transpose()?;
    let (tx, rx) = oneshot::channel();
    let agents = ask(&shared, Command::Presence { topic, reply: Reply::Oneshot(tx) }, rx).await?;
    Ok(Json(serde_json::json!({ "agents": agents })).into_response())
}

/// `GET /v1/search?q=&topic=&from_agent=&limit=`: full-text search, best first.
pub(super) async fn search(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let words = params.get("q").map(String::as_str).unwrap_or("");
    if words.trim().is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidField, "query parameter `q` must contain at least one word"));
    }
    if words.len() > shared.parse_limits.max_query_len {
        return Err(ApiError::new(ErrorCode::TooLarge, "query too long"));
    }
    let topic = params.get("topic").map(|t| topic_param(t)).transpose()?;
    if let Some(t) = &topic {
        shared.auth.check_read(caller.grant(), t)?;
    }
    let from_agent = params.get("from_agent").cloned();
    let limit = u64_param(&params, "limit")?.unwrap_or(20).min(shared.config.limits.max_page).max(1) as usize;
    let query = SearchQuery { words: words.to_owned(), topic, from_agent, limit };
    let store = shared.store.clone();
    let hits = blocking("search", move || store.search(&query)).await?;
    let mut hits = search_hits(hits);
    hits.retain(|h| shared.auth.may_see(caller.grant(), &h.message.topic));
    Ok(Json(serde_json::json!({ "hits": hits })).into_response())
}
