//! Wiring: opens the store, starts the call manager and the simulated switch, and serves
//! InteractionService, health and reflection on one port until told to stop.

use std::net::SocketAddr;

use crate::config::Config;

/// Why the server could not start or did not stop cleanly.
#[derive(Debug)]
pub struct ServeError(pub String);

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServeError {}

/// A server that is up and answering on `local_addr()`.
pub struct RunningServer {
    local_addr: SocketAddr,
}

impl RunningServer {
    /// The address the server answers on (the real port when `--listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops gracefully: health NOT_SERVING, open watch streams end with UNAVAILABLE,
    /// in-flight unary calls finish, the store is flushed.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        todo!()
    }
}

/// Starts a server; returns once it is listening.
pub async fn start(_config: Config) -> Result<RunningServer, ServeError> {
    todo!()
}

/// `calldesk serve`: starts, prints `calldesk listening on ADDR` on stdout, and runs until
/// SIGTERM or SIGINT, then shuts down gracefully.
pub async fn serve(_config: Config) -> Result<(), ServeError> {
    todo!()
}
