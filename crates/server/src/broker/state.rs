//! The broker's state and its synchronous command handling.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use agentbus_protocol::{
    AgentId, AgentPresence, ErrorCode, FrameError, Ref, RegisterFrame, ServerFrame, SubscribeFrame, TopicInfo,
    TopicName, ack_frame, error_frame,
};
use foldhash::HashMap;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;
use crate::outbox::{Outbox, Outgoing, PushError, Replay, SubscribedReply};
use crate::store::redis::with_offset;
use crate::store::writer::{FromWriter, ToWriter, Writable, WriteBatch};
use crate::store::{Assigned, Cursor, KnownId, Record, StoreError, TopicState};

use super::command::{Ack, BrokerOptions, Command, ConnId, Origin, Publish, Reply, Stats};

/// A message on its way to the store, or a duplicate's ack waiting its turn.
pub struct Pending {
    topic: TopicName,
    epoch: Arc<str>,
    offset: u64,
    id: String,
    client_id: bool,
    duplicate: bool,
    timestamp_ms: i64,
    received: Instant,
    from_agent: Arc<str>,
    frame: Utf8Bytes,
    origin: Origin,
}

impl Writable for Pending {
    fn record(&self) -> Option<Record<'_>> {
        (!self.duplicate).then(|| Record {
            topic: &self.topic,
            epoch: &self.epoch,
            offset: self.offset,
            id: &self.id,
            client_id: self.client_id,
            timestamp_ms: self.timestamp_ms,
            from_agent: &self.from_agent,
            frame: self.frame.as_str(),
        })
    }
}

struct Topic {
    /// The offset the next publish gets.
    next: u64,
    /// The last offset the store committed (and that was fanned out).
    committed: u64,
    epoch: Arc<str>,
    subscribers: Vec<(ConnId, Arc<Outbox>)>,
    waiters: Vec<oneshot::Sender<u64>>,
}

impl Topic {
    fn new(epoch: Arc<str>, last: u64) -> Self {
        Self { next: last + 1, committed: last, epoch, subscribers: Vec::new(), waiters: Vec::new() }
    }
}

struct Conn {
    outbox: Arc<Outbox>,
    agent: Option<AgentId>,
    /// Its subscriptions: a few per connection, kept in a vector (a set would cost an
    /// idle connection a hundred bytes more).
    topics: Vec<TopicName>,
}

impl Conn {
    /// Records a subscription (once).
    fn add_topic(&mut self, topic: TopicName) {
        if !self.topics.contains(&topic) {
            push_small(&mut self.topics, topic);
        }
    }
}

struct Agent {
    connections: u32,
    capabilities: Vec<String>,
    since: SystemTime,
}

