//! `agentbus bench`: a load generator for any agentbus server, like `nats bench`.
//!
//! Each scenario opens its own WebSocket connections to the URL given (loopback only
//! unless `--allow-remote`), drives traffic for `--duration`, and reports throughput,
//! latency percentiles (hdrhistogram), loss and the CPU used by the bench and, with
//! `--server-pid`, by the server. Everything is bounded: each phase ends by count or by
//! time, and the whole run by a hard cap of the duration plus 30 seconds.
//!
//! Files: `conn` (URL, connect, register, subscribe), `frames` (building and scanning
//! frames), `publisher` and `subscriber` (the pipelined halves), `pubsub` (the engine of
//! `fanout`, `rate` and `pairs`), one file per other scenario (`loopback` needs no
//! server: it measures the machine), `stats` and `report`.

mod conn;
mod durable;
mod fanout;
mod frames;
mod idle;
mod loopback;
mod pairs;
mod publisher;
mod pubsub;
mod report;
mod request;
mod stats;
mod subscriber;
mod wire;

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tokio::time::Instant;

use self::conn::Target;
use self::publisher::Pace;
use self::report::{Progress, Report};

/// Added to `--duration` to bound a whole run (setup, draining, replay).
const HARD_CAP_EXTRA: Duration = Duration::from_secs(30);

/// Flags of `agentbus bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// The server's WebSocket URL (loopback only unless --allow-remote), or several
    /// servers of one bus separated by commas: subscribers, publishers and requesters
    /// are spread over them round robin, publishers starting one server after their
    /// subscribers, so messages cross between servers. `--server-pid` then reports one
    /// server's CPU.
    #[arg(long, default_value = "ws://127.0.0.1:3030")]
    pub url: String,
    /// Print one JSON object with every figure instead of the table (and no progress bar).
    #[arg(long)]
    pub json: bool,
    /// The server's process id: report its CPU time (and memory for `idle`) from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds of traffic (or of holding connections for `idle`).
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Content size in bytes [default: 100; 200 for `durable`].
    #[arg(long)]
    pub size: Option<usize>,
    /// `fanout`, `rate`, `loopback`: subscribers of the one topic.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Sends in flight (sent, not yet acked) per publisher.
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
    /// `rate`, `loopback`: messages per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// `pairs`: publisher/subscriber pairs, each on its own topic.
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// `durable`: messages replayed by the new subscriber (at least this many are published).
    #[arg(long, default_value_t = 100_000)]
    pub replay: u64,
    /// `request`: requesting connections (one agent answers them all).
    #[arg(long, default_value_t = 50)]
    pub requesters: usize,
    /// `request`: requests each requester keeps outstanding.
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// `idle`: connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// `idle`: first source address to connect from (each further 20,000 connections use
    /// the next address); by default the kernel's choice, or 127.0.0.2… past 20,000.
    #[arg(long)]
    pub source_ip: Option<Ipv4Addr>,
    /// `loopback`: the CPU to run the sender on (the server's CPU in the other scenarios).
    #[arg(long)]
    pub sender_cpu: Option<usize>,
    /// Allow a URL that is not loopback.
    #[arg(long)]
    pub allow_remote: bool,
}

/// The scenarios.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// One publisher, many subscribers of one topic, as fast as acks allow.
    Fanout,
    /// The fanout topology at a fixed rate: latency and loss.
    Rate,
    /// Many publisher/subscriber pairs, each on its own topic.
    Pairs,
    /// Acked publishes to the store, then a replay of what was stored.
    Durable,
    /// Direct-message round trips to one replying agent.
    Request,
    /// Many idle connections: memory per connection.
    Idle,
    /// The `rate` traffic with no server: a thread writes each message to every
    /// subscriber's socket. The machine's floor under `rate`.
    Loopback,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Rate => "rate",
            Scenario::Pairs => "pairs",
            Scenario::Durable => "durable",
            Scenario::Request => "request",
            Scenario::Idle => "idle",
            Scenario::Loopback => "loopback",
        }
    }
}

/// What every scenario shares.
#[derive(Debug)]
pub struct Ctx {
    /// Where traffic goes: one server, or several servers of one bus (connections are
    /// spread over them, see [`Ctx::target`]).
    pub targets: Vec<Target>,
    /// A random tag that makes this run's topic and agent names unique.
    pub run: String,
    /// The zero of the timestamps carried in contents.
    pub epoch: Instant,
    /// Nothing runs past this instant.
    pub hard: Instant,
    /// Length of the traffic phase.
    pub duration: Duration,
    /// Content size in bytes.
    pub size: usize,
    /// Sends in flight per publisher.
    pub window: usize,
    /// The server's process id, when given.
    pub server_pid: Option<u32>,
    /// The progress bar.
    pub progress: Progress,
}

