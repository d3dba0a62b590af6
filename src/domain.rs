//! The domain: interactions, their events, and the errors the call manager reports.
//!
//! These are plain Rust types so that the lifecycle can be written and tested without the wire
//! format. The store and the API speak protobuf; the conversions live at the bottom of this
//! file, next to the types they convert, so there is exactly one of each.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::proto;

pub mod accept;
pub mod dialog;
pub mod encoded;
pub mod feed;
pub mod spans;
pub use encoded::EncodedEvent;

/// The lifecycle state of an interaction (Bright Pattern's names for an outbound call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InteractionState {
    DeliveryPending,
    Delivered,
    Hold,
    WrapUp,
    Completed,
}

impl InteractionState {
    /// Live: the call itself is up (dialing, ringing, talking or held). Live calls count
    /// against `--max-active-calls` and are ended with SERVER_RESTART by a restart.
    pub fn is_live(self) -> bool {
        matches!(self, Self::DeliveryPending | Self::Delivered | Self::Hold)
    }
}

/// Where the call itself is: finer than the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallProgress {
    Dialing,
    Ringing,
    Connected,
    Held,
    Ended,
    /// A transfer, consultation or conference is calling its target.
    Transferring,
    /// The agent talks with the consulted target; the customer is on hold.
    Consulting,
    /// The target did not answer or refused; the customer is with the agent again.
    TransferFailed,
    /// Customer, agent and target are in the PBX's conference room.
    Conferenced,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    AgentHangup,
    RemoteHangup,
    Busy,
    NoAnswer,
    Failed,
    Canceled,
    ServerRestart,
    /// The customer was handed to the transfer target.
    Transferred,
}

/// How an interaction was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origination {
    /// StartCall or DialStaged.
    IntegrationApi,
    /// Another agent's transfer handed the call to this one.
    Transfer,
}

/// Whom a transfer, consultation or conference calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransferTarget {
    /// A number through the trunk, E.164.
    Number(String),
    /// Another agent's phone, by agent id.
    Agent(String),
}

impl std::fmt::Display for TransferTarget {
    /// As the API writes it: the number, or `agent:<id>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(number) => f.write_str(number),
            Self::Agent(agent) => write!(f, "agent:{agent}"),
        }
    }
}

/// The CRM record a call is about (Bright Pattern's InteractionAssociatedObject).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AssociatedObject {
    pub id: String,
    pub object_type: String,
    pub display_name: String,
    pub display_type: String,
    /// Sorted, so that two equal objects fingerprint the same for idempotency.
    pub custom_fields: BTreeMap<String, String>,
}

/// One outbound call of one agent, from dialing to the end of wrap-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    pub id: String,
    pub agent_id: String,
    pub state: InteractionState,
    pub progress: CallProgress,
    /// Normalized: E.164, or an extension as dialed.
    pub phone_number: String,
    pub associated_object: Option<AssociatedObject>,
    pub create_time: SystemTime,
    pub connect_time: Option<SystemTime>,
    pub end_time: Option<SystemTime>,
    pub complete_time: Option<SystemTime>,
    pub end_reason: Option<EndReason>,
    pub disposition: String,
    pub notes: String,
    /// The sequence of the latest event: the log's length for this interaction.
    pub sequence: u64,
    pub request_id: Option<String>,
    /// The switch's words for why the call ended ("486 Busy Here"), for operators; empty when
    /// it gave none.
    pub end_detail: String,
    /// The caller ID presented to the customer (E.164, or `--sip-caller-id` as configured);
    /// empty when the server has none.
    pub caller_id: String,
    /// StartCall's, or a transfer's from another agent.
    pub origination: Origination,
    /// The latest transfer's, consultation's or conference's target as the API writes it;
    /// empty when there was none.
    pub transfer_target: String,
    /// Origination TRANSFER: the interaction this one came from.
    pub transferred_from: String,
    /// The switch's words for why the latest transfer failed; empty otherwise.
    pub transfer_detail: String,
}

impl Interaction {
    /// connect → end, when the call both connected and ended.
    pub fn talk_duration(&self) -> Option<Duration> {
        let (connect, end) = (self.connect_time?, self.end_time?);
        Some(end.duration_since(connect).unwrap_or_default())
    }
}

/// One change of an interaction's state or progress: the unit of the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct InteractionEvent {
    pub sequence: u64,
    pub state: InteractionState,
    /// None for the event that created the interaction.
    pub previous_state: Option<InteractionState>,
    pub progress: CallProgress,
    pub time: SystemTime,
    /// The interaction after this event.
    pub interaction: Interaction,
    /// The event records that a restart (or a surviving replica) took the live call up again.
    pub recovered: bool,
}