/// The broker's state. All methods are synchronous and never wait.
///
/// Its maps use foldhash rather than SipHash, which took about 5% of the server's time
/// in the `pairs` benchmark (lookups by topic, agent and message id on every publish);
/// foldhash's per-process random seed keeps keys chosen by clients from being aimed at
/// one bucket in practice.
pub struct Broker {
    options: BrokerOptions,
    boot_epoch: Arc<str>,
    topic_epoch: Arc<str>,
    topics: HashMap<TopicName, Topic>,
    conns: HashMap<ConnId, Conn>,
    agents: HashMap<AgentId, Agent>,
    /// Client-chosen id → where it was stored; `id_order` evicts the oldest.
    ids: HashMap<String, (TopicName, u64)>,
    id_order: VecDeque<String>,
    /// Agent → last inbox offset handed to one of its connections.
    cursors: HashMap<String, u64>,
    dirty_cursors: HashMap<String, u64>,
    to_write: Vec<Pending>,
    /// A failed commit rewound the offsets; the writer must be told to resume.
    resume_needed: bool,
    /// Failures still arriving from before the rewind must not rewind again.
    awaiting_resume: bool,
    /// The writer thread is gone: every write fails at once.
    store_writer_stopped: bool,
    /// The server is shutting down: outboxes are closed as they open.
    closing: bool,
    /// Agents of the other servers sharing the store.
    remote_presence: Vec<AgentPresence>,
    metrics: Arc<Metrics>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Broker {
    /// A broker that continues the history the store holds.
    pub fn new(
        options: BrokerOptions,
        topics: Vec<TopicState>,
        ids: Vec<KnownId>,
        cursors: Vec<Cursor>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let boot_epoch: Arc<str> = Arc::from(options.boot_epoch.as_str());
        let topic_epoch: Arc<str> = Arc::from(options.topic_epoch.as_str());
        let mut broker = Self {
            boot_epoch,
            topic_epoch,
            topics: HashMap::default(),
            conns: HashMap::default(),
            agents: HashMap::default(),
            ids: HashMap::default(),
            id_order: VecDeque::new(),
            cursors: cursors.into_iter().map(|c| (c.agent, c.offset)).collect(),
            dirty_cursors: HashMap::default(),
            to_write: Vec::new(),
            resume_needed: false,
            awaiting_resume: false,
            store_writer_stopped: false,
            closing: false,
            remote_presence: Vec::new(),
            metrics,
            options,
        };
        for t in topics {
            broker.topics.insert(t.topic, Topic::new(Arc::from(t.epoch.as_str()), t.last_offset));
        }
        // `ids` come newest first; remember them oldest first so eviction order holds.
        for k in ids.into_iter().rev() {
            broker.remember_id(k.id, k.topic, k.offset);
        }
        broker
    }

    fn remember_id(&mut self, id: String, topic: TopicName, offset: u64) {
        if self.ids.insert(id.clone(), (topic, offset)).is_none() {
            self.id_order.push_back(id);
            while self.id_order.len() > self.options.dedupe_window {
                if let Some(old) = self.id_order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    fn topic_mut(&mut self, name: &TopicName) -> &mut Topic {
        let epoch = &self.topic_epoch;
        self.topics.entry(name.clone()).or_insert_with(|| Topic::new(epoch.clone(), 0))
    }

    /// Handles one command.
    pub fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Open { conn, outbox } => {
                if self.closing {
                    outbox.close();
                }
                self.conns.insert(conn, Conn { outbox, agent: None, topics: Vec::new() });
            }
            Command::PingAll => {
                for c in self.conns.values() {
                    c.outbox.ping();
                }
            }
            Command::Shutdown => {
                self.closing = true;
                self.close_all();
            }
            Command::Close { conn } => self.close(conn),
            Command::Remote { topic, offset, frame } => {
                if offset > self.topic_mut(&topic).committed {
                    self.metrics.remote_messages.inc();
                }
                let _ = self.fan_out(&topic, offset, &frame);
            }
            Command::CaughtUp { topic, last } => self.caught_up(&topic, last),
            Command::RemoteCursor(c) => {
                let pos = self.cursors.entry(c.agent).or_insert(0);
                *pos = (*pos).max(c.offset);
            }
            Command::Register { conn, frame, reference } => self.register(conn, frame, reference),
            Command::Subscribe { conn, frame, reference } => self.subscribe(conn, frame, reference),
            Command::Unsubscribe { conn, topic, reference } => self.unsubscribe(conn, topic, reference),
            Command::Publish(p) => self.publish(*p),
            Command::InboxDelivered { agent, offset } => self.set_cursor(agent.as_str(), offset),
            Command::LocalPresence { reply } => {
                let _ = reply.send(self.local_presence());
            }
            Command::RemotePresence(agents) => self.remote_presence = agents,
            Command::Presence { topic, reply } => {
                let agents = self.presence(topic.as_ref());
                match reply {
                    Reply::Outbox(outbox, reference) => {
                        let _ = outbox.push_frame(ServerFrame::Presence { agents, reference }.to_json());
                    }
                    Reply::Oneshot(tx) => {
                        let _ = tx.send(agents);
                    }
                }
            }
            Command::Stats { reply } => {
                let stats = Stats {
                    connections: self.conns.len(),
                    agents: self.agents.len(),
                    topics: self.topics.len(),
                    subscriptions: self.conns.values().map(|c| c.topics.len()).sum(),
                    store_writer_running: !self.store_writer_stopped,
                };
                let _ = reply.send(stats);
            }
            Command::Topics { reply } => {
                let _ = reply.send(self.topic_infos());
            }
            Command::WaitFor { topic, after, reply } => {
                let max = self.options.max_waiters;
                let t = self.topic_mut(&topic);
                if t.committed > after {
                    let _ = reply.send(t.committed);
                } else {
                    t.waiters.retain(|w| !w.is_closed());
                    if t.waiters.len() < max {
                        t.waiters.push(reply);
                    } else {
                        let _ = reply.send(t.committed);
                    }
                }
            }
        }
    }

    fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else { return };
        for topic in &c.topics {
            if let Some(t) = self.topics.get_mut(topic) {
                t.subscribers.retain(|(id, _)| *id != conn);
            }
        }
        if let Some(agent) = c.agent
            && let Some(a) = self.agents.get_mut(&agent)
        {
            a.connections = a.connections.saturating_sub(1);
            if a.connections == 0 {
                self.agents.remove(&agent);
                tracing::info!(agent = %agent, "Agent '{agent}' disconnected");
            }
        }
    }

    fn register(&mut self, conn: ConnId, frame: RegisterFrame, reference: Option<Ref>) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let outbox = c.outbox.clone();
        if let Some(existing) = &c.agent
            && *existing != frame.agent_id
        {
            let msg = format!("this connection is already registered as {existing:?}");
            let _ = outbox.push_frame(error_frame(ErrorCode::InvalidField, &msg, reference.as_ref()));
            return;
        }
        let first_time = c.agent.is_none();
        c.agent = Some(frame.agent_id.clone());
        let agent_id = frame.agent_id;
        if first_time {
            let a = self.agents.entry(agent_id.clone()).or_insert_with(|| Agent {
                connections: 0,
                capabilities: Vec::new(),
                since: SystemTime::now(),
            });
            a.connections += 1;
            a.capabilities = frame.capabilities;
            tracing::info!(agent = %agent_id, conn, "Agent '{agent_id}' connected");
        } else if let Some(a) = self.agents.get_mut(&agent_id) {
            a.capabilities = frame.capabilities;
        }
        let session = format!("{}-{conn}", self.boot_epoch);
        let registered = ServerFrame::Registered {
            agent_id: agent_id.to_string(),
            session,
            server: self.options.server_name.clone(),
            reference,
        };
        let _ = outbox.push_frame(registered.to_json());
        if !first_time {
            return;
        }
        // The inbox: subscribe, then hand over what arrived while the agent was away.
        let inbox = TopicName::inbox(&agent_id);
        let cursor = self.cursors.get(agent_id.as_str()).copied().unwrap_or(0);
        let t = self.topic_mut(&inbox);
        push_small(&mut t.subscribers, (conn, outbox.clone()));
        let committed = t.committed;
        if committed > cursor {
            let replay = Replay {
                topic: inbox.clone(),
                after: cursor,
                upto: committed,
                newest: None,
                subscribed: None,
                live: false,
            };
            // The cursor advances when the connection reports these written.
            let _ = outbox.push(Outgoing::Replay(Box::new(replay)));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.add_topic(inbox);
        }
    }

