//! Reads ([`Query`]: history, search, presence) on whichever tier is up.

use serde_json::json;
use tokio::sync::oneshot;

use super::link::Link;
use super::{Answer, Engine, Query, blocking};
use crate::error::{Error, ErrorKind, Result};
use crate::http;

impl Engine {
    pub(super) async fn query(&mut self, query: Query, reply: oneshot::Sender<Result<Answer>>) {
        match &self.link {
            Link::Ws(_) => {
                let reference = self.new_ref("q");
                let frame = match &query {
                    Query::History { topic, limit } => {
                        json!({"type": "history", "topic": topic, "limit": limit, "ref": reference})
                    }
                    Query::Search { query, topic, limit } => {
                        let mut f = json!({"type": "search", "query": query, "limit": limit, "ref": reference});
                        if let Some(t) = topic {
                            f["topic"] = json!(t);
                        }
                        f
                    }
                    Query::Presence { topic } => {
                        let mut f = json!({"type": "presence", "ref": reference});
                        if let Some(t) = topic {
                            f["topic"] = json!(t);
                        }
                        f
                    }
                };
                self.calls.insert(reference, reply);
                self.ws_write(vec![frame.to_string()]).await;
            }
            Link::Http(_) => {
                let (http, base) = (self.http.clone(), self.http_base());
                tokio::spawn(async move {
                    let answer = match query {
                        Query::History { topic, limit } => {
                            http::history(&http, &base, &topic, limit).await.map(Answer::Messages)
                        }
                        Query::Search { query, topic, limit } => {
                            http::search(&http, &base, &query, topic.as_deref(), limit).await.map(Answer::Hits)
                        }
                        Query::Presence { topic } => {
                            http::presence(&http, &base, topic.as_deref()).await.map(Answer::Agents)
                        }
                    };
                    let _ = reply.send(answer);
                });
            }
            Link::Board(board) => {
                let board = board.clone();
                tokio::spawn(async move {
                    let answer = blocking(move || match query {
                        Query::History { topic, limit } => board.history(&topic, limit as usize).map(Answer::Messages),
                        Query::Search { query, topic, limit } => {
                            board.search(&query, topic.as_deref(), limit as usize).map(Answer::Hits)
                        }
                        Query::Presence { .. } => Err(Error::new(
                            ErrorKind::Unsupported,
                            "presence needs the server; the client is on the local board",
                        )),
                    })
                    .await;
                    let _ = reply.send(answer);
                });
            }
            Link::Down => {
                let _ = reply.send(Err(Error::disconnected("query")));
            }
        }
    }
}
