//! The error every store operation returns.

/// Why a store operation failed, and whose fault it is.
///
/// `InvalidInput` is the caller's fault (retrying the same call fails the same
/// way); `Busy` is transient (retry later); `Corrupt` means a stored row was
/// written by an incompatible or broken writer; `Backend` and `Closed` are
/// failures of the storage itself (disk, permissions, a stopped worker).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The caller passed a value the store cannot hold; nothing was written.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was invalid (`"snapshot version"`, `"usage metrics"`, ...).
        what: &'static str,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// Another connection held the database lock past the busy timeout; retry later.
    #[error("storage is busy (locked by another writer past the busy timeout): {0}")]
    Busy(String),
    /// A stored row could not be decoded; the database holds data this
    /// implementation does not understand.
    #[error("corrupt {table} row {key}: {reason}")]
    Corrupt {
        /// The table (or collection) holding the row.
        table: &'static str,
        /// The row's key, e.g. `task_1 v3` or an event id.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The storage backend failed (I/O error, disk full, permissions, SQL error).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The store is no longer running (its worker thread stopped or panicked).
    #[error("store is closed: {0}")]
    Closed(String),
}