    fn set_cursor(&mut self, agent: &str, offset: u64) {
        let pos = self.cursors.entry(agent.to_owned()).or_insert(0);
        if offset > *pos {
            *pos = offset;
            self.dirty_cursors.insert(agent.to_owned(), offset);
        }
    }

    fn subscribe(&mut self, conn: ConnId, frame: SubscribeFrame, reference: Option<Ref>) {
        let max = self.options.max_subscriptions;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let outbox = c.outbox.clone();
        let already = c.topics.contains(&frame.topic);
        if !already && c.topics.len() >= max {
            let msg = format!("at most {max} subscriptions per connection");
            let _ = outbox.push_frame(error_frame(ErrorCode::TooLarge, &msg, reference.as_ref()));
            return;
        }
        c.add_topic(frame.topic.clone());
        let agent = c.agent.clone();
        let shared_store = self.options.shared_store;
        let t = self.topic_mut(&frame.topic);
        let committed = t.committed;
        let epoch = t.epoch.to_string();
        let (after, newest, recovery, reset) = match frame.since {
            Some(since) => {
                // Offsets from another history mean nothing here (a full replay from 0 is safe).
                // With a shared store an offset past this server's is another server's that
                // the feed has not brought yet: the same history, and live delivery
                // continues from where this server is.
                let ahead = since > committed && !shared_store;
                let other_history = ahead || (since > 0 && frame.epoch.as_deref().is_some_and(|e| e != epoch));
                if other_history { (0, None, true, true) } else { (since, None, true, false) }
            }
            None => match frame.history.unwrap_or(agentbus_protocol::DEFAULT_HISTORY) {
                0 => (committed, None, false, false),
                n => (0, Some(n), false, false),
            },
        };
        let replay = Replay {
            topic: frame.topic.clone(),
            after,
            upto: committed,
            newest,
            subscribed: Some(SubscribedReply { epoch, recovery, reset, reference }),
            live: false,
        };
        if outbox.push(Outgoing::Replay(Box::new(replay))).is_ok() && !already {
            push_small(&mut t.subscribers, (conn, outbox));
        }
        match agent {
            Some(a) => {
                tracing::info!(agent = %a, topic = %frame.topic, "Agent '{a}' subscribed to topic '{}'", frame.topic)
            }
            None => {
                tracing::info!(conn, topic = %frame.topic, "Connection {conn} subscribed to topic '{}'", frame.topic)
            }
        }
    }

