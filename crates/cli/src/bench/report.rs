//! What a scenario found: a list of figures printed as a table for people or as one
//! JSON object for scripts, and the progress bar shown while it runs.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::stats::{CpuUse, Latency};

/// Shortest interval whose CPU percentages are reported: CPU times come in 10 ms ticks.
const MIN_CPU_WALL: Duration = Duration::from_millis(500);

/// One figure of a report.
#[derive(Debug, Clone)]
struct Figure {
    /// Its key in the JSON output.
    key: String,
    /// Its label in the table.
    label: String,
    /// The value.
    value: Value,
    /// The unit shown after the value in the table.
    unit: &'static str,
}

/// The figures of one run of one scenario.
#[derive(Debug, Clone)]
pub struct Report {
    scenario: &'static str,
    url: String,
    params: BTreeMap<&'static str, Value>,
    figures: Vec<Figure>,
    notes: Vec<String>,
}

impl Report {
    /// An empty report of `scenario` run against `url`.
    pub fn new(scenario: &'static str, url: &str) -> Self {
        Self { scenario, url: url.to_owned(), params: BTreeMap::new(), figures: Vec::new(), notes: Vec::new() }
    }

    /// Records a parameter of the run.
    pub fn param(&mut self, key: &'static str, value: impl Into<Value>) {
        self.params.insert(key, value.into());
    }

    /// Adds a figure.
    pub fn figure(&mut self, key: &str, label: &str, value: impl Into<Value>, unit: &'static str) {
        self.figures.push(Figure { key: key.to_owned(), label: label.to_owned(), value: value.into(), unit });
    }

    /// Adds a figure when it is known.
    pub fn maybe<V: Into<Value>>(&mut self, key: &str, label: &str, value: Option<V>, unit: &'static str) {
        if let Some(v) = value {
            self.figure(key, label, v, unit);
        }
    }

    /// Adds a remark printed under the table (and listed under `notes` in JSON).
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Adds p50, p99, p99.9, max and mean of `latency` as `<key>_p50_us`, ….
    pub fn latency(&mut self, key: &str, label: &str, latency: &Latency) {
        self.figure(&format!("{key}_samples"), &format!("{label} samples"), latency.count(), "");
        if latency.count() == 0 {
            return;
        }
        for (suffix, name, q) in [("p50", "p50", 0.5), ("p99", "p99", 0.99), ("p999", "p99.9", 0.999)] {
            self.figure(&format!("{key}_{suffix}_us"), &format!("{label} {name}"), latency.quantile(q), "µs");
        }
        self.figure(&format!("{key}_max_us"), &format!("{label} max"), latency.max(), "µs");
        self.figure(&format!("{key}_mean_us"), &format!("{label} mean"), round1(latency.mean()), "µs");
    }

    /// Adds the CPU figures of `cpu`; with `per` = (count, what), also the server's CPU
    /// per unit of work (e.g. per delivery) in microseconds.
    pub fn cpu(&mut self, prefix: &str, cpu: &CpuUse, per: Option<(u64, &str)>) {
        let p = |k: &str| if prefix.is_empty() { k.to_owned() } else { format!("{prefix}_{k}") };
        let l = |k: &str| if prefix.is_empty() { k.to_owned() } else { format!("{prefix}: {k}") };
        self.figure(&p("wall_secs"), &l("measured wall time"), round3(cpu.wall.as_secs_f64()), "s");
        self.maybe(&p("bench_cpu_secs"), &l("bench CPU time"), cpu.bench_secs.map(round3), "s");
        self.maybe(&p("server_cpu_secs"), &l("server CPU time"), cpu.server_secs.map(round3), "s");
        if cpu.wall < MIN_CPU_WALL {
            let what = if prefix.is_empty() { "the run" } else { prefix };
            self.note(format!(
                "{what} lasted {:.3} s: too short for CPU percentages (CPU times come in 10 ms ticks)",
                cpu.wall.as_secs_f64()
            ));
            return;
        }
        self.maybe(&p("bench_cpu_percent"), &l("bench CPU"), cpu.bench_percent().map(round1), "% of a core");
        self.figure(&p("bench_cores"), &l("bench usable cores"), cpu.bench_cores, "");
        self.maybe(&p("bench_saturated"), &l("bench saturated (≥90% of its cores)"), cpu.bench_saturated(), "");
        self.maybe(&p("server_cpu_percent"), &l("server CPU"), cpu.server_percent().map(round1), "% of a core");
        let other = cpu.other_percent().map(round1);
        self.maybe(&p("other_cpu_percent"), &l("other processes' CPU"), other, "% of a core");
        if let (Some((count, what)), Some(secs)) = (per, cpu.server_secs)
            && count > 0
        {
            let us = secs * 1e6 / count as f64;
            let (key, label) =
                (p(&format!("server_cpu_per_{what}_us")), l(&format!("server CPU per {}", what.replace('_', " "))));
            self.figure(&key, &label, round3(us), "µs");
        }
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let results: serde_json::Map<String, Value> =
            self.figures.iter().map(|f| (f.key.clone(), f.value.clone())).collect();
        json!({
            "scenario": self.scenario,
            "url": self.url,
            "params": self.params,
            "results": results,
            "notes": self.notes,
        })
    }

