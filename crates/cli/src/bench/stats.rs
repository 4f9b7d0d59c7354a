//! Measurements: latency histograms, CPU time of the bench and of the server, memory
//! figures, all read from `/proc` (Linux; elsewhere they are reported as unknown).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Clock ticks per second of `/proc/*/stat` times. `getconf CLK_TCK` is 100 on every
/// Linux the bench runs on; reading it would need libc.
const CLOCK_TICKS: f64 = 100.0;

/// Longest latency recorded, in microseconds; longer ones are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds (3 significant digits).
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u32>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts.
        let hist = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds");
        Self { hist }
    }

    /// Records a latency given in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        self.hist.saturating_record((ns / 1000).min(MAX_LATENCY_US));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Both have the same bounds, so adding cannot fail; a failure would only lose samples.
        let _ = self.hist.add(&other.hist);
    }

    /// How many samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at `q` (0..=1), in microseconds.
    pub fn quantile(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }

    /// The largest sample, in microseconds.
    pub fn max(&self) -> u64 {
        self.hist.max()
    }

    /// The mean, in microseconds.
    pub fn mean(&self) -> f64 {
        self.hist.mean()
    }
}

/// Per-second rate of `count` over `elapsed` (0 for an empty interval).
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// `utime + stime` of a process, in seconds, from `/proc/<pid>/stat` (`self` when `pid` is `None`).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    parse_stat_ticks(&text).map(|ticks| ticks as f64 / CLOCK_TICKS)
}

/// `utime + stime` in ticks from the text of `/proc/<pid>/stat`. The command name may
/// contain spaces and parentheses, so fields are counted after the last `)`.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After the name: state is field 3 of the full line; utime and stime are 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds all processors spent busy (not idle, not waiting for I/O) since boot,
/// from the `cpu` line of `/proc/stat`.
pub fn system_busy_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_system_busy(&text).map(|ticks| ticks as f64 / CLOCK_TICKS)
}

/// Busy ticks from the text of `/proc/stat`: user, nice, system, irq, softirq, steal
/// (guest time is already inside user).
fn parse_system_busy(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Resident memory of a process in bytes, from `VmRSS` in `/proc/<pid>/status`.
pub fn rss_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    status_kib(&text, "VmRSS:").map(|kib| kib * 1024)
}

fn status_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Kernel memory of all TCP sockets in pages, the `mem` of the `TCP:` line of
/// `/proc/net/sockstat` (both ends of a loopback connection count).
pub fn tcp_mem_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    sockstat_tcp_mem(&text)
}

fn sockstat_tcp_mem(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// The soft limit of open files of this process, from `/proc/self/limits`.
pub fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Cores this process may run on (its affinity mask, so `taskset` counts).
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU used by the bench and, when known, the server over one measured interval.
#[derive(Debug, Clone)]
pub struct CpuUse {
    /// Wall time of the interval.
    pub wall: Duration,
    /// CPU seconds of the bench process.
    pub bench_secs: Option<f64>,
    /// Cores the bench may use.
    pub bench_cores: usize,
    /// CPU seconds of the server process.
    pub server_secs: Option<f64>,
    /// CPU seconds of every other process of the machine (other load skews the figures).
    pub other_secs: Option<f64>,
}

impl CpuUse {
    /// The bench's CPU time as a percentage of the wall time of one core.
    pub fn bench_percent(&self) -> Option<f64> {
        self.bench_secs.map(|s| 100.0 * s / self.wall.as_secs_f64().max(1e-9))
    }

    /// The server's CPU time as a percentage of the wall time of one core.
    pub fn server_percent(&self) -> Option<f64> {
        self.server_secs.map(|s| 100.0 * s / self.wall.as_secs_f64().max(1e-9))
    }

    /// Every other process's CPU time as a percentage of the wall time of one core.
    pub fn other_percent(&self) -> Option<f64> {
        self.other_secs.map(|s| 100.0 * s / self.wall.as_secs_f64().max(1e-9))
    }

    /// Whether the bench used 90% or more of every core it could use: then its figures
    /// may be its own limit rather than the server's.
    pub fn bench_saturated(&self) -> Option<bool> {
        self.bench_secs.map(|s| s >= 0.9 * self.wall.as_secs_f64() * self.bench_cores as f64)
    }
}

/// The start of a measured interval.
#[derive(Debug, Clone)]
pub struct CpuWindow {
    start: Instant,
    bench: Option<f64>,
    server_pid: Option<u32>,
    server: Option<f64>,
    system: Option<f64>,
}

impl CpuWindow {
    /// Starts measuring now.
    pub fn start(server_pid: Option<u32>) -> Self {
        Self {
            start: Instant::now(),
            bench: cpu_seconds(None),
            server_pid,
            server: server_pid.and_then(|pid| cpu_seconds(Some(pid))),
            system: system_busy_seconds(),
        }
    }

    /// Stops measuring now.
    pub fn finish(&self) -> CpuUse {
        let diff = |before: Option<f64>, after: Option<f64>| Some((after? - before?).max(0.0));
        let bench_secs = diff(self.bench, cpu_seconds(None));
        let server_secs = diff(self.server, self.server_pid.and_then(|pid| cpu_seconds(Some(pid))));
        let system = diff(self.system, system_busy_seconds());
        let other_secs = system.map(|all| (all - bench_secs.unwrap_or(0.0) - server_secs.unwrap_or(0.0)).max(0.0));
        CpuUse { wall: self.start.elapsed(), bench_secs, bench_cores: usable_cores(), server_secs, other_secs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_read_after_the_command_name() {
        let line = "1234 (tokio (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_ticks(line), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn proc_files_are_parsed() {
        let status = "Name:\tagentbus\nVmPeak:\t  9000 kB\nVmRSS:\t  4321 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(4321));
        let sockstat = "sockets: used 300\nTCP: inuse 12 orphan 0 tw 3 alloc 14 mem 7\nUDP: inuse 1 mem 2\n";
        assert_eq!(sockstat_tcp_mem(sockstat), Some(7));
        assert!(cpu_seconds(None).is_some(), "this process has a stat file");
        let stat = "cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 5 0 2 500 3 1 1 2 0 0\n";
        assert_eq!(parse_system_busy(stat), Some(25));
        assert!(rss_bytes(None).is_some_and(|b| b > 0));
    }

    #[test]
    fn latencies_merge_and_report_microseconds() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for us in 1..=100u64 {
            a.record_ns(us * 1000);
        }
        b.record_ns(90_000_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 101);
        assert_eq!(a.quantile(0.5), 51);
        assert!(a.max() >= MAX_LATENCY_US, "saturated at the bound");
    }
}
