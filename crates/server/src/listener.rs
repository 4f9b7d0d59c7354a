//! The accept loop: TCP (or TLS) connections served as HTTP/1.1 with upgrades, under a
//! connection limit, a handshake timeout, and the shutdown signal.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::shared::Shared;

/// How long an HTTP connection may take to finish after shutdown began.
const DRAIN: Duration = Duration::from_secs(5);

/// Counts an open connection against `limits.max_connections` until dropped.
pub(crate) struct Counted(Arc<Shared>);

impl Counted {
    /// Counts one more connection (the caller checked the limit, or must not refuse).
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        shared.open_sockets.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open_sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts and serves connections until shutdown, then waits (bounded) for the HTTP
/// connections to finish. Upgraded WebSockets are tracked by their own tasks.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, app: Router, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let handshake = Duration::from_secs(shared.config.limits.handshake_timeout_secs.max(1));
    let max = shared.config.limits.max_connections;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let counted = Counted::new(shared.clone());
        if shared.open_sockets.load(Ordering::Relaxed) > max {
            tracing::warn!(%peer, max, "connection refused: max_connections reached");
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let (app, tls, stop, alive) = (app.clone(), tls.clone(), shutdown.clone(), alive_tx.clone());
        tokio::spawn(async move {
            let _alive = alive;
            match tls {
                None => serve_http(tcp, app, stop, handshake, counted).await,
                Some(acceptor) => match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_http(stream, app, stop, handshake, counted).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(alive_tx);
    let _ = tokio::time::timeout(DRAIN * 2, alive_rx.recv()).await;
}

async fn serve_http<S>(io: S, app: Router, mut stop: watch::Receiver<bool>, handshake: Duration, counted: Counted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(handshake);
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
    // An upgraded WebSocket keeps counting against the limit through its own task.
    drop(counted);
}

/// Completes when the shutdown flag is set (without holding the flag's lock after).
async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}