/// Errors the call manager and the store report. `api::status` turns each into the gRPC
/// status of the contract's error table.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No such interaction for this agent (it may be another agent's).
    NotFound,
    /// The operation is not allowed in the interaction's state.
    InvalidState {
        operation: &'static str,
        state: InteractionState,
    },
    /// The agent already has `limit` live calls.
    TooManyActiveCalls { limit: u32 },
    /// The switch did not acknowledge the dial in time (Bright Pattern's "Timeout error").
    OriginateTimeout,
    /// The request_id was used before for a different request.
    RequestIdReused,
    /// The store could not write; nothing was acknowledged.
    StoreUnavailable,
    /// The store is in a known fault (disk full, corrupt, …): nothing was acknowledged.
    StoreFault(StoreFault),
    /// The server is shutting down.
    ShuttingDown,
    /// DialStaged with nothing staged in the agent's dialpad.
    DialpadEmpty,
    /// The switch refused the change (a hold re-INVITE answered 488, say): nothing changed.
    SwitchRefused {
        operation: &'static str,
        /// The switch's words ("488 Not Acceptable Here").
        detail: String,
    },
    /// PostgreSQL: the replica that owns the interaction cannot be reached (it is being taken
    /// over, say); the operation was not carried out.
    OwnerUnavailable { detail: String },
    /// PostgreSQL: the owner replica's answer to a forwarded operation, passed on as it came.
    Peer(PeerStatus),
    /// `--calling-hours`: it is outside the calling hours where the number is; nothing was
    /// dialed.
    OutsideCallingHours(Box<HoursRefusal>),
    /// `--dnc`: the number (or a prefix of it) is on the do-not-call list `list` (the file's
    /// name); nothing was dialed.
    DoNotCall { list: String },
    /// Trunk pacing: no trunk capacity was free within `--sip-pacing-wait` (or the waiting
    /// line was full); nothing was dialed. Try again after `retry_after`.
    TrunkBusy { retry_after: std::time::Duration },
    /// The caller ID asked for is not one of the agent's (`--caller-ids`, else
    /// `--sip-caller-id`); nothing was dialed or staged.
    CallerIdNotAllowed { caller_id: String },
    /// ConferenceCall without `--sip-conference-uri`: there is no room to meet in.
    ConferenceNotConfigured,
}

/// Why a number may not be called now under `--calling-hours`, as the refusal reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoursRefusal {
    /// The rule's region that governs the number (`US`, `US-FL`, `+1212`, `*`).
    pub region: String,
    /// The IANA zones the number may be in, all of which must be in hours.
    pub zones: Vec<String>,
    /// The local time in each of `zones`, RFC 3339 with its offset.
    pub local_times: Vec<String>,
    /// The first instant (RFC 3339, UTC) at which every zone is in hours; None if none within
    /// a week (the region is closed every day).
    pub next_allowed: Option<String>,
}

/// A gRPC status as another replica answered it: code, message and encoded details
/// (`grpc-status-details-bin`), so that a forwarded operation fails exactly as on the owner.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    pub code: i32,
    pub message: String,
    pub details: bytes::Bytes,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound => f.write_str("interaction not found"),
            Self::InvalidState { operation, state } => {
                write!(
                    f,
                    "{operation} is not allowed in state {}",
                    state_name(*state)
                )
            }
            Self::TooManyActiveCalls { limit } => {
                write!(f, "the agent already has {limit} active calls")
            }
            Self::OriginateTimeout => f.write_str("Timeout error"),
            Self::RequestIdReused => f.write_str("request_id reused with a different request"),
            Self::StoreUnavailable => f.write_str("the store cannot write; nothing was changed"),
            Self::StoreFault(fault) => write!(
                f,
                "the store cannot write: {}; nothing was changed",
                fault.describe()
            ),
            Self::ShuttingDown => f.write_str("the server is shutting down"),
            Self::DialpadEmpty => {
                f.write_str("nothing is staged in the agent's dialpad; StartCall stages a number under Deferred Dial")
            }
            Self::SwitchRefused { operation, detail } => write!(
                f,
                "{operation} was refused by the switch ({detail}); the call is unchanged"
            ),
            Self::OwnerUnavailable { detail } => write!(
                f,
                "the replica that holds this call cannot be reached ({detail}); nothing was \
                 changed: try again shortly"
            ),
            Self::Peer(status) => f.write_str(&status.message),
            Self::OutsideCallingHours(refusal) => {
                write!(
                    f,
                    "outside calling hours for {} (local time {})",
                    refusal.region,
                    refusal
                        .zones
                        .iter()
                        .zip(&refusal.local_times)
                        .map(|(zone, time)| format!("{time} in {zone}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )?;
                match &refusal.next_allowed {
                    Some(next) => write!(f, "; the number may be called from {next}"),
                    None => f.write_str("; the region has no calling hours this week"),
                }
            }
            Self::DoNotCall { list } => {
                write!(f, "the number is on the do-not-call list {list}; nothing was dialed")
            }
            Self::TrunkBusy { retry_after } => write!(
                f,
                "the trunk is busy: no line was free in time; nothing was dialed (retry after \
                 {} s)",
                retry_after.as_secs_f64().ceil()
            ),
            Self::CallerIdNotAllowed { caller_id } => write!(
                f,
                "caller_id …{} is not one of the agent's caller IDs (ListCallerIds names them); \
                 nothing was dialed",
                // A number in a refusal: its last 4 digits only.
                caller_id
                    .get(caller_id.len().saturating_sub(4)..)
                    .unwrap_or_default()
            ),
            Self::ConferenceNotConfigured => f.write_str(
                "ConferenceCall needs a conference room on the PBX: the server runs without \
                 --sip-conference-uri",
            ),
        }
    }
}

