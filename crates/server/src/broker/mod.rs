//! The broker: the single owner of topics, subscriptions, presence, offsets and the
//! idempotency window.
//!
//! Connection tasks and HTTP handlers reach it only through a bounded command channel
//! ([`BrokerHandle`]); its logic ([`Broker`]) is plain synchronous code driven by the
//! loop in [`task`]. A publish gets its offset here, travels to the store writer and
//! comes back once committed; only then is it fanned out to subscribers' outboxes
//! (`try`-pushes that never wait) and acknowledged.

mod command;
mod state;
pub mod task;
#[cfg(test)]
mod testing;

pub use command::{Ack, BrokerOptions, Command, ConnId, Origin, Publish, Reply, Stats};
pub use state::{Broker, Pending};
pub use task::BrokerHandle;