    fn unsubscribe(&mut self, conn: ConnId, topic: TopicName, reference: Option<Ref>) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.topics.retain(|t| *t != topic);
        let outbox = c.outbox.clone();
        if let Some(t) = self.topics.get_mut(&topic) {
            t.subscribers.retain(|(id, _)| *id != conn);
        }
        let _ = outbox.push_frame(ServerFrame::Unsubscribed { topic: topic.to_string(), reference }.to_json());
    }

    fn publish(&mut self, p: Publish) {
        let local_ids = p.client_id && !self.options.shared_store;
        if local_ids && let Some((topic, offset)) = self.ids.get(&p.id).cloned() {
            let epoch = self.topic_mut(&topic).epoch.clone();
            self.to_write.push(Pending {
                topic,
                epoch,
                offset,
                id: p.id,
                client_id: true,
                duplicate: true,
                timestamp_ms: p.timestamp_ms,
                received: p.received,
                from_agent: p.from_agent,
                frame: Utf8Bytes::from_static(""),
                origin: p.origin,
            });
            return;
        }
        let t = self.topic_mut(&p.topic);
        let offset = t.next;
        t.next += 1;
        let epoch = t.epoch.clone();
        let frame = Utf8Bytes::from(p.draft.finish(offset));
        if local_ids {
            self.remember_id(p.id.clone(), p.topic.clone(), offset);
        }
        self.to_write.push(Pending {
            topic: p.topic,
            epoch,
            offset,
            id: p.id,
            client_id: p.client_id,
            duplicate: false,
            timestamp_ms: p.timestamp_ms,
            received: p.received,
            from_agent: p.from_agent,
            frame,
            origin: p.origin,
        });
    }

    /// Records that the writer thread is gone; returns whether it was news.
    pub fn writer_stopped(&mut self) -> bool {
        !std::mem::replace(&mut self.store_writer_stopped, true)
    }

    /// Work for the writer accumulated by the commands handled so far.
    pub fn take_write(&mut self) -> Option<ToWriter<Pending>> {
        if self.resume_needed {
            self.resume_needed = false;
            return Some(ToWriter::Resume);
        }
        if self.store_writer_stopped {
            // Inbox positions cannot be stored any more (a refused batch would bring them
            // back, again and again).
            self.dirty_cursors.clear();
        }
        if self.to_write.is_empty() && self.dirty_cursors.is_empty() {
            return None;
        }
        let cursors = self.dirty_cursors.drain().map(|(agent, offset)| Cursor { agent, offset }).collect();
        // The next batch starts with room for as many as this one: one allocation per
        // batch instead of a doubling series of copies.
        let room = self.to_write.len();
        let items = std::mem::replace(&mut self.to_write, Vec::with_capacity(room));
        Some(ToWriter::Batch(WriteBatch { items, cursors }))
    }

    /// Handles the writer's report: fan out and ack what was stored, refuse what was not.
    pub fn on_writer(&mut self, msg: FromWriter<Pending>) {
        match msg {
            FromWriter::Resumed => self.awaiting_resume = false,
            FromWriter::Done { batches, result: Ok(()), records, assigned } => {
                if records > 0 {
                    self.metrics.commit_batch.observe(records as f64);
                }
                // One clock reading for the commit: its messages were stored together.
                let now = Instant::now();
                let mut assigned = assigned.map(Vec::into_iter);
                for batch in batches {
                    for p in batch.items {
                        // Records (and so their numbers) exist for all but local duplicates.
                        let a = if p.duplicate { None } else { assigned.as_mut().and_then(Iterator::next) };
                        self.committed(p, a, now);
                    }
                }
            }
            FromWriter::Done { batches, result: Err(e), .. } => self.failed(batches, &e),
        }
    }

    fn committed(&mut self, mut p: Pending, assigned: Option<Assigned>, now: Instant) {
        if let Some(a) = assigned {
            if let Some(stored_on) = a.duplicate {
                (p.duplicate, p.topic, p.offset) = (true, stored_on, a.offset);
            } else if a.offset != p.offset {
                p.frame = Utf8Bytes::from(with_offset(&p.frame, a.offset));
                p.offset = a.offset;
            }
        }
        self.metrics.acks.inc();
        if p.duplicate {
            self.metrics.duplicates.inc();
            let ack = Ack { id: p.id, topic: p.topic, offset: p.offset, delivered: 0, duplicate: true };
            send_ack(p.origin, Ok(ack));
            return;
        }
        Metrics::observe(&self.metrics.ack_latency, now.saturating_duration_since(p.received));
        let Some(delivered) = self.fan_out(&p.topic, p.offset, &p.frame) else { return };
        self.metrics.published.inc();
        Metrics::observe(&self.metrics.delivery_latency, now.saturating_duration_since(p.received));
        tracing::debug!(
            topic = %p.topic,
            offset = p.offset,
            "Sent message on topic '{}' to {delivered}/{} subscribers",
            p.topic,
            self.topics.get(&p.topic).map_or(0, |t| t.subscribers.len())
        );
        let ack = Ack { id: p.id, topic: p.topic, offset: p.offset, delivered, duplicate: false };
        send_ack(p.origin, Ok(ack));
    }

    /// Hands the frame stored at `offset` of `topic` to its subscribers, once: with a
    /// shared store the same message comes from this server's commit and from the feed,
    /// in either order, and other servers' messages may be missing before it (those are
    /// replayed from the store first). Returns how many subscribers it went to, `None`
    /// for an unknown topic.
    fn fan_out(&mut self, topic: &TopicName, offset: u64, frame: &Utf8Bytes) -> Option<usize> {
        let t = self.topics.get_mut(topic)?;
        if offset <= t.committed {
            return Some(t.subscribers.len());
        }
        if offset > t.committed + 1 {
            self.metrics.gaps_filled.inc();
            let gap = Replay::gap(topic.clone(), t.committed, offset - 1);
            for (_, outbox) in &t.subscribers {
                let _ = outbox.push(Outgoing::Replay(Box::new(gap.clone())));
            }
        }
        t.committed = offset;
        t.next = t.next.max(offset + 1);
        let mut delivered = 0;
        for (conn, outbox) in &t.subscribers {
            match outbox.push(Outgoing::Frame(frame.clone())) {
                Ok(()) => delivered += 1,
                Err(PushError::Overflow) => {
                    self.metrics.slow_consumers.inc();
                    let agent = self.conns.get(conn).and_then(|c| c.agent.as_ref()).map_or("-", |a| a.as_str());
                    tracing::warn!(
                        conn,
                        agent,
                        topic = %topic,
                        "slow consumer: agent '{agent}' (connection {conn}) fell behind and is closed"
                    );
                }
                Err(PushError::Gone) => {}
            }
        }
        self.metrics.delivered.inc_by(delivered as u64);
        for w in t.waiters.drain(..) {
            let _ = w.send(offset);
        }
        Some(delivered)
    }

    /// The shared store holds everything of `topic` up to `last`: subscribers get what
    /// they have not seen from the store.
    fn caught_up(&mut self, topic: &TopicName, last: u64) {
        let metrics = self.metrics.clone();
        let t = self.topic_mut(topic);
        if last <= t.committed {
            return;
        }
        metrics.gaps_filled.inc();
        let gap = Replay::gap(topic.clone(), t.committed, last);
        for (_, outbox) in &t.subscribers {
            let _ = outbox.push(Outgoing::Replay(Box::new(gap.clone())));
        }
        t.committed = last;
        t.next = t.next.max(last + 1);
        for w in t.waiters.drain(..) {
            let _ = w.send(last);
        }
    }

    fn failed(&mut self, batches: Vec<WriteBatch<Pending>>, error: &StoreError) {
        let (code, message) = match error {
            StoreError::Full(_) | StoreError::Halted | StoreError::Unreachable(_) => {
                (ErrorCode::Unavailable, format!("not stored: {error}"))
            }
            _ => (ErrorCode::Internal, "not stored: the store failed (see the server log)".to_owned()),
        };
        for batch in batches {
            for p in batch.items {
                if p.client_id && !p.duplicate && self.ids.get(&p.id).is_some_and(|(_, o)| *o == p.offset) {
                    self.ids.remove(&p.id);
                }
                send_ack(p.origin, Err(FrameError::new(code, message.clone())));
            }
            for c in batch.cursors {
                self.dirty_cursors.entry(c.agent).or_insert(c.offset);
            }
        }
        if !self.awaiting_resume {
            // Everything after the last commit was refused or will be: hand out those
            // offsets again so that no topic ever has a gap.
            for t in self.topics.values_mut() {
                t.next = t.committed + 1;
            }
            self.awaiting_resume = true;
            self.resume_needed = true;
        }
    }

    /// Every agent connected here and, with a shared store, to the other servers (an
    /// agent connected to several counts each one's connections and topics).
    fn presence(&self, topic: Option<&TopicName>) -> Vec<AgentPresence> {
        let mut out = self.local_presence();
        for remote in &self.remote_presence {
            match out.iter_mut().find(|p| p.agent_id == remote.agent_id) {
                Some(p) => {
                    p.connections += remote.connections;
                    p.topics.extend(remote.topics.iter().cloned());
                    p.topics.sort();
                    p.topics.dedup();
                    p.since = p.since.clone().min(remote.since.clone());
                }
                None => out.push(remote.clone()),
            }
        }
        out.retain(|p| topic.is_none_or(|t| p.topics.iter().any(|x| x == t.as_str())));
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }

    /// The agents connected to this server.
    fn local_presence(&self) -> Vec<AgentPresence> {
        self.agents
            .iter()
            .map(|(id, a)| {
                let mut topics: Vec<String> = self
                    .conns
                    .values()
                    .filter(|c| c.agent.as_ref() == Some(id))
                    .flat_map(|c| c.topics.iter())
                    .filter(|t| t.inbox_owner().is_none())
                    .map(|t| t.to_string())
                    .collect();
                topics.sort();
                topics.dedup();
                AgentPresence {
                    agent_id: id.to_string(),
                    connections: a.connections,
                    topics,
                    capabilities: a.capabilities.clone(),
                    since: rfc3339(a.since),
                }
            })
            .collect()
    }

    fn topic_infos(&self) -> Vec<TopicInfo> {
        let mut out: Vec<TopicInfo> = self
            .topics
            .iter()
            .map(|(name, t)| TopicInfo {
                topic: name.to_string(),
                last_offset: t.committed,
                first_offset: 0,
                subscribers: t.subscribers.len(),
                epoch: t.epoch.to_string(),
            })
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    /// Closes every outbox (shutdown): connection tasks flush and say goodbye.
    pub fn close_all(&mut self) {
        for c in self.conns.values() {
            c.outbox.close();
        }
    }
}

