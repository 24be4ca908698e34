//! Error types of the library, one enum per layer.

use std::io;

/// An error starting or running the hub.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration was refused; fix it and start again.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// Another process listens on the port already: another hub (one hub per port and host,
    /// so that it keeps all its clients) or another program.
    #[error("{0}; stop it, or choose another --listen")]
    AddressInUse(Box<str>),
    /// Binding a listener or starting an executor failed (locked-memory limit too low for
    /// io_uring: raise `ulimit -l`).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The TLS certificate or key cannot be used (the message names the file and the fault,
    /// never the key's content).
    #[error("TLS: {0}")]
    Tls(Box<crate::tls_config::TlsLoadError>),
    /// A shard's executor failed to start or ended with an error.
    #[error("shard {shard} failed: {cause}")]
    Shard {
        /// The shard that failed.
        shard: usize,
        /// What happened to it.
        #[source]
        cause: ShardFailure,
    },
}

impl From<crate::tls_config::TlsLoadError> for Error {
    fn from(e: crate::tls_config::TlsLoadError) -> Self {
        Self::Tls(Box::new(e))
    }
}

/// What happened to a shard that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardFailure {
    /// Its executor could not start (io_uring refused: raise `ulimit -l`; or the core is
    /// not usable).
    #[error("its executor could not start: {0}")]
    Start(#[source] io::Error),
    /// Its executor started but did not report ready in time (an overloaded machine).
    #[error("its executor did not report ready in time")]
    NotReady,
    /// Its thread ended with an error or a panic.
    #[error("its thread ended abnormally: {0}")]
    Ended(#[source] io::Error),
}

/// A configuration value that cannot be used; fix the named field and start again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration that must be above zero is zero.
    #[error("{0} must be above zero")]
    ZeroDuration(&'static str),
    /// A size or count is below its minimum.
    #[error("{field} must be at least {min}")]
    TooSmall {
        /// The field.
        field: &'static str,
        /// Its smallest value.
        min: usize,
    },
    /// A token is empty or longer than 4096 bytes.
    #[error("the {0} token must be 1 to 4096 bytes")]
    TokenLength(&'static str),
    /// The WebSocket path does not start with `/`.
    #[error("ws_path must start with '/'")]
    WsPath,
    /// The core list is empty.
    #[error("the core list is empty")]
    NoCores,
    /// More cores are asked for than the machine has.
    #[error("{asked} cores asked, {available} available")]
    TooManyCores {
        /// Cores asked for.
        asked: usize,
        /// Cores available.
        available: usize,
    },
    /// A listed core is not available to this process.
    #[error("core {0} is not available")]
    UnknownCore(usize),
    /// The deflate level is not 1 to 9.
    #[error("compression_level must be 1 to 9, not {0}")]
    CompressionLevel(u32),
}

/// A broadcast that could not be encoded. Nothing was sent; the caller's data is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastError {
    /// The payload failed to serialize to JSON.
    #[error("payload does not serialize to JSON: {0}")]
    Encode(#[source] Box<simd_json::Error>),
    /// Raw data given to `publish_raw` is not one JSON value.
    #[error("data is not one JSON value: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The message type is empty.
    #[error("message type must not be empty")]
    EmptyType,
    /// A batch with no message: there is nothing to publish.
    #[error("a batch of messages must hold at least one")]
    EmptyBatch,
}

/// A relay address that is not `redis[s]://[[USER]:PASSWORD@]HOST:PORT[/prefix][?ca=PATH]`.
/// No variant carries any part of the address: it may hold a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayUrlError {
    /// Not of the form `redis[s]://[[USER]:PASSWORD@]HOST:PORT[/prefix]`; write it so.
    #[error(
        "expected redis://HOST:PORT[/prefix], with [USER]:PASSWORD@ before the host to \
         authenticate (percent-encode / ? % in them) and rediss:// for TLS"
    )]
    Form,
    /// The prefix holds a space or a control character; choose another.
    #[error("the prefix must not contain spaces")]
    Prefix,
    /// Credentials without a password (`USER@`, `USER:@`): Redis needs one.
    #[error("the credentials are USER:PASSWORD@ or :PASSWORD@, with a password")]
    Credentials,
    /// A `%` not followed by two hex digits, or escapes that decode to no UTF-8 text.
    #[error("a bad %-escape in the credentials or ca= (%XX, two hex digits, UTF-8 text)")]
    Escape,
    /// A query other than one `?ca=PATH` on a `rediss://` URL.
    #[error("the only parameter is ca=PATH (the roots to trust), and only after rediss://")]
    Query,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_stay_small() {
        assert!(std::mem::size_of::<Error>() <= 32);
        assert!(std::mem::size_of::<ConfigError>() <= 32);
        assert!(std::mem::size_of::<BroadcastError>() <= 16);
    }
}
