//! `agentbus start`, `stop` and `status`: the server in the background, as the original
//! start and stop scripts ran it, with its PID file and log file in the data folder.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::pidfile::{self, PidInfo};
use crate::serve::{ServeArgs, load_config};

/// How long `start` waits for the server to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits for a graceful exit before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Exit code of `status` when no server runs (as LSB init scripts use).
const NOT_RUNNING: u8 = 3;

/// Options of `stop` and `status`.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data folder of the server [default: ./data].
    #[arg(long, env = "AGENTBUS_DATA", default_value = "data")]
    pub data: PathBuf,
}

/// `agentbus start`: runs `agentbus serve` detached from the terminal.
pub fn start(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args)?;
    let data = config.data.clone();
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create the data folder {}", data.display()))?;
    if let Some(info) = pidfile::read(&data).filter(|i| pidfile::alive(i.pid)) {
        bail!("agentbus is already running on {} (PID {}, {})", data.display(), info.pid, info.url());
    }
    let log = config.log.file.clone().unwrap_or_else(|| pidfile::log_path(&data));
    println!("Starting agentbus...");
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open the log file {}", log.display()))?;
    let mut cmd = std::process::Command::new(std::env::current_exe().context("cannot find the agentbus binary")?);
    cmd.arg("serve").arg("--data").arg(&data).arg("--log-file").arg(&log);
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    if let Some(l) = args.listen {
        cmd.arg("--listen").arg(l.to_string());
    }
    if args.ephemeral {
        cmd.arg("--ephemeral");
    }
    if let Some(url) = &args.redis_url {
        cmd.arg("--redis").arg(url);
    }
    if let Some(prefix) = &args.redis_prefix {
        cmd.arg("--redis-prefix").arg(prefix);
    }
    if let Some(l) = &args.log_level {
        cmd.arg("--log-level").arg(l);
    }
    if let Some(f) = args.log_format {
        cmd.arg("--log-format").arg(format!("{f:?}").to_lowercase());
    }
    // Its own process group: Ctrl-C and the closing of this terminal do not reach it.
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).process_group(0);
    let mut child = cmd.spawn().context("cannot start agentbus serve")?;
    let pid = child.id();
    let started = Instant::now();
    let info = loop {
        if let Some(status) = child.try_wait()? {
            bail!("the server exited at start ({status}); see {}:\n{}", log.display(), tail(&log, 5));
        }
        if let Some(info) = pidfile::read(&data).filter(|i| i.pid == pid)
            && http_get(&info, "/healthz").is_ok_and(|(code, _)| code == 200)
        {
            break info;
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            bail!("the server did not become healthy in {:?}; see {}", START_TIMEOUT, log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("agentbus started (PID: {pid})");
    println!("   Log: {}", log.display());
    println!("   URL: {}", info.url());
    Ok(ExitCode::SUCCESS)
}

/// `agentbus stop`: SIGTERM, wait for the graceful exit, SIGKILL if it does not come.
pub fn stop(args: DataArgs) -> anyhow::Result<ExitCode> {
    let Some(info) = pidfile::read(&args.data) else {
        println!("agentbus is not running (no PID file in {})", args.data.display());
        return Ok(ExitCode::SUCCESS);
    };
    let pid = Pid::from_raw(i32::try_from(info.pid).context("invalid PID file")?);
    if !pidfile::alive(info.pid) {
        pidfile::remove(&args.data, info.pid);
        println!("agentbus is not running (removed a stale PID file for PID {})", info.pid);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Stopping agentbus (PID: {})...", info.pid);
    kill(pid, Signal::SIGTERM).with_context(|| format!("cannot signal PID {}", info.pid))?;
    if !wait_exit(info.pid, STOP_TIMEOUT) {
        eprintln!("warning: agentbus did not exit within {}s of SIGTERM; sending SIGKILL", STOP_TIMEOUT.as_secs());
        let _ = kill(pid, Signal::SIGKILL);
        wait_exit(info.pid, Duration::from_secs(5));
    }
    pidfile::remove(&args.data, info.pid);
    println!("agentbus stopped");
    Ok(ExitCode::SUCCESS)
}

/// `agentbus status`: running (exit 0) with PID, URL, uptime and connections, or
/// stopped (exit 3).
pub fn status(args: DataArgs) -> anyhow::Result<ExitCode> {
    let Some(info) = pidfile::read(&args.data).filter(|i| pidfile::alive(i.pid)) else {
        println!("agentbus is stopped");
        return Ok(ExitCode::from(NOT_RUNNING));
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let uptime = Duration::from_secs(now.saturating_sub(info.started_ms) / 1000);
    let connections = http_get(&info, "/metrics")
        .ok()
        .and_then(|(_, body)| {
            body.lines().find_map(|l| l.strip_prefix("agentbus_connections ").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("agentbus is running");
    println!("   PID: {}", info.pid);
    println!("   URL: {}", info.url());
    println!("   Uptime: {}", humantime::format_duration(uptime));
    println!("   Connections: {connections}");
    if let Some(log) = &info.log {
        println!("   Log: {}", log.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while pidfile::alive(pid) {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A minimal HTTP/1.0 GET to the server on this machine: (status, body).
fn http_get(info: &PidInfo, path: &str) -> anyhow::Result<(u16, String)> {
    let host = info.http_url().trim_start_matches("http://").to_owned();
    let addr: SocketAddr = host.to_socket_addrs()?.next().context("no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_owned()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
