//! The one error `serve` reports: why the server could not start or did not stop cleanly.
//!
//! Its own file so that the server's children (the HTTP loop, the telephony wiring) name it
//! without importing their parent.

/// Why the server could not start or did not stop cleanly: a sentence for the operator, which
/// `calldesk serve` prints before it exits non-zero.
#[derive(Debug)]
pub struct ServeError(pub String);

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServeError {}
