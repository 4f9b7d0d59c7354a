//! `agentbus serve`: configuration from flags, `AGENTBUS_*` variables and a TOML file,
//! logging, signals, and the server itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentbus_server::Config;
use anyhow::Context;
use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::pidfile;

/// Flags of `agentbus serve` (each also an `AGENTBUS_*` variable). Flags win over
/// variables, variables over the config file, the file over the defaults.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// TOML configuration file (default: ./agentbus.toml when it exists).
    #[arg(long, env = "AGENTBUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:3030].
    #[arg(long, env = "AGENTBUS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data folder: the store, PID and log files [default: ./data].
    #[arg(long, env = "AGENTBUS_DATA")]
    pub data: Option<PathBuf>,
    /// Keep everything in memory; nothing survives a restart.
    #[arg(long, env = "AGENTBUS_EPHEMERAL")]
    pub ephemeral: bool,
    /// Keep history in Redis, shared with every server using the same Redis and prefix
    /// (redis://host:port/db), instead of SQLite in the data folder.
    #[arg(long = "redis", env = "AGENTBUS_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key: servers with the same Redis and prefix form one bus [default: agentbus].
    #[arg(long, env = "AGENTBUS_REDIS_PREFIX", value_name = "NAME")]
    pub redis_prefix: Option<String>,
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter) [default: info].
    #[arg(long, env = "AGENTBUS_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "AGENTBUS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Append logs to this file instead of standard error.
    #[arg(long, env = "AGENTBUS_LOG_FILE")]
    pub log_file: Option<PathBuf>,
}

/// How log lines look.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line.
    Json,
}

/// Reads the configuration: defaults, then the file, then variables and flags.
pub fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let default_file = Path::new("agentbus.toml");
    let file = match &args.config {
        Some(p) => Some(p.clone()),
        None if default_file.exists() => Some(default_file.to_path_buf()),
        None => None,
    };
    let mut config = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<Config>(&text).with_context(|| format!("invalid configuration in {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data) = &args.data {
        config.data = data.clone();
    }
    if args.ephemeral {
        config.ephemeral = true;
    }
    if let Some(url) = &args.redis_url {
        let prefix =
            config.redis.as_ref().map_or_else(agentbus_server::config::default_redis_prefix, |r| r.prefix.clone());
        config.redis = Some(agentbus_server::config::RedisConfig { url: url.clone(), prefix });
    }
    if let Some(prefix) = &args.redis_prefix {
        match config.redis.as_mut() {
            Some(r) => r.prefix = prefix.clone(),
            None => anyhow::bail!("--redis-prefix needs --redis (or a [redis] section)"),
        }
    }
    if let Some(level) = &args.log_level {
        config.log.level = Some(level.clone());
    }
    if let Some(format) = args.log_format {
        config.log.format = Some(format!("{format:?}").to_lowercase());
    }
    if let Some(file) = &args.log_file {
        config.log.file = Some(file.clone());
    }
    Ok(config)
}

/// Sets up logging from the `[log]` settings: a level or filter, text or JSON, standard
/// error or a file (appended to).
pub fn init_logging(log: &agentbus_server::config::LogConfig) -> anyhow::Result<()> {
    let level = log.level.as_deref().unwrap_or("info");
    let filter = EnvFilter::try_new(level).with_context(|| format!("invalid log level {level:?}"))?;
    let format = match log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => anyhow::bail!("invalid log format {other:?}: use text or json"),
    };
    let writer = match &log.file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(file))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => {
            let ansi = log.file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).init()
        }
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Runs `agentbus serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args)?;
    init_logging(&config.log)?;
    let _lock = pidfile::lock(&config.data)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async move {
        let store = match agentbus_server::open_store(&config) {
            Ok(store) => store,
            Err(e) => anyhow::bail!("{e}"),
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let pid = std::process::id();
        let started_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let info = pidfile::PidInfo { pid, listen: addr.to_string(), started_ms, log: config.log.file.clone() };
        pidfile::write(&config.data, &info)?;
        let where_ = match (&config.redis, config.ephemeral) {
            (Some(r), _) => format!("redis {} (prefix {})", agentbus_server::store::redis::redact(&r.url), r.prefix),
            (None, true) => "memory (ephemeral)".to_owned(),
            (None, false) => config.data.display().to_string(),
        };
        // Registered before the line that says the server is up (see `shutdown_signal`).
        let stop = crate::signals::shutdown_signal();
        let shutdown = async move {
            stop.await;
            tracing::info!("signal received: shutting down");
        };
        tracing::info!(%addr, store = %where_, pid, "agentbus {} listening on ws://{addr}", env!("CARGO_PKG_VERSION"));
        println!("agentbus listening on {addr}");
        let data = config.data.clone();
        let served = agentbus_server::serve_with_store(config, listener, store, shutdown).await;
        pidfile::remove(&data, pid);
        served?;
        Ok(ExitCode::SUCCESS)
    })
}
