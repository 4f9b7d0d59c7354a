//! The broker's async loop and the handle everyone else uses to reach it.

use tokio::sync::mpsc;

use super::command::Command;
use super::state::{Broker, Pending};
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
                    _ => {
                        tracing::error!("the store writer stopped; writes are lost");
                        false
                    }
                };
            }
            Some(report) = done.recv() => broker.on_writer(report),
        }
    }
}
