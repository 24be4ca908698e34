//! Error types of the library, one enum per layer.

use std::io;

/// An error starting or running the hub.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration was refused; fix it and start again.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// Binding a listener or starting an executor failed (address in use, locked-memory limit
    /// too low for io_uring: raise `ulimit -l`).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A shard's thread ended with a panic or an executor error.
    #[error("shard {shard} failed: {reason}")]
    Shard {
        /// The shard that failed.
        shard: usize,
        /// What it reported.
        reason: String,
    },
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The value is out of range or inconsistent; the text says which.
    #[error("{0}")]
    Invalid(String),
}

/// A broadcast that could not be encoded. Nothing was sent; the caller's data is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastError {
    /// The payload failed to serialize to JSON.
    #[error("payload does not serialize to JSON: {0}")]
    Encode(String),
    /// The message type is empty.
    #[error("message type must not be empty")]
    EmptyType,
}

/// A relay address that is not `redis://HOST:PORT[/prefix]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayUrlError {
    /// Not of the form `redis://HOST:PORT[/prefix]`; write it so.
    #[error("expected redis://HOST:PORT[/prefix]")]
    Form,
    /// The prefix holds a space or a control character; choose another.
    #[error("the prefix must not contain spaces")]
    Prefix,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_stay_small() {
        assert!(std::mem::size_of::<Error>() <= 40);
        assert!(std::mem::size_of::<BroadcastError>() <= 32);
    }
}
