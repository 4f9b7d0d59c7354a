//! `idle`: opens many connections, each registered under its own agent id and
//! subscribed to one topic, holds them idle for the duration, and reports what they
//! cost: the server's resident memory (with `--server-pid`) and the kernel's TCP
//! socket memory, before and after.
//!
//! One process holds at most its open-file limit of sockets (20,000 here, so about
//! 19,900 connections): more need several bench processes, each with its own
//! `--source-ip` (one source address has about 28,000 ephemeral ports).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::Ctx;
use super::conn::{self, IDLE_READ_BUFFER, Ws};
use super::report::{Report, round1};
use super::stats::{self, CpuWindow};

/// Connections per source address before the next one is used.
const PER_SOURCE: usize = 20_000;

/// Connections being opened at the same time.
const OPEN_PARALLEL: usize = 128;

/// Time left after opening for things to settle before memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// Bytes per page of `/proc/net/sockstat` (4 KiB on the x86-64 and arm64 Linux the
/// bench runs on).
const PAGE: u64 = 4096;

/// The source address of connection `i`: `first` + i / [`PER_SOURCE`]; without
/// `first`, the kernel's choice up to [`PER_SOURCE`] connections, 127.0.0.2… beyond.
fn source_for(i: usize, total: usize, first: Option<Ipv4Addr>) -> Option<IpAddr> {
    let first = match first {
        Some(ip) => ip,
        None if total > PER_SOURCE => Ipv4Addr::new(127, 0, 0, 2),
        None => return None,
    };
    let step = u32::try_from(i / PER_SOURCE).unwrap_or(u32::MAX);
    Some(IpAddr::V4(Ipv4Addr::from(u32::from(first).saturating_add(step))))
}

/// Opens one idle connection and leaves a task holding it.
async fn open_one(
    ctx: &Ctx,
    i: usize,
    source: Option<IpAddr>,
    topic: &str,
    stop: watch::Receiver<bool>,
    dropped: Arc<AtomicU64>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut ws = conn::connect(ctx.target(i), source, IDLE_READ_BUFFER).await?;
    conn::register(&mut ws, &format!("bench-{}-i{i}", ctx.run)).await?;
    conn::subscribe(&mut ws, topic).await?;
    Ok(tokio::spawn(hold(ws, stop, dropped)))
}

/// Holds a connection until `stop`, reading so that the server's pings are answered.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>, dropped: Arc<AtomicU64>) {
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
            },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Runs the scenario with `connections` connections.
pub async fn run(
    ctx: &Arc<Ctx>,
    report: &mut Report,
    connections: usize,
    first: Option<Ipv4Addr>,
) -> anyhow::Result<()> {
    report.param("connections", connections);
    if let Some(ip) = first {
        report.param("source_ip", ip.to_string());
    }
    let topic = format!("bench.idle.{}", ctx.run);
    let server_before = ctx.server_pid.and_then(|pid| stats::rss_bytes(Some(pid)));
    let sock_before = stats::tcp_mem_pages();
    let bench_before = stats::rss_bytes(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let dropped = Arc::new(AtomicU64::new(0));
    // Leaves the duration (and a margin) of the hard cap for holding.
    let open_until = ctx.hard - ctx.duration - Duration::from_secs(5);

    ctx.progress.phase("connect", connections as u64);
    let cpu = CpuWindow::start(ctx.server_pid);
    let start = Instant::now();
    let mut opening = futures_util::stream::iter(0..connections)
        .map(|i| {
            let (topic, stop, dropped) = (topic.as_str(), stop_rx.clone(), dropped.clone());
            async move {
                if Instant::now() >= open_until {
                    anyhow::bail!("out of time for opening connections");
                }
                open_one(ctx, i, source_for(i, connections, first), topic, stop, dropped).await
            }
        })
        .buffer_unordered(OPEN_PARALLEL);
    let (mut holders, mut failed, mut first_error) = (Vec::with_capacity(connections), 0u64, None);
    while let Some(result) = opening.next().await {
        match result {
            Ok(h) => holders.push(h),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        let done = holders.len() as u64 + failed;
        if done.is_multiple_of(64) {
            ctx.progress.set(done, format!("{failed} failed"));
        }
    }
    drop(opening);
    let open_time = start.elapsed();
    let connect_cpu = cpu.finish();
    let opened = holders.len() as u64;

    tokio::time::sleep(SETTLE).await;
    let server_after = ctx.server_pid.and_then(|pid| stats::rss_bytes(Some(pid)));
    let sock_after = stats::tcp_mem_pages();
    let bench_after = stats::rss_bytes(None);

    ctx.progress.timed("hold", ctx.duration);
    let cpu = CpuWindow::start(ctx.server_pid);
    let hold_start = Instant::now();
    let hold_until = (hold_start + ctx.duration).min(ctx.hard);
    while Instant::now() < hold_until {
        tokio::time::sleep(Duration::from_millis(250).min(hold_until.saturating_duration_since(Instant::now()))).await;
        ctx.progress.set(hold_start.elapsed().as_millis() as u64, String::new());
    }
    let hold_cpu = cpu.finish();
    let server_end = ctx.server_pid.and_then(|pid| stats::rss_bytes(Some(pid)));
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), futures_util::future::join_all(holders)).await;
    ctx.progress.finish();

    report.figure("opened", "connections opened", opened, "");
    report.figure("failed", "connections failed", failed, "");
    if let Some(e) = first_error {
        report.note(format!("first failure: {e}"));
    }
    report.figure("dropped_while_idle", "closed by the server while idle", dropped.load(Ordering::Relaxed), "");
    report.figure("open_secs", "time to open all", round1(open_time.as_secs_f64()), "s");
    report.figure("opened_per_sec", "connections opened/s", stats::rate(opened, open_time).round(), "/s");
    per_connection(report, "server_rss", "server RSS", server_before, server_after, opened);
    report.maybe("server_rss_end_bytes", "server RSS after holding", server_end, "B");
    let pages = |p: Option<u64>| p.map(|p| p * PAGE);
    per_connection(report, "tcp_mem", "kernel TCP memory (both ends)", pages(sock_before), pages(sock_after), opened);
    per_connection(report, "bench_rss", "bench RSS", bench_before, bench_after, opened);
    report.cpu("connect", &connect_cpu, Some((opened, "connection")));
    report.cpu("hold", &hold_cpu, None);
    Ok(())
}

/// Adds before, after and (after − before) / n of a memory figure.
fn per_connection(report: &mut Report, key: &str, label: &str, before: Option<u64>, after: Option<u64>, n: u64) {
    report.maybe(&format!("{key}_before_bytes"), &format!("{label} before"), before, "B");
    report.maybe(&format!("{key}_after_bytes"), &format!("{label} after"), after, "B");
    if let (Some(b), Some(a)) = (before, after)
        && n > 0
    {
        let per = (a as f64 - b as f64) / n as f64;
        report.figure(&format!("{key}_per_connection_bytes"), &format!("{label} per connection"), per.round(), "B");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_advance_every_20000_connections() {
        assert_eq!(source_for(5, 100, None), None);
        assert_eq!(source_for(5, 30_000, None), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(source_for(25_000, 30_000, None), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))));
        let first = Some(Ipv4Addr::new(127, 0, 0, 9));
        assert_eq!(source_for(0, 10, first), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))));
    }
}
