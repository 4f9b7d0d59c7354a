//! The SQLite store: the embedded default.

use std::path::Path;

use crate::config::StoreConfig;

use super::memory::MemoryStore;
use super::StoreError;

/// SQLite store (placeholder: backed by memory until the SQLite implementation lands).
pub type SqliteStore = MemoryStoreShim;

/// Placeholder.
pub struct MemoryStoreShim;

impl MemoryStoreShim {
    /// Opens the store in `data`.
    pub fn open(_data: &Path, config: &StoreConfig) -> Result<MemoryStore, StoreError> {
        Ok(MemoryStore::new(config.dedupe_window))
    }
}