    /// The report as a table for people.
    pub fn to_table(&self) -> String {
        let mut out = format!("agentbus bench {}  {}\n", self.scenario, self.url);
        let params: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={}", plain(v))).collect();
        out.push_str(&format!("  {}\n\n", params.join("  ")));
        let width = self.figures.iter().map(|f| f.label.chars().count()).max().unwrap_or(0);
        for f in &self.figures {
            let pad = width - f.label.chars().count();
            out.push_str(&format!("  {}{}  {:>14} {}\n", f.label, " ".repeat(pad), human(&f.value), f.unit));
        }
        for n in &self.notes {
            out.push_str(&format!("\n  note: {n}"));
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
        out
    }
}

/// `x` rounded to one decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `x` rounded to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Thousands separators for integers, at most three decimals for the rest.
fn human(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_u64() || n.is_i64() => group(&n.to_string()),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if x.abs() >= 1000.0 { group(&format!("{x:.0}")) } else { format!("{}", round3(x)) }
        }
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "no".to_owned(),
        other => plain(other),
    }
}

fn group(digits: &str) -> String {
    let (sign, digits) = digits.strip_prefix('-').map_or(("", digits), |d| ("-", d));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// The progress bar on stderr (hidden with `--json` or when stderr is not a terminal).
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar, or a hidden one.
    pub fn new(hidden: bool) -> Self {
        let bar = if hidden { ProgressBar::hidden() } else { ProgressBar::new(0) };
        Self { bar }
    }

    /// Starts a phase that counts up to `len` (items or milliseconds).
    pub fn phase(&self, name: &str, len: u64) {
        let template = format!("{{spinner}} {name:<10} [{{bar:30}}] {{pos}}/{{len}} {{msg}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.bar.set_message("");
    }

    /// Starts a timed phase of `length`, shown in milliseconds.
    pub fn timed(&self, name: &str, length: Duration) {
        self.phase(&format!("{name} (ms)"), length.as_millis() as u64);
    }

    /// Moves the bar.
    pub fn set(&self, pos: u64, message: String) {
        self.bar.set_position(pos);
        self.bar.set_message(message);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A count per second for the progress line, like `1.23M/s`.
pub fn short_rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2}M/s", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1}k/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_for_people() {
        assert_eq!(human(&json!(1234567)), "1,234,567");
        assert_eq!(human(&json!(-1000)), "-1,000");
        assert_eq!(human(&json!(999)), "999");
        assert_eq!(human(&json!(12.34567)), "12.346");
        assert_eq!(human(&json!(1_500_000.4)), "1,500,000");
        assert_eq!(human(&json!(true)), "yes");
        assert_eq!(short_rate(1_234_000.0), "1.23M/s");
    }

    #[test]
    fn reports_become_json_and_tables() {
        let mut r = Report::new("fanout", "ws://127.0.0.1:1");
        r.param("subscribers", 100);
        r.figure("deliveries", "deliveries", 1000u64, "");
        let mut l = Latency::new();
        l.record_ns(5_000);
        r.latency("latency", "latency", &l);
        let j = r.to_json();
        assert_eq!(j["results"]["deliveries"], json!(1000));
        assert_eq!(j["results"]["latency_p99_us"], json!(5));
        assert_eq!(j["params"]["subscribers"], json!(100));
        assert!(r.to_table().contains("latency p99.9"));
    }
}