impl std::error::Error for CallError {}

/// Why the store cannot take writes (or should not be trusted) right now. Several may hold at
/// once; health is SERVING only while none does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreFault {
    /// SQLite said "database or disk is full": retried until a write fits again.
    DiskFull,
    /// Another write failure (an I/O error): retried until a write succeeds again.
    WriteFailed,
    /// A write has not finished for longer than the stall bound (a frozen or hung disk).
    Stalled,
    /// SQLite found the file damaged ("malformed"): permanent until a restart on a good file.
    Corrupt,
    /// The file at the store's path is no longer the file calldesk writes (deleted or
    /// replaced): permanent, since what calldesk writes would be lost.
    Replaced,
    /// The integrity check after start-up has not finished yet.
    Checking,
    /// PostgreSQL cannot be reached (or this replica's lease lapsed while it could not be):
    /// retried until it answers again.
    Unreachable,
    /// PostgreSQL: this replica's lease expired and another replica took over its
    /// interactions. Permanent: the replica exits, and a new one starts with a new lease.
    Fenced,
}

impl StoreFault {
    /// Words for messages: "the store cannot write: <this>".
    pub fn describe(self) -> &'static str {
        match self {
            Self::DiskFull => "the disk is full",
            Self::WriteFailed => "writes to the disk fail",
            Self::Stalled => "the disk does not complete writes",
            Self::Corrupt => "the database file is corrupt",
            Self::Replaced => "the database file was deleted or replaced",
            Self::Checking => "the database file is being checked",
            Self::Unreachable => "PostgreSQL cannot be reached",
            Self::Fenced => "this replica's lease expired and another replica took over its calls",
        }
    }

    /// The `ErrorInfo` reason of an UNAVAILABLE caused by this fault.
    pub fn reason(self) -> &'static str {
        match self {
            Self::DiskFull => "STORE_DISK_FULL",
            Self::WriteFailed => "STORE_WRITE_FAILED",
            Self::Stalled => "STORE_STALLED",
            Self::Corrupt => "STORE_CORRUPT",
            Self::Replaced => "STORE_REPLACED",
            Self::Checking => "STORE_CHECKING",
            Self::Unreachable => "STORE_UNREACHABLE",
            Self::Fenced => "STORE_FENCED",
        }
    }

    /// Whether it ends only with a restart (on a repaired file), never by itself.
    pub fn is_permanent(self) -> bool {
        matches!(self, Self::Corrupt | Self::Replaced | Self::Fenced)
    }

    /// Whether new work is refused while it holds. A check in progress is not: what is
    /// written meanwhile is as durable as ever, and a mesh already routes elsewhere.
    pub fn refuses_writes(self) -> bool {
        !matches!(self, Self::Checking)
    }
}

/// The state's name as the proto spells it, for messages.
pub fn state_name(state: InteractionState) -> &'static str {
    proto::InteractionState::from(state).as_str_name()
}

// ---- Conversions to and from the wire (and storage) form ----

