//! calldesk: start outbound phone calls for contact-center agents and follow each call through
//! its life, over gRPC. The API takes the shape of Bright Pattern's Agent Desktop API
//! (`startCall`, `onInteractionStateChange`); the contract is `shared/api.md`.
//!
//! A tour of the modules, from the wire inwards:
//!
//! - [`proto`]: the generated messages, client and server stubs of `calldesk.v1` (and proto3
//!   JSON for them). Rust clients depend on this crate for
//!   [`proto::interaction_service_client::InteractionServiceClient`].
//! - [`server`]: wiring. Opens the store, starts the call manager and the switch, serves
//!   InteractionService, health and reflection, and shuts it all down in order.
//! - [`api`]: the tonic layer. Each handler identifies the agent, validates the request, calls
//!   one call-manager function and maps the reply; [`CallError`](domain::CallError) becomes the
//!   contract's status in one place.
//! - [`manager`]: the call-manager actor, sole owner of every interaction that is not
//!   COMPLETED, behind a cloneable handle; [`manager::lifecycle`] is the lifecycle as a pure
//!   state machine.
//! - [`telephony`]: the switch boundary and the deterministic simulated switch.
//! - [`store`]: the SQLite event log, snapshots, idempotency keys and dialpads, written by one
//!   group-committing thread.
//! - [`domain`]: the types all of the above share.
//! - [`config`]: the `serve` flags; [`cli`]: the client subcommands of the `calldesk` binary.

pub mod api;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod config;
pub mod domain;
pub mod manager;
pub mod metrics;
pub mod net;
pub mod server;
pub mod store;
pub mod telephony;
pub mod trace;

/// The generated code of `proto/calldesk/v1/calldesk.proto`.
pub mod proto {
    tonic::include_proto!("calldesk.v1");
    include!(concat!(env!("OUT_DIR"), "/calldesk.v1.serde.rs"));

    /// The encoded descriptors of the proto, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("calldesk_descriptor");
}
