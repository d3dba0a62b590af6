//! calldesk: start outbound phone calls for contact-center agents and follow each call through
//! its life, over gRPC. The API takes the shape of Bright Pattern's Agent Desktop API
//! (`startCall`, `onInteractionStateChange`); its contract is `docs/api.md` in this repository
//! (the semantics) and `proto/calldesk/v1/calldesk.proto` (the shapes).
//!
//! A tour of the modules, from the wire inwards. Dependencies point one way only:
//! [`server`] → [`api`] → [`manager`] → [`caller_id`] → [`compliance`] / [`telephony`] /
//! [`store`] → [`domain`]; [`client`] is the other side of the wire and nothing in the service imports it.
//!
//! - [`proto`]: the generated messages, client and server stubs of `calldesk.v1` (and proto3
//!   JSON for them). Rust clients depend on this crate for
//!   [`proto::interaction_service_client::InteractionServiceClient`].
//! - [`server`]: wiring and transport. Opens the store (SQLite, or PostgreSQL with
//!   `--database-url`), builds the telephony backend ([`server::telephony`]), starts the call
//!   manager, serves InteractionService, health and reflection over gRPC and gRPC-Web
//!   ([`server::http`]) with the agent's console at `/` ([`server::console`]), forwards requests
//!   to the replica that owns a call ([`server::peers`]), and shuts it all down in order. Its
//!   tower layers: [`server::auth`] (bearer tokens), [`server::metrics`] (Prometheus),
//!   [`server::trace`] (a span per RPC, in the caller's trace; [`server::otlp`] exports them),
//!   [`server::shape`] (gRPC content-types, metadata size),
//!   [`server::limits`] (tonic's refusals of oversized and undecodable requests, as the contract
//!   words them); [`server::net`] (accepted connections), [`server::reload`] (SIGHUP) and
//!   [`server::config`] (the `serve` flags).
//! - [`api`]: the tonic layer. Each handler identifies the agent, validates the request, calls
//!   one call-manager function and maps the reply; [`CallError`](domain::CallError) becomes the
//!   contract's status in one place ([`api::status`]).
//! - [`manager`]: the call-manager actor, sole owner of every interaction that is not
//!   COMPLETED (on PostgreSQL: of those this replica placed or took over), behind a cloneable
//!   handle; [`manager::lifecycle`] is the lifecycle as a pure state machine, and
//!   [`manager::peers`] the hop to the replica that owns an interaction.
//! - [`compliance`]: `--calling-hours` and `--dnc`, which the call manager asks before a dial
//!   (the server loads the files and hands them in).
//! - [`caller_id`]: `--caller-ids`, the numbers each agent may present to customers, and local
//!   presence (the closest of them to the customer's number), which the call manager asks before
//!   a dial.
//! - [`telephony`]: the switch boundary ([`telephony::Telephony`]) and its backends: the
//!   deterministic simulated switch, and [`telephony::sip`], real calls over SIP by third-party
//!   call control.
//! - [`store`]: the event log, snapshots, idempotency keys and dialpads, in one of two stores
//!   chosen at start-up: [`store::sqlite`], one file written by one group-committing thread, or
//!   [`store::postgres`], one database several replicas share (leases, takeover, fencing,
//!   NOTIFY for watchers); the module page lists what any store must provide.
//! - [`webhooks`]: status callbacks (`--webhooks`): every event of the subscribed agents'
//!   interactions POSTed to an HTTP endpoint, signed, in order per interaction, from cursors
//!   the store keeps; it reads the store's commits and never runs in the actor.
//! - [`domain`]: the types all of the above share.
//! - [`client`]: the client subcommands of the `calldesk` binary and its load generator
//!   (`calldesk bench`).

pub mod api;
pub mod caller_id;
pub mod client;
pub mod compliance;
pub mod domain;
pub mod manager;
pub mod server;
pub mod store;
pub mod telephony;
pub mod webhooks;

/// The generated code of `proto/calldesk/v1/calldesk.proto`.
pub mod proto {
    tonic::include_proto!("calldesk.v1");
    // The server stub: the same service, whose watch streams send `domain::EncodedEvent`.
    include!(concat!(env!("OUT_DIR"), "/server/calldesk.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/calldesk.v1.serde.rs"));

    /// The encoded descriptors of the proto, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("calldesk_descriptor");
}
