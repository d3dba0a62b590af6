//! The tonic layer of InteractionService. Each handler names the caller, validates the
//! request, calls one call-manager function and maps its reply; errors become statuses in
//! `status.rs` only.

pub mod agent;
pub mod codec;
pub mod limits;
pub mod status;
pub mod validate;
pub mod watch;

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::watch as signal;
use tonic::{Request, Response, Status};

use crate::{
    manager::{AgentOp, CallManager, StartCall},
    proto::{self, interaction_service_server::InteractionService},
    store::PageTokens,
};

pub use status::ERROR_DOMAIN;
pub use validate::PhoneRules;

/// The InteractionService implementation.
pub struct InteractionApi {
    manager: CallManager,
    phone_rules: PhoneRules,
    /// Flips to true when the server starts shutting down; watch streams end on it.
    shutdown: signal::Receiver<bool>,
    /// Caps on open watch streams.
    watches: Arc<limits::WatchLimiter>,
    /// The server-side deadline of unary calls.
    request_timeout: Duration,
    /// ListInteractions' page tokens, sealed under the store's key.
    page_tokens: PageTokens,
}

impl InteractionApi {
    pub fn new(
        manager: CallManager,
        phone_rules: PhoneRules,
        shutdown: signal::Receiver<bool>,
        watches: Arc<limits::WatchLimiter>,
        request_timeout: Duration,
        page_tokens: PageTokens,
    ) -> Self {
        Self {
            manager,
            phone_rules,
            shutdown,
            watches,
            request_timeout,
            page_tokens,
        }
    }

    /// Runs a unary call's work within its deadline (the server's, or the client's if
    /// shorter), answering DEADLINE_EXCEEDED past it, as the contract's codes require (tonic's
    /// own timeout would answer CANCELLED).
    async fn within<T>(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        extensions: &tonic::Extensions,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let deadline = limits::deadline(metadata, extensions, self.request_timeout);
        match tokio::time::timeout_at(deadline, work).await {
            Ok(reply) => reply.map(Response::new),
            Err(_) => Err(Status::deadline_exceeded(limits::DEADLINE_PASSED)),
        }
    }

    /// An agent's operation on one interaction: EndCall, HoldCall, ResumeCall,
    /// CompleteInteraction.
    async fn change<T: NamesInteraction>(
        &self,
        request: &Request<T>,
        input: AgentOp,
    ) -> Result<Response<proto::Interaction>, Status> {
        let agent_id = agent::caller(request)?;
        let interaction_id = request.get_ref().interaction_id();
        validate::interaction_id(interaction_id)?;
        record_interaction(interaction_id);
        let forwarded = request.extensions().get::<agent::Forwarded>().is_some();
        self.within(request.metadata(), request.extensions(), async {
            Ok(self
                .manager
                .change(&agent_id, interaction_id, input, forwarded)
                .await?)
        })
        .await
    }
}

/// A request about one interaction.
trait NamesInteraction {
    fn interaction_id(&self) -> &str;
}

macro_rules! names_interaction {
    ($($request:ty),*) => {$(
        impl NamesInteraction for $request {
            fn interaction_id(&self) -> &str {
                &self.interaction_id
            }
        }
    )*};
}

names_interaction!(
    proto::EndCallRequest,
    proto::HoldCallRequest,
    proto::ResumeCallRequest,
    proto::CompleteInteractionRequest,
    proto::TransferCallRequest,
    proto::ConsultCallRequest,
    proto::CompleteTransferRequest,
    proto::CancelConsultRequest,
    proto::ConferenceCallRequest
);

/// Names the interaction in the RPC's span (the trace layer made it).
fn record_interaction(id: &str) {
    tracing::Span::current().record("interaction_id", id);
}

#[tonic::async_trait]
impl InteractionService for InteractionApi {
    async fn start_call(
        &self,
        request: Request<proto::StartCallRequest>,
    ) -> Result<Response<proto::StartCallResponse>, Status> {
        let agent_id = agent::caller(&request)?;
        let (metadata, extensions, request) = request.into_parts();
        let call = StartCall {
            agent_id,
            phone_number: self.phone_rules.normalize(&request.phone_number)?,
            associated_object: request
                .initial_object
                .map(validate::associated_object)
                .transpose()?,
            request_id: validate::request_id(&request.request_id)?,
            caller_id: validate::caller_id(&request.caller_id)?,
            presented_caller_id: String::new(),
            staged: None,
            claims: Default::default(),
        };
        let response = self
            .within(&metadata, &extensions, async {
                Ok(self.manager.start_call(call).await?)
            })
            .await?;
        if let Some(id) = &response.get_ref().interaction_id {
            record_interaction(id);
        }
        Ok(response)
    }

    type WatchInteractionStream = watch::EventStream;

    async fn watch_interaction(
        &self,
        request: Request<proto::WatchInteractionRequest>,
    ) -> Result<Response<Self::WatchInteractionStream>, Status> {
        let agent_id = agent::caller(&request)?;
        let revocation = request.extensions().get::<agent::Revocation>().cloned();
        let request = request.into_inner();
        validate::interaction_id(&request.interaction_id)?;
        record_interaction(&request.interaction_id);
        let permit = self.watches.acquire(&agent_id, "interaction")?;
        let interaction = self
            .manager
            .interaction(&agent_id, &request.interaction_id)
            .await?;
        let stream = watch::interaction(
            self.manager.clone(),
            agent_id,
            interaction,
            request.after_sequence,
            self.shutdown.clone(),
            permit,
        )
        .await?;
        Ok(Response::new(agent::end_when_revoked(stream, revocation)))
    }

    type WatchInteractionsStream = watch::EventStream;