/// Pushes onto a vector that is usually tiny (an agent's inbox has one subscriber, a
/// connection a couple of topics): its first slots grow one at a time instead of four at
/// once, which matters with tens of thousands of idle connections.
fn push_small<T>(v: &mut Vec<T>, item: T) {
    if v.len() == v.capacity() && v.len() < 4 {
        v.reserve_exact(1);
    }
    v.push(item);
}

fn send_ack(origin: Origin, result: Result<Ack, FrameError>) {
    match origin {
        Reply::Outbox(outbox, reference) => {
            let frame = match &result {
                Ok(a) => ack_frame(&a.id, &a.topic, a.offset, a.delivered, a.duplicate, reference.as_ref()),
                Err(e) => error_frame(e.code, &e.message, reference.as_ref()),
            };
            let _ = outbox.push_frame(frame);
        }
        Reply::Oneshot(tx) => {
            let _ = tx.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::VecDeque;

    use agentbus_protocol::{SubscribeFrame, frame_offset};

    use super::*;
    use crate::broker::testing::{broker, publish_command};
    use crate::outbox::OutboxState;

    #[test]
    fn shutdown_closes_every_outbox_and_those_opened_after_it() {
        let mut b = broker();
        let before = open(&mut b, 1);
        b.handle(Command::PingAll);
        assert_eq!(before.try_drain(&mut VecDeque::new()), OutboxState::Ping);
        b.handle(Command::Shutdown);
        let after = open(&mut b, 2);
        for outbox in [before, after] {
            assert_eq!(outbox.try_drain(&mut VecDeque::new()), OutboxState::Closed);
        }
    }

    fn open(b: &mut Broker, conn: ConnId) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox::new(1 << 20));
        b.handle(Command::Open { conn, outbox: outbox.clone() });
        outbox
    }

    fn publish(b: &mut Broker, topic: &str, id: Option<&str>, origin: Arc<Outbox>) {
        b.handle(publish_command(topic, id, origin));
    }

    fn frames(outbox: &Outbox) -> Vec<serde_json::Value> {
        let mut q = VecDeque::new();
        outbox.try_drain(&mut q);
        q.into_iter()
            .filter_map(|o| match o {
                Outgoing::Frame(f) => Some(serde_json::from_str(&f).unwrap()),
                Outgoing::Replay(_) => None,
            })
            .collect()
    }

    fn commit(b: &mut Broker, result: Result<(), StoreError>) -> Vec<u64> {
        let Some(ToWriter::Batch(batch)) = b.take_write() else { panic!("a batch") };
        let offsets = batch.items.iter().map(|p| p.offset).collect();
        b.on_writer(FromWriter::Done {
            batches: vec![batch],
            result: result.map_err(Arc::new),
            records: 0,
            assigned: None,
        });
        offsets
    }

    #[test]
    fn a_publish_is_fanned_out_and_acked_only_after_its_commit() {
        let mut b = broker();
        let sub = open(&mut b, 1);
        let frame = SubscribeFrame { topic: TopicName::new("t").unwrap(), history: Some(0), since: None, epoch: None };
        b.handle(Command::Subscribe { conn: 1, frame, reference: None });
        let mut q = VecDeque::new();
        sub.try_drain(&mut q);
        let pubr = open(&mut b, 2);
        publish(&mut b, "t", None, pubr.clone());
        assert!(frames(&sub).is_empty() && frames(&pubr).is_empty(), "nothing before the commit");
        assert_eq!(commit(&mut b, Ok(())), [1]);
        let got = frames(&sub);
        assert_eq!((got.len(), got[0]["offset"].as_u64()), (1, Some(1)));
        let ack = frames(&pubr);
        assert_eq!((ack[0]["type"].as_str(), ack[0]["delivered"].as_u64()), (Some("ack"), Some(1)));
    }

    #[test]
    fn a_failed_commit_rewinds_offsets_so_none_is_skipped_or_reused() {
        let mut b = broker();
        let p = open(&mut b, 1);
        publish(&mut b, "t", None, p.clone());
        assert_eq!(commit(&mut b, Ok(())), [1]);
        publish(&mut b, "t", Some("a"), p.clone());
        publish(&mut b, "t", None, p.clone());
        let Some(ToWriter::Batch(failed)) = b.take_write() else { panic!() };
        publish(&mut b, "t", None, p.clone());
        let Some(ToWriter::Batch(also_refused)) = b.take_write() else { panic!() };
        b.on_writer(FromWriter::Done {
            batches: vec![failed],
            result: Err(Arc::new(StoreError::Full("disk".into()))),
            records: 0,
            assigned: None,
        });
        b.on_writer(FromWriter::Done {
            batches: vec![also_refused],
            result: Err(Arc::new(StoreError::Halted)),
            records: 0,
            assigned: None,
        });
        assert!(matches!(b.take_write(), Some(ToWriter::Resume)), "the writer is told to resume once");
        assert!(b.take_write().is_none());
        let errors = frames(&p);
        assert!(errors.iter().skip(1).all(|f| f["code"] == "unavailable"), "{errors:?}");
        b.on_writer(FromWriter::Resumed);
        publish(&mut b, "t", Some("a"), p.clone());
        assert_eq!(commit(&mut b, Ok(())), [2], "the refused id is not a duplicate and offset 2 is handed out again");
    }

    #[test]
    fn a_duplicate_id_is_acked_in_order_without_a_second_delivery() {
        let mut b = broker();
        let p = open(&mut b, 1);
        publish(&mut b, "t", Some("same"), p.clone());
        publish(&mut b, "t", Some("same"), p.clone());
        let Some(ToWriter::Batch(batch)) = b.take_write() else { panic!() };
        assert_eq!(batch.items.iter().filter(|i| i.record().is_some()).count(), 1);
        b.on_writer(FromWriter::Done { batches: vec![batch], result: Ok(()), records: 1, assigned: None });
        let acks = frames(&p);
        assert_eq!(acks.len(), 2);
        assert_eq!((acks[1]["offset"].as_u64(), acks[1]["duplicate"].as_bool()), (Some(1), Some(true)));
    }

    #[test]
    fn a_full_outbox_closes_only_that_subscriber() {
        let mut b = broker();
        let slow = Arc::new(Outbox::new(64));
        b.handle(Command::Open { conn: 1, outbox: slow.clone() });
        let fast = open(&mut b, 2);
        for conn in [1, 2] {
            let frame =
                SubscribeFrame { topic: TopicName::new("t").unwrap(), history: Some(0), since: None, epoch: None };
            b.handle(Command::Subscribe { conn, frame, reference: None });
        }
        let p = open(&mut b, 3);
        for _ in 0..5 {
            publish(&mut b, "t", None, p.clone());
        }
        commit(&mut b, Ok(()));
        let mut q = VecDeque::new();
        assert_eq!(slow.try_drain(&mut q), OutboxState::SlowConsumer);
        let mut all = VecDeque::new();
        fast.try_drain(&mut all);
        assert_eq!(all.len(), 6, "the subscribed reply and five messages");
    }

    fn shared_broker() -> Broker {
        let options = BrokerOptions { shared_store: true, topic_epoch: "bus".into(), ..broker().options };
        Broker::new(options, Vec::new(), Vec::new(), Vec::new(), Arc::new(Metrics::new()))
    }

    /// What an outbox holds: `f<offset>` per live frame, `r<after>-<upto>` per replay.
    fn items(outbox: &Outbox) -> Vec<String> {
        let mut q = VecDeque::new();
        outbox.try_drain(&mut q);
        q.into_iter()
            .map(|o| match o {
                Outgoing::Frame(f) => match frame_offset(&f) {
                    Some(o) => format!("f{o}"),
                    None => "other".to_owned(),
                },
                Outgoing::Replay(r) => format!("r{}-{}{}", r.after, r.upto, if r.live { "" } else { " (marked)" }),
            })
            .collect()
    }

    fn remote(offset: u64) -> Command {
        let frame = format!(r#"{{"type":"message","topic":"t","id":"x{offset}","content":"x","offset":{offset}}}"#);
        Command::Remote { topic: TopicName::new("t").unwrap(), offset, frame: Utf8Bytes::from(frame) }
    }

    fn subscribed(b: &mut Broker, conn: ConnId) -> Arc<Outbox> {
        let sub = open(b, conn);
        let frame = SubscribeFrame { topic: TopicName::new("t").unwrap(), history: Some(0), since: None, epoch: None };
        b.handle(Command::Subscribe { conn, frame, reference: None });
        let _ = items(&sub);
        sub
    }

    #[test]
    fn with_a_shared_store_each_message_goes_out_once_in_order_and_gaps_come_from_the_store() {
        let mut b = shared_broker();
        let sub = subscribed(&mut b, 1);
        b.handle(remote(1));
        b.handle(remote(1));
        assert_eq!(items(&sub), ["f1"], "a message seen twice goes out once");
        b.handle(remote(4));
        assert_eq!(items(&sub), ["r1-3", "f4"], "a gap is filled from the store, as live frames");
        b.handle(remote(3));
        assert!(items(&sub).is_empty(), "older than what went out: nothing");
        b.handle(Command::CaughtUp { topic: TopicName::new("t").unwrap(), last: 6 });
        assert_eq!(items(&sub), ["r4-6"]);
        b.handle(Command::CaughtUp { topic: TopicName::new("t").unwrap(), last: 6 });
        assert!(items(&sub).is_empty());
        assert_eq!((b.metrics.remote_messages.get(), b.metrics.gaps_filled.get()), (2, 2));
    }

    #[test]
    fn with_a_shared_store_the_store_numbers_a_publish_and_the_feed_may_come_first() {
        let mut b = shared_broker();
        let sub = subscribed(&mut b, 1);
        let publisher = open(&mut b, 2);
        publish(&mut b, "t", None, publisher.clone());
        publish(&mut b, "t", None, publisher.clone());
        let Some(ToWriter::Batch(batch)) = b.take_write() else { panic!("a batch") };
        // Another server's messages took 1 and 2; ours got 3 and 4, and the feed brought
        // 3 before the commit's report.
        b.handle(remote(3));
        let assigned = Some(vec![Assigned { offset: 3, duplicate: None }, Assigned { offset: 4, duplicate: None }]);
        b.on_writer(FromWriter::Done { batches: vec![batch], result: Ok(()), records: 2, assigned });
        assert_eq!(items(&sub), ["r0-2", "f3", "f4"]);
        let acks = frames(&publisher);
        let got: Vec<_> = acks.iter().map(|a| (a["offset"].as_u64(), a["delivered"].as_u64())).collect();
        assert_eq!(got, [(Some(3), Some(1)), (Some(4), Some(1))]);
    }

    #[test]
    fn with_a_shared_store_a_known_id_is_acked_where_the_store_found_it() {
        let mut b = shared_broker();
        let sub = subscribed(&mut b, 1);
        let publisher = open(&mut b, 2);
        publish(&mut b, "t", Some("req-1"), publisher.clone());
        let Some(ToWriter::Batch(batch)) = b.take_write() else { panic!("a batch") };
        let assigned = Some(vec![Assigned { offset: 9, duplicate: Some(TopicName::new("elsewhere").unwrap()) }]);
        b.on_writer(FromWriter::Done { batches: vec![batch], result: Ok(()), records: 1, assigned });
        assert!(items(&sub).is_empty(), "nothing delivered again");
        let ack = &frames(&publisher)[0];
        assert_eq!(
            (ack["topic"].as_str(), ack["offset"].as_u64(), ack["duplicate"].as_bool()),
            (Some("elsewhere"), Some(9), Some(true))
        );
    }

    #[test]
    fn presence_adds_the_agents_of_the_other_servers() {
        let mut b = shared_broker();
        let conn = open(&mut b, 1);
        let frame =
            RegisterFrame { agent_id: AgentId::new("alice").unwrap(), token: None, capabilities: vec![], meta: None };
        b.handle(Command::Register { conn: 1, frame, reference: None });
        let _ = items(&conn);
        let remote = |agent: &str, topics: &[&str]| AgentPresence {
            agent_id: agent.into(),
            connections: 1,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            capabilities: vec![],
            since: "2000-01-01T00:00:00.000Z".into(),
        };
        b.handle(Command::RemotePresence(vec![remote("alice", &["room"]), remote("bob", &["room", "x"])]));
        let (tx, mut rx) = oneshot::channel();
        b.handle(Command::Presence { topic: None, reply: Reply::Oneshot(tx) });
        let all = rx.try_recv().unwrap();
        let summary: Vec<_> = all.iter().map(|p| (p.agent_id.as_str(), p.connections, p.topics.join(","))).collect();
        assert_eq!(summary, [("alice", 2, "room".to_owned()), ("bob", 1, "room,x".to_owned())]);
        assert_eq!(all[0].since, "2000-01-01T00:00:00.000Z", "the earliest connection counts");
        let (tx, mut rx) = oneshot::channel();
        b.handle(Command::LocalPresence { reply: tx });
        assert_eq!(rx.try_recv().unwrap().len(), 1, "only this server's agents are published");
        let (tx, mut rx) = oneshot::channel();
        b.handle(Command::Presence { topic: Some(TopicName::new("x").unwrap()), reply: Reply::Oneshot(tx) });
        assert_eq!(rx.try_recv().unwrap().len(), 1);
    }

    #[test]
    fn with_a_shared_store_a_client_ahead_of_this_server_is_not_replayed_from_the_start() {
        let mut b = shared_broker();
        let sub = open(&mut b, 1);
        let frame = SubscribeFrame { topic: TopicName::new("t").unwrap(), history: None, since: Some(5), epoch: None };
        b.handle(Command::Subscribe { conn: 1, frame, reference: None });
        assert_eq!(items(&sub), ["r5-0 (marked)"], "nothing to replay, no reset");
        b.handle(remote(6));
        // The server catches up through the store for all its subscribers: this one gets
        // 1..=5 again (at least once when a client moves faster than the feed).
        assert_eq!(items(&sub), ["r0-5", "f6"]);
        let mut alone = broker();
        let sub = open(&mut alone, 1);
        let frame = SubscribeFrame { topic: TopicName::new("t").unwrap(), history: None, since: Some(5), epoch: None };
        alone.handle(Command::Subscribe { conn: 1, frame, reference: None });
        assert_eq!(items(&sub), ["r0-0 (marked)"], "a lone server takes it for another history");
    }
}
