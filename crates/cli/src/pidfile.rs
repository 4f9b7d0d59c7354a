//! The data folder's lock and PID file: one server per data folder, and a record of
//! the running one for `agentbus stop` and `agentbus status`.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What the PID file says of the running server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PidInfo {
    /// Its process id.
    pub pid: u32,
    /// The address it listens on.
    pub listen: String,
    /// When it started, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// Its log file, when it logs to one.
    pub log: Option<PathBuf>,
}

impl PidInfo {
    /// A URL clients on this machine can use.
    pub fn url(&self) -> String {
        match self.listen.strip_prefix("0.0.0.0:") {
            Some(port) => format!("ws://localhost:{port}"),
            None => format!("ws://{}", self.listen),
        }
    }

    /// `http://` for the same address.
    pub fn http_url(&self) -> String {
        self.url().replacen("ws://", "http://", 1)
    }
}

/// The PID file of a data folder.
pub fn pid_path(data: &Path) -> PathBuf {
    data.join("agentbus.pid")
}

/// The log file a background server writes in a data folder.
pub fn log_path(data: &Path) -> PathBuf {
    data.join("agentbus.log")
}

/// Reads the PID file, if there is one.
pub fn read(data: &Path) -> Option<PidInfo> {
    let text = std::fs::read_to_string(pid_path(data)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the PID file.
pub fn write(data: &Path, info: &PidInfo) -> anyhow::Result<()> {
    let path = pid_path(data);
    std::fs::write(&path, serde_json::to_string(info)?).with_context(|| format!("cannot write {}", path.display()))
}

/// Removes the PID file if it still names `pid`.
pub fn remove(data: &Path, pid: u32) {
    if read(data).is_some_and(|i| i.pid == pid) {
        let _ = std::fs::remove_file(pid_path(data));
    }
}

/// Whether a process with this id is alive.
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

/// Holds the data folder for this process: creates it and takes an exclusive lock on
/// `agentbus.lock`, released when the returned file is dropped or the process exits.
pub fn lock(data: &Path) -> anyhow::Result<File> {
    let fail = |what: String| anyhow::anyhow!("cannot open the store at {}: {what}", data.display());
    std::fs::create_dir_all(data).map_err(|e| fail(format!("cannot create the folder: {e}")))?;
    let path = data.join("agentbus.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
    if file.try_lock().is_err() {
        let who = read(data).map(|i| format!(" (PID {})", i.pid)).unwrap_or_default();
        anyhow::bail!("another agentbus server{who} is already using the data folder {}", data.display());
    }
    Ok(file)
}
