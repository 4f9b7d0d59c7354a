//! `loopback`: what the machine itself costs under `rate`, with no server. A sender
//! thread, pinned with `--sender-cpu` as a server would be, writes each message to every
//! subscriber's socket in turn at `--rate` messages per second, as many bytes as the
//! frame a server sends for that content; the bench's subscribers read and time them as
//! in `rate`, from the moment each message was due. Behind time, it writes every message
//! due in one write per socket, as a server writes what queued for a subscriber. It does
//! nothing else (no reading, parsing, storing or scheduling), so its latency percentiles
//! and CPU per delivery are the floor under any server's `rate` figures on the same
//! machine.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Ctx;
use super::report::{Report, round3};
use super::stats::{CpuWindow, Latency, rate};

/// Bytes a server adds around a content of `--size` bytes in a `message` frame of the
/// `rate` scenario (type, topic, id, timestamp, sender, offset, WebSocket header).
pub const FRAME_OVERHEAD: usize = 160;

/// A write that cannot finish in this long means the readers are gone or stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages written at once to a socket when the sender is behind, at most.
const MAX_PER_WRITE: u64 = 256;

/// Bytes read at once by a subscriber.
const READ_CHUNK: usize = 64 * 1024;

/// What the sender did.
struct Sent {
    /// Messages written to every socket.
    messages: u64,
    /// Rounds of writes (one write per socket each): fewer than `messages` when the
    /// sender fell behind and wrote several messages at once.
    writes: u64,
    /// CPU time of the sender thread while sending, when the kernel reports it.
    cpu: Option<Duration>,
    /// Why the sender stopped early, if it did.
    failure: Option<String>,
}

/// What one subscriber read.
#[derive(Default)]
struct Read {
    received: u64,
    latency: Latency,
    last_receive: Option<Instant>,
    failure: Option<String>,
}