pub fn timestamp(time: SystemTime) -> pbjson_types::Timestamp {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

pub fn system_time(ts: &pbjson_types::Timestamp) -> SystemTime {
    let nanos = u32::try_from(ts.nanos).unwrap_or(0);
    UNIX_EPOCH + Duration::new(u64::try_from(ts.seconds).unwrap_or(0), nanos)
}

impl From<InteractionState> for proto::InteractionState {
    fn from(s: InteractionState) -> Self {
        match s {
            InteractionState::DeliveryPending => Self::DeliveryPending,
            InteractionState::Delivered => Self::Delivered,
            InteractionState::Hold => Self::Hold,
            InteractionState::WrapUp => Self::WrapUp,
            InteractionState::Completed => Self::Completed,
        }
    }
}

impl TryFrom<proto::InteractionState> for InteractionState {
    type Error = ();
    fn try_from(s: proto::InteractionState) -> Result<Self, ()> {
        Ok(match s {
            proto::InteractionState::Unspecified => return Err(()),
            proto::InteractionState::DeliveryPending => Self::DeliveryPending,
            proto::InteractionState::Delivered => Self::Delivered,
            proto::InteractionState::Hold => Self::Hold,
            proto::InteractionState::WrapUp => Self::WrapUp,
            proto::InteractionState::Completed => Self::Completed,
        })
    }
}

impl From<CallProgress> for proto::CallProgress {
    fn from(p: CallProgress) -> Self {
        match p {
            CallProgress::Dialing => Self::Dialing,
            CallProgress::Ringing => Self::Ringing,
            CallProgress::Connected => Self::Connected,
            CallProgress::Held => Self::Held,
            CallProgress::Ended => Self::Ended,
            CallProgress::Transferring => Self::Transferring,
            CallProgress::Consulting => Self::Consulting,
            CallProgress::TransferFailed => Self::TransferFailed,
            CallProgress::Conferenced => Self::Conferenced,
        }
    }
}

impl TryFrom<proto::CallProgress> for CallProgress {
    type Error = ();
    fn try_from(p: proto::CallProgress) -> Result<Self, ()> {
        Ok(match p {
            proto::CallProgress::Unspecified => return Err(()),
            proto::CallProgress::Dialing => Self::Dialing,
            proto::CallProgress::Ringing => Self::Ringing,
            proto::CallProgress::Connected => Self::Connected,
            proto::CallProgress::Held => Self::Held,
            proto::CallProgress::Ended => Self::Ended,
            proto::CallProgress::Transferring => Self::Transferring,
            proto::CallProgress::Consulting => Self::Consulting,
            proto::CallProgress::TransferFailed => Self::TransferFailed,
            proto::CallProgress::Conferenced => Self::Conferenced,
        })
    }
}

impl From<EndReason> for proto::EndReason {
    fn from(r: EndReason) -> Self {
        match r {
            EndReason::AgentHangup => Self::AgentHangup,
            EndReason::RemoteHangup => Self::RemoteHangup,
            EndReason::Busy => Self::Busy,
            EndReason::NoAnswer => Self::NoAnswer,
            EndReason::Failed => Self::Failed,
            EndReason::Canceled => Self::Canceled,
            EndReason::ServerRestart => Self::ServerRestart,
            EndReason::Transferred => Self::Transferred,
        }
    }
}

impl TryFrom<proto::EndReason> for EndReason {
    type Error = ();
    fn try_from(r: proto::EndReason) -> Result<Self, ()> {
        Ok(match r {
            proto::EndReason::Unspecified => return Err(()),
            proto::EndReason::AgentHangup => Self::AgentHangup,
            proto::EndReason::RemoteHangup => Self::RemoteHangup,
            proto::EndReason::Busy => Self::Busy,
            proto::EndReason::NoAnswer => Self::NoAnswer,
            proto::EndReason::Failed => Self::Failed,
            proto::EndReason::Canceled => Self::Canceled,
            proto::EndReason::ServerRestart => Self::ServerRestart,
            proto::EndReason::Transferred => Self::Transferred,
        })
    }
}

impl From<&AssociatedObject> for proto::AssociatedObject {
    fn from(o: &AssociatedObject) -> Self {
        Self {
            id: o.id.clone(),
            r#type: o.object_type.clone(),
            display_name: o.display_name.clone(),
            display_type: o.display_type.clone(),
            custom_fields: o
                .custom_fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

impl From<proto::AssociatedObject> for AssociatedObject {
    fn from(o: proto::AssociatedObject) -> Self {
        Self {
            id: o.id,
            object_type: o.r#type,
            display_name: o.display_name,
            display_type: o.display_type,
            custom_fields: o.custom_fields.into_iter().collect(),
        }
    }
}

impl From<&Interaction> for proto::Interaction {
    fn from(i: &Interaction) -> Self {
        Self {
            id: i.id.clone(),
            agent_id: i.agent_id.clone(),
            state: proto::InteractionState::from(i.state) as i32,
            progress: proto::CallProgress::from(i.progress) as i32,
            phone_number: i.phone_number.clone(),
            direction: proto::CallDirection::Outbound as i32,
            origination: match i.origination {
                Origination::IntegrationApi => proto::Origination::IntegrationApi,
                Origination::Transfer => proto::Origination::Transfer,
            } as i32,
            associated_object: i.associated_object.as_ref().map(Into::into),
            create_time: Some(timestamp(i.create_time)),
            connect_time: i.connect_time.map(timestamp),
            end_time: i.end_time.map(timestamp),
            complete_time: i.complete_time.map(timestamp),
            talk_duration: i.talk_duration().map(|d| pbjson_types::Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }),
            end_reason: i
                .end_reason
                .map_or(proto::EndReason::Unspecified, Into::into) as i32,
            disposition: i.disposition.clone(),
            notes: i.notes.clone(),
            sequence: i.sequence,
            request_id: i.request_id.clone().unwrap_or_default(),
            end_detail: i.end_detail.clone(),
            caller_id: i.caller_id.clone(),
            transfer_target: i.transfer_target.clone(),
            transferred_from: i.transferred_from.clone(),
            transfer_detail: i.transfer_detail.clone(),
        }
    }
}

/// A stored snapshot that does not decode into a valid interaction (a corrupt row).
#[derive(Debug, Clone, PartialEq)]
pub struct CorruptSnapshot(pub String);

impl TryFrom<proto::Interaction> for Interaction {
    type Error = CorruptSnapshot;
    fn try_from(p: proto::Interaction) -> Result<Self, CorruptSnapshot> {
        let bad = |what: &str| CorruptSnapshot(format!("interaction {}: bad {what}", p.id));
        let state = proto::InteractionState::try_from(p.state)
            .ok()
            .and_then(|s| InteractionState::try_from(s).ok())
            .ok_or_else(|| bad("state"))?;
        let progress = proto::CallProgress::try_from(p.progress)
            .ok()
            .and_then(|s| CallProgress::try_from(s).ok())
            .ok_or_else(|| bad("progress"))?;
        let end_reason = match proto::EndReason::try_from(p.end_reason) {
            Ok(proto::EndReason::Unspecified) => None,
            Ok(r) => Some(EndReason::try_from(r).map_err(|_| bad("end reason"))?),
            Err(_) => return Err(bad("end reason")),
        };
        let create_time = p
            .create_time
            .as_ref()
            .map(system_time)
            .ok_or_else(|| bad("create time"))?;
        let origination = match proto::Origination::try_from(p.origination) {
            Ok(proto::Origination::Transfer) => Origination::Transfer,
            // Rows written before transfers existed say INTEGRATION_API.
            Ok(_) => Origination::IntegrationApi,
            Err(_) => return Err(bad("origination")),
        };
        Ok(Self {
            state,
            progress,
            origination,
            end_reason,
            create_time,
            connect_time: p.connect_time.as_ref().map(system_time),
            end_time: p.end_time.as_ref().map(system_time),
            complete_time: p.complete_time.as_ref().map(system_time),
            associated_object: p.associated_object.map(Into::into),
            request_id: (!p.request_id.is_empty()).then_some(p.request_id),
            id: p.id,
            agent_id: p.agent_id,
            phone_number: p.phone_number,
            disposition: p.disposition,
            notes: p.notes,
            end_detail: p.end_detail,
            caller_id: p.caller_id,
            transfer_target: p.transfer_target,
            transferred_from: p.transferred_from,
            transfer_detail: p.transfer_detail,
            sequence: p.sequence,
        })
    }
}

impl From<&InteractionEvent> for proto::InteractionEvent {
    fn from(e: &InteractionEvent) -> Self {
        Self {
            interaction_id: e.interaction.id.clone(),
            sequence: e.sequence,
            state: proto::InteractionState::from(e.state) as i32,
            previous_state: e
                .previous_state
                .map_or(proto::InteractionState::Unspecified, Into::into)
                as i32,
            progress: proto::CallProgress::from(e.progress) as i32,
            time: Some(timestamp(e.time)),
            interaction: Some((&e.interaction).into()),
            recovered: e.recovered,
        }
    }
}
