//! The broker's async loop and the handle everyone else uses to reach it.

use tokio::sync::mpsc;

use std::sync::Arc;

use super::command::Command;
use super::state::{Broker, Pending};
use crate::store::StoreError;
use crate::store::writer::{FromWriter, ToWriter};

/// Commands that may wait for the broker. When full, senders wait: a flood from one
/// connection slows that connection's reads, nothing else.
pub const COMMAND_QUEUE: usize = 8192;

/// Commands handled per turn of the loop before the writes they produced are sent.
const BATCH: usize = 512;

/// A cheap, cloneable way to reach the broker.
#[derive(Clone)]
pub struct BrokerHandle {
    tx: mpsc::Sender<Command>,
}

/// The broker is gone (the server is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the server is shutting down")]
pub struct BrokerGone;

impl BrokerHandle {
    /// Sends a command, waiting while the queue is full.
    pub async fn send(&self, cmd: Command) -> Result<(), BrokerGone> {
        self.tx.send(cmd).await.map_err(|_| BrokerGone)
    }

    /// Sends a command from a thread outside the runtime, waiting while the queue is full.
    pub fn blocking_send(&self, cmd: Command) -> Result<(), BrokerGone> {
        self.tx.blocking_send(cmd).map_err(|_| BrokerGone)
    }

    /// Sends a command if there is room right now.
    pub fn try_send(&self, cmd: Command) -> Result<(), BrokerGone> {
        self.tx.try_send(cmd).map_err(|_| BrokerGone)
    }
}

/// A new command channel for a broker.
pub fn channel() -> (BrokerHandle, mpsc::Receiver<Command>) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    (BrokerHandle { tx }, rx)
}

/// Runs the broker until every [`BrokerHandle`] is dropped and the writer has reported
/// on everything sent to it.
pub async fn run(
    mut broker: Broker,
    mut commands: mpsc::Receiver<Command>,
    writer: mpsc::Sender<ToWriter<Pending>>,
    mut done: mpsc::Receiver<FromWriter<Pending>>,
) {
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            Some(report) = done.recv() => {
                broker.on_writer(report);
                while let Ok(report) = done.try_recv() {
                    broker.on_writer(report);
                }
            }
            n = commands.recv_many(&mut buf, BATCH) => {
                if n == 0 {
                    break;
                }
                for cmd in buf.drain(..) {
                    broker.handle(cmd);
                }
            }
        }
        while let Some(work) = broker.take_write() {
            if !send_to_writer(work, &writer, &mut done, &mut broker).await {
                break;
            }
        }
    }
    // Every handle is gone: nothing new arrives. Let the writer finish what it has.
    while let Some(work) = broker.take_write() {
        if !send_to_writer(work, &writer, &mut done, &mut broker).await {
            break;
        }
    }
    drop(writer);
    while let Some(report) = done.recv().await {
        broker.on_writer(report);
    }
    broker.close_all();
}

/// The writer thread is gone (only a fault stops it before the broker): nothing can be
/// stored any more. Instead of leaving its senders waiting for acks that cannot come, the
/// work fails as a failed commit does (an `internal` error to each sender, offsets handed
/// out again), and so does every later send; `/readyz` reports the store not ready.
fn refuse_without_writer(broker: &mut Broker, work: ToWriter<Pending>) {
    if broker.writer_stopped() {
        tracing::error!("the store writer stopped: every send fails until the server is restarted");
    }
    match work {
        ToWriter::Batch(batch) => broker.on_writer(FromWriter::Done {
            batches: vec![batch],
            result: Err(Arc::new(StoreError::Database("the store writer stopped".into()))),
            records: 0,
            assigned: None,
        }),
        ToWriter::Resume => broker.on_writer(FromWriter::Resumed),
        ToWriter::Tick => {}
    }
}

/// Waits for room in the writer's queue while still handling its reports: the writer
/// may itself be waiting for room in the report channel, and the two bounded queues
/// must never wait on each other.
async fn send_to_writer(
    work: ToWriter<Pending>,
    writer: &mpsc::Sender<ToWriter<Pending>>,
    done: &mut mpsc::Receiver<FromWriter<Pending>>,
    broker: &mut Broker,
) -> bool {
    let mut work = Some(work);
    loop {
        tokio::select! {
            biased;
            permit = writer.reserve() => {
                return match (permit, work.take()) {
                    (Ok(permit), Some(w)) => {
                        permit.send(w);
                        true
                    }
                    (Err(_), Some(w)) => {
                        refuse_without_writer(broker, w);
                        true
                    }
                    (_, None) => false,
                };
            }
            Some(report) = done.recv() => broker.on_writer(report),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    use tokio::sync::oneshot;

    use super::*;
    use crate::broker::testing::{broker, publish_command};
    use crate::outbox::{Outbox, Outgoing};

    /// The next frame queued to `outbox`, waiting for it a while.
    async fn next_frame(outbox: &Outbox) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut q = VecDeque::new();
            outbox.try_drain(&mut q);
            if let Some(Outgoing::Frame(f)) = q.into_iter().next() {
                return serde_json::from_str(&f).unwrap();
            }
            assert!(Instant::now() < deadline, "no frame came");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A writer that stopped (a fault) leaves no sender waiting for an ack that cannot
    /// come: each send is refused, and the broker reports the store writer stopped.
    #[tokio::test]
    async fn without_the_writer_every_send_is_refused_at_once() {
        let (handle, commands) = channel();
        // A writer thread that ended drops both of its ends.
        let (writer, writer_rx) = mpsc::channel(4);
        let (done_tx, done) = mpsc::channel(4);
        drop((writer_rx, done_tx));
        let task = tokio::spawn(run(broker(), commands, writer, done));
        let outbox = Arc::new(Outbox::new(1 << 20));
        handle.send(Command::Open { conn: 1, outbox: outbox.clone() }).await.unwrap();
        for _ in 0..3 {
            handle.send(publish_command("t", None, outbox.clone())).await.unwrap();
            let refused = next_frame(&outbox).await;
            assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("internal")));
        }
        let (tx, rx) = oneshot::channel();
        handle.send(Command::Stats { reply: tx }).await.unwrap();
        assert!(!rx.await.unwrap().store_writer_running);
        drop(handle);
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }
}