    async fn watch_interactions(
        &self,
        request: Request<proto::WatchInteractionsRequest>,
    ) -> Result<Response<Self::WatchInteractionsStream>, Status> {
        let agent_id = agent::caller(&request)?;
        let revocation = request.extensions().get::<agent::Revocation>().cloned();
        let permit = self.watches.acquire(&agent_id, "agent")?;
        let stream = watch::agent(
            self.manager.clone(),
            agent_id,
            self.shutdown.clone(),
            permit,
        )
        .await?;
        Ok(Response::new(agent::end_when_revoked(stream, revocation)))
    }

    async fn get_interaction(
        &self,
        request: Request<proto::GetInteractionRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        let agent_id = agent::caller(&request)?;
        let id = &request.get_ref().interaction_id;
        validate::interaction_id(id)?;
        record_interaction(id);
        self.within(request.metadata(), request.extensions(), async {
            Ok(self.manager.interaction(&agent_id, id).await?)
        })
        .await
    }

    async fn list_interactions(
        &self,
        request: Request<proto::ListInteractionsRequest>,
    ) -> Result<Response<proto::ListInteractionsResponse>, Status> {
        let agent_id = agent::caller(&request)?;
        let (metadata, extensions, request) = request.into_parts();
        let page_size = validate::page_size(request.page_size)?;
        let state = validate::state_filter(request.state)?;
        let tokens = &self.page_tokens;
        let before = validate::page_token(tokens, &request.page_token, &agent_id, request.state)?;
        self.within(&metadata, &extensions, async {
            let page = self
                .manager
                .list(&agent_id, state, before, page_size)
                .await?;
            Ok(proto::ListInteractionsResponse {
                interactions: page.interactions,
                next_page_token: validate::next_page_token(
                    tokens,
                    page.next_before,
                    &agent_id,
                    request.state,
                )?,
            })
        })
        .await
    }

    async fn end_call(
        &self,
        request: Request<proto::EndCallRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        self.change(&request, AgentOp::End).await
    }

    async fn hold_call(
        &self,
        request: Request<proto::HoldCallRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        self.change(&request, AgentOp::Hold).await
    }

    async fn resume_call(
        &self,
        request: Request<proto::ResumeCallRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        self.change(&request, AgentOp::Resume).await
    }

    async fn complete_interaction(
        &self,
        request: Request<proto::CompleteInteractionRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        let message = request.get_ref();
        validate::disposition_and_notes(&message.disposition, &message.notes)?;
        let input = AgentOp::Complete {
            disposition: message.disposition.clone(),
            notes: message.notes.clone(),
        };
        self.change(&request, input).await
    }

    async fn transfer_call(
        &self,
        request: Request<proto::TransferCallRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        let agent_id = agent::caller(&request)?;
        let message = request.get_ref();
        let input = AgentOp::Transfer {
            target: validate::transfer_target(&self.phone_rules, &message.target, &agent_id)?,
            request_id: validate::request_id(&message.request_id)?,
        };
        self.change(&request, input).await
    }

    async fn consult_call(
        &self,
        request: Request<proto::ConsultCallRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        let agent_id = agent::caller(&request)?;
        let message = request.get_ref();
        let input = AgentOp::Consult {
            target: validate::transfer_target(&self.phone_rules, &message.target, &agent_id)?,
            request_id: validate::request_id(&message.request_id)?,
        };
        self.change(&request, input).await
    }

    async fn complete_transfer(
        &self,
        request: Request<proto::CompleteTransferRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        let request_id = validate::request_id(&request.get_ref().request_id)?;
        self.change(&request, AgentOp::CompleteTransfer { request_id })
            .await
    }

    async fn cancel_consult(
        &self,
        request: Request<proto::CancelConsultRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        let request_id = validate::request_id(&request.get_ref().request_id)?;
        self.change(&request, AgentOp::CancelConsult { request_id })
            .await
    }

    async fn conference_call(
        &self,
        request: Request<proto::ConferenceCallRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        let agent_id = agent::caller(&request)?;
        let message = request.get_ref();
        let input = AgentOp::Conference {
            target: validate::transfer_target(&self.phone_rules, &message.target, &agent_id)?,
            request_id: validate::request_id(&message.request_id)?,
        };
        self.change(&request, input).await
    }

    async fn dial_staged(
        &self,
        request: Request<proto::DialStagedRequest>,
    ) -> Result<Response<proto::StartCallResponse>, Status> {
        let agent_id = agent::caller(&request)?;
        let (metadata, extensions, request) = request.into_parts();
        let request_id = validate::request_id(&request.request_id)?;
        let response = self
            .within(&metadata, &extensions, async {
                Ok(self.manager.dial_staged(agent_id, request_id).await?)
            })
            .await?;
        if let Some(id) = &response.get_ref().interaction_id {
            record_interaction(id);
        }
        Ok(response)
    }

    async fn list_caller_ids(
        &self,
        request: Request<proto::ListCallerIdsRequest>,
    ) -> Result<Response<proto::ListCallerIdsResponse>, Status> {
        let agent_id = agent::caller(&request)?;
        let pool = self.manager.caller_ids(&agent_id);
        Ok(Response::new(proto::ListCallerIdsResponse {
            default_caller_id: pool.first().cloned().unwrap_or_default(),
            caller_ids: pool.to_vec(),
        }))
    }

    async fn get_dialpad(
        &self,
        request: Request<proto::GetDialpadRequest>,
    ) -> Result<Response<proto::Dialpad>, Status> {
        let agent_id = agent::caller(&request)?;
        self.within(request.metadata(), request.extensions(), async {
            Ok(self.manager.dialpad(&agent_id).await?.unwrap_or_default())
        })
        .await
    }
}