impl Ctx {
    /// The server for the `i`-th connection of a kind: round robin over the targets.
    pub fn target(&self, i: usize) -> &Target {
        &self.targets[i % self.targets.len()]
    }

    /// Nanoseconds since the bench started.
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// Nanoseconds from the bench's start to `at`.
    pub fn ns_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A report with the parameters every scenario has.
    fn report(&self, scenario: Scenario) -> Report {
        let urls: Vec<&str> = self.targets.iter().map(|t| t.url.as_str()).collect();
        let url = if urls.is_empty() { "none (no server)".to_owned() } else { urls.join(",") };
        let mut r = Report::new(scenario.name(), &url);
        r.param("duration_secs", self.duration.as_secs_f64());
        r.param("size", self.size);
        if let Some(pid) = self.server_pid {
            r.param("server_pid", pid);
        }
        if let Some(load) = stats::load_average() {
            r.param("loadavg_1m_at_start", load);
        }
        r
    }
}

/// Refuses arguments that cannot make a sensible run.
fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.duration == 0 || args.duration > 3600 {
        bail!("--duration must be between 1 and 3600 seconds");
    }
    if args.window == 0 || args.window > 1_000_000 {
        bail!("--window must be between 1 and 1,000,000");
    }
    if args.size.is_some_and(|s| s > 512 * 1024) {
        bail!("--size is limited to 512 KiB (the server's frame limit is 1 MiB)");
    }
    let connections = match args.scenario {
        Scenario::Fanout | Scenario::Rate | Scenario::Loopback => args.subscribers + 1,
        Scenario::Pairs => 2 * args.pairs,
        Scenario::Durable => 2,
        Scenario::Request => args.requesters + 1,
        Scenario::Idle => args.connections,
    };
    if connections < 2 && args.scenario != Scenario::Idle || connections == 0 {
        bail!("the scenario needs at least one connection of each role");
    }
    if matches!(args.scenario, Scenario::Rate | Scenario::Loopback) && args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    if args.scenario == Scenario::Request && args.inflight == 0 {
        bail!("--inflight must be at least 1");
    }
    if let Some(limit) = stats::open_file_limit()
        && connections as u64 + 64 > limit
    {
        bail!(
            "{connections} connections need more than this process's limit of {limit} open files; \
             run several bench processes (each with its own --source-ip) to go further"
        );
    }
    Ok(())
}

/// Runs `agentbus bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    let report = runtime.block_on(async {
        let mut targets = Vec::new();
        if args.scenario != Scenario::Loopback {
            for url in args.url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                targets.push(Target::resolve(url, args.allow_remote).await?);
            }
            anyhow::ensure!(!targets.is_empty(), "no server URL given");
        }
        let duration = Duration::from_secs(args.duration);
        let epoch = Instant::now();
        let default_size = if args.scenario == Scenario::Durable { 200 } else { 100 };
        let ctx = Arc::new(Ctx {
            targets,
            run: format!("{:08x}", fastrand::u32(..)),
            epoch,
            hard: epoch + duration + HARD_CAP_EXTRA,
            duration,
            size: args.size.unwrap_or(default_size),
            window: args.window,
            server_pid: args.server_pid,
            progress: Progress::new(args.json),
        });
        if let Some(pid) = args.server_pid
            && stats::cpu_seconds(Some(pid)).is_none()
        {
            bail!("no process {pid} to measure (--server-pid)");
        }
        let cap = ctx.hard + Duration::from_secs(5);
        let ran = tokio::time::timeout_at(cap, scenario(&ctx, &args)).await;
        ctx.progress.finish();
        ran.context("the run passed its hard time cap")?
    });
    // Idle holders and closing connections need not finish: the process is exiting.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let report = report?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the chosen scenario.
async fn scenario(ctx: &Arc<Ctx>, args: &BenchArgs) -> anyhow::Result<Report> {
    let mut report = ctx.report(args.scenario);
    match args.scenario {
        Scenario::Fanout => fanout::run(ctx, &mut report, args.subscribers, Pace::Max).await?,
        Scenario::Rate => fanout::run(ctx, &mut report, args.subscribers, Pace::Rate(args.rate)).await?,
        Scenario::Pairs => pairs::run(ctx, &mut report, args.pairs).await?,
        Scenario::Durable => durable::run(ctx, &mut report, args.replay).await?,
        Scenario::Request => request::run(ctx, &mut report, args.requesters, args.inflight).await?,
        Scenario::Idle => idle::run(ctx, &mut report, args.connections, args.source_ip).await?,
        Scenario::Loopback => loopback::run(ctx, &mut report, args.subscribers, args.rate, args.sender_cpu).await?,
    }
    Ok(report)
}
