//! tonic's own refusals, worded as the contract says.
//!
//! tonic refuses some requests before any handler runs, with codes the contract words
//! differently:
//!
//! - a request message over `max_decoding_message_size` is OUT_OF_RANGE; the contract (and
//!   gRPC's own status-code guide) says RESOURCE_EXHAUSTED;
//! - a request it cannot decode is INTERNAL: protobuf that does not parse (tonic_prost's
//!   decoder, also that of health and reflection), a body that ends inside a gRPC frame, a
//!   compression flag other than 0 and 1, a compressed message without a `grpc-encoding`, no
//!   message at all. INTERNAL tells a client that the operation may have happened; none of
//!   these reached a handler, so the contract says INVALID_ARGUMENT, with a message saying what
//!   could not be decoded.
//!
//! [`TonicStatuses`] rewrites those statuses, recognised by tonic's (and prost's) words, in the
//! response headers: tonic decodes the request of a unary call or a server stream before the
//! handler runs and answers a failure trailers-only. (Reflection, the one bidirectional
//! stream, hands decode errors to its handler, which ends the stream with OK.) calldesk's
//! handlers never answer INTERNAL or OUT_OF_RANGE with these words, so nothing of theirs is
//! rewritten. Done here rather than in calldesk's codec
//! (`api/codec.rs`), which the client stubs share: there an undecodable message is the
//! server's response, and INTERNAL is right. tests/malformed.rs pins every case, so a tonic
//! that words them differently fails there.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

/// The largest request message calldesk decodes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Rewrites tonic's OUT_OF_RANGE for oversized requests to RESOURCE_EXHAUSTED, and its
/// INTERNAL for undecodable ones to INVALID_ARGUMENT; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct TonicStatuses;

impl<S> Layer<S> for TonicStatuses {
    type Service = TonicStatusesService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TonicStatusesService { inner }
    }
}

/// See [`TonicStatuses`].
#[derive(Debug, Clone)]
pub struct TonicStatusesService<S> {
    inner: S,
}

/// The status the contract gives to tonic's `code` and decoded `message`, if it words it
/// differently.
fn contract_status(code: &[u8], message: &str) -> Option<tonic::Status> {
    const OUT_OF_RANGE: &[u8] = b"11";
    const INTERNAL: &[u8] = b"13";
    let undecodable = |what: String| Some(tonic::Status::invalid_argument(what));
    match code {
        OUT_OF_RANGE if message.starts_with("Error, decoded message length too large") => Some(
            tonic::Status::resource_exhausted("request message over the 64 KiB limit"),
        ),
        INTERNAL => {
            if let Some(what) = message.strip_prefix("failed to decode Protobuf message: ") {
                // prost names the field, never its value: "StartCallRequest.phone_number:
                // invalid string value: data is not UTF-8 encoded".
                undecodable(format!("the request message could not be decoded: {what}"))
            } else if message == "Unexpected EOF decoding stream." {
                undecodable(
                    "the request message is truncated: the body ended inside a gRPC frame".into(),
                )
            } else if let Some(rest) = message
                .strip_prefix("protocol error: received message with invalid compression flag: ")
            {
                let flag: String = rest.chars().take_while(char::is_ascii_digit).collect();
                undecodable(format!(
                    "the request message could not be decoded: its gRPC frame has compression \
                     flag {flag}; valid flags are 0 and 1"
                ))
            } else if message.starts_with(
                "protocol error: received message with compressed-flag but no grpc-encoding",
            ) {
                undecodable(
                    "the request message could not be decoded: its gRPC frame is flagged \
                     compressed, but no grpc-encoding names a compression"
                        .into(),
                )
            } else if message == "Missing request message." {
                undecodable("no request message: the request body has no gRPC frame".into())
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Rewrites the gRPC status in `map` (headers or trailers) if the contract words it otherwise.
fn rewrite(map: &mut HeaderMap) {
    let Some(code) = map.get("grpc-status") else {
        return;
    };
    let code = code.as_bytes();
    if code != b"11" && code != b"13" {
        return;
    }
    let message = map
        .get("grpc-message")
        .map(|m| super::trace::percent_decode(m.as_bytes()))
        .unwrap_or_default();
    if let Some(status) = contract_status(code, &message) {
        map.remove("grpc-message");
        // Only fails on a message that is not a valid header value; ours are plain ASCII.
        let _ = status.add_header(map);
    }
}

impl<S, B, R> Service<Request<B>> for TonicStatusesService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            rewrite(response.headers_mut());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(code: &str, message: &str) -> (String, String) {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", code.parse().unwrap());
        map.insert("grpc-message", message.replace(' ', "%20").parse().unwrap());
        rewrite(&mut map);
        (
            map["grpc-status"].to_str().unwrap().to_owned(),
            super::super::trace::percent_decode(map["grpc-message"].as_bytes()),
        )
    }

    #[test]
    fn only_tonics_own_words_are_rewritten() {
        assert_eq!(
            rewritten("13", "Missing request message.").0,
            "3",
            "tonic's INTERNAL for no message"
        );
        assert_eq!(
            rewritten("13", "protocol error: received message with invalid compression flag: 7 (valid flags are 0 and 1), while sending request"),
            (
                "3".to_owned(),
                "the request message could not be decoded: its gRPC frame has compression flag 7; valid flags are 0 and 1".to_owned()
            )
        );
        assert_eq!(
            rewritten(
                "11",
                "Error, decoded message length too large: found 70000 bytes"
            )
            .0,
            "8"
        );
        // Anyone else's INTERNAL or OUT_OF_RANGE is left as it is.
        assert_eq!(
            rewritten("13", "something broke"),
            ("13".to_owned(), "something broke".to_owned())
        );
        assert_eq!(
            rewritten("11", "after_sequence: the latest sequence is 3"),
            (
                "11".to_owned(),
                "after_sequence: the latest sequence is 3".to_owned()
            )
        );
        assert_eq!(rewritten("3", "Missing request message.").0, "3");
    }
}