/// Runs the scenario: `subscribers` sockets, `rate` messages per second, the sender on
/// `sender_cpu` when given.
pub async fn run(
    ctx: &Arc<Ctx>,
    report: &mut Report,
    subscribers: usize,
    per_sec: u64,
    sender_cpu: Option<usize>,
) -> anyhow::Result<()> {
    let len = (ctx.size + FRAME_OVERHEAD).max(8);
    report.param("subscribers", subscribers);
    report.param("rate", per_sec);
    report.param("write_bytes", len);
    if let Some(cpu) = sender_cpu {
        report.param("sender_cpu", cpu);
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot listen on loopback")?;
    let addr = listener.local_addr()?;
    let setup = Instant::now();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sender = {
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("bench-sender".into())
            .spawn(move || send(&listener, subscribers, per_sec, sender_cpu, len, &ctx, ready_tx))
            .context("cannot start the sender thread")?
    };
    ready_rx.await.context("the sender stopped before sending")??;
    let mut readers = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let tcp = TcpStream::connect(addr).await.context("cannot connect to the sender")?;
        tcp.set_nodelay(true)?;
        readers.push(tokio::spawn(read(tcp, len, ctx.clone())));
    }
    // The sender starts as soon as it has accepted every socket, that is, now.
    report.figure("setup_secs", "connect time", round3(setup.elapsed().as_secs_f64()), "s");
    let window = CpuWindow::start(None);
    let first_send = Instant::now();
    let sent = tokio::task::spawn_blocking(move || sender.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?;
    let mut all = Read::default();
    for reader in readers {
        let r = reader.await?;
        all.received += r.received;
        all.latency.merge(&r.latency);
        all.last_receive = all.last_receive.max(r.last_receive);
        all.failure = all.failure.or(r.failure);
    }
    let mut cpu = window.finish();
    let expected = sent.messages * subscribers as u64;
    let span = all.last_receive.map_or(Duration::ZERO, |t| t.saturating_duration_since(first_send));
    report.figure("sent", "messages sent (to every subscriber)", sent.messages, "");
    let per_write = sent.messages as f64 / sent.writes.max(1) as f64;
    report.figure("messages_per_write", "messages per write", round3(per_write), "");
    report.figure("deliveries", "deliveries received", all.received, "");
    report.figure("expected_deliveries", "deliveries expected", expected, "");
    report.figure("loss", "loss (expected − received)", expected as i64 - all.received as i64, "");
    report.figure("deliveries_per_sec", "deliveries/s", rate(all.received, span).round(), "/s");
    report.latency("latency", "due→deliver", &all.latency);
    if let Some(failure) = sent.failure.or(all.failure) {
        report.note(format!("ended early: {failure}"));
    }
    // The sender thread plays the server: its CPU is reported as the server's.
    if let (Some(sender), Some(bench)) = (sent.cpu, cpu.bench_secs) {
        cpu.server_secs = Some(sender.as_secs_f64());
        cpu.bench_secs = Some((bench - sender.as_secs_f64()).max(0.0));
        report.note("\"server\" CPU is the sender thread's; \"bench\" CPU is the readers'");
    }
    report.cpu("", &cpu, Some((all.received, "delivery")));
    Ok(())
}

/// The sender thread: moves to `cpu` (saying through `ready` whether it could), accepts
/// `subscribers` sockets, then writes `len`-byte messages to each in turn, `per_sec`
/// times a second for the run's duration, and closes them.
fn send(
    listener: &TcpListener,
    subscribers: usize,
    per_sec: u64,
    cpu: Option<usize>,
    len: usize,
    ctx: &Ctx,
    ready: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
) -> Sent {
    let mut sent = Sent { messages: 0, writes: 0, cpu: None, failure: None };
    let pinned = cpu.map_or(Ok(()), pin_to);
    let ok = pinned.is_ok();
    let _ = ready.send(pinned);
    if !ok {
        return sent;
    }
    let mut sockets = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let accepted = listener.accept().and_then(|(tcp, _)| {
            tcp.set_nodelay(true)?;
            tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
            Ok(tcp)
        });
        match accepted {
            Ok(tcp) => sockets.push(tcp),
            Err(e) => {
                sent.failure = Some(format!("accept failed: {e}"));
                return sent;
            }
        }
    }
    let interval_ns = (1_000_000_000 / per_sec.max(1)).max(1);
    let total = u64::try_from(ctx.duration.as_nanos()).unwrap_or(u64::MAX) / interval_ns;
    let start = Instant::now();
    let due = |i: u64| start + Duration::from_nanos(interval_ns.saturating_mul(i));
    let mut batch = Vec::new();
    let cpu_before = thread_cpu();
    while sent.messages < total && Instant::now() < ctx.hard {
        let next = due(sent.messages);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Every message due by now goes out in one write per socket, as a server that
        // has fallen behind writes what has queued for a subscriber at once. Each is
        // stamped with the time it was due: a late start (a late wake, or the previous
        // writes still going) counts, as a publish waiting for a busy server counts in
        // `rate`.
        let elapsed = u64::try_from(Instant::now().saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX);
        let upto = (elapsed / interval_ns).saturating_add(1).clamp(sent.messages + 1, total);
        let upto = upto.min(sent.messages + MAX_PER_WRITE);
        batch.clear();
        for i in sent.messages..upto {
            let at = batch.len();
            batch.resize(at + len, b'x');
            batch[at..at + 8].copy_from_slice(&ctx.ns_at(due(i)).to_le_bytes());
        }
        if let Err(e) = sockets.iter_mut().try_for_each(|s| s.write_all(&batch)) {
            sent.failure = Some(format!("write failed: {e}"));
            break;
        }
        sent.messages = upto;
        sent.writes += 1;
    }
    sent.cpu = thread_cpu().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    sent
}

/// One subscriber: reads `len`-byte messages until the sender closes the socket.
async fn read(mut tcp: TcpStream, len: usize, ctx: Arc<Ctx>) -> Read {
    let mut r = Read::default();
    let mut buf = vec![0u8; READ_CHUNK.max(2 * len)];
    let mut filled = 0;
    loop {
        let n = match tokio::time::timeout_at(ctx.hard, tcp.read(&mut buf[filled..])).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                r.failure = Some(format!("read failed: {e}"));
                break;
            }
            Err(_) => {
                r.failure = Some("the run passed its hard time cap".to_owned());
                break;
            }
        };
        filled += n;
        // Messages of one read arrived together: one clock reading serves them all.
        let now = Instant::now();
        let now_ns = ctx.ns_at(now);
        let whole = filled / len * len;
        for message in buf[..whole].chunks_exact(len) {
            let mut stamp = [0u8; 8];
            stamp.copy_from_slice(&message[..8]);
            r.latency.record_ns(now_ns.saturating_sub(u64::from_le_bytes(stamp)));
            r.received += 1;
            r.last_receive = Some(now);
        }
        buf.copy_within(whole..filled, 0);
        filled -= whole;
    }
    r
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).with_context(|| format!("no CPU {cpu} (--sender-cpu)"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("cannot run the sender on CPU {cpu} (--sender-cpu)"))
}

/// CPU time of the calling thread so far, from `/proc/thread-self/schedstat` (Linux).
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}
