//! The tonic layer of InteractionService. Each handler names the caller, validates the
//! request, calls one call-manager function and maps its reply; errors become statuses in
//! `status.rs` only.

pub mod agent;
pub mod limits;
mod status;
pub mod validate;
mod watch;

use tokio::sync::watch as signal;
use tonic::{Request, Response, Status};

use crate::{
    manager::{CallManager, Input, StartCall},
    proto::{self, interaction_service_server::InteractionService},
};

pub use status::ERROR_DOMAIN;
pub use validate::PhoneRules;

/// The InteractionService implementation.
pub struct InteractionApi {
    manager: CallManager,
    phone_rules: PhoneRules,
    /// Flips to true when the server starts shutting down; watch streams end on it.
    shutdown: signal::Receiver<bool>,
}

impl InteractionApi {
    pub fn new(
        manager: CallManager,
        phone_rules: PhoneRules,
        shutdown: signal::Receiver<bool>,
    ) -> Self {
        Self {
            manager,
            phone_rules,
            shutdown,
        }
    }

    async fn change(
        &self,
        agent: &str,
        interaction_id: &str,
        input: Input,
    ) -> Result<Response<proto::Interaction>, Status> {
        validate::interaction_id(interaction_id)?;
        let interaction = self.manager.change(agent, interaction_id, input).await?;
        Ok(Response::new(interaction))
    }
}

#[tonic::async_trait]
impl InteractionService for InteractionApi {
    async fn start_call(
        &self,
        request: Request<proto::StartCallRequest>,
    ) -> Result<Response<proto::StartCallResponse>, Status> {
        let agent_id = agent::caller(&request)?;
        let request = request.into_inner();
        let call = StartCall {
            agent_id,
            phone_number: self.phone_rules.normalize(&request.phone_number)?,
            associated_object: request
                .initial_object
                .map(validate::associated_object)
                .transpose()?,
            request_id: validate::request_id(&request.request_id)?,
        };
        Ok(Response::new(self.manager.start_call(call).await?))
    }

    type WatchInteractionStream = watch::EventStream;

    async fn watch_interaction(
        &self,
        request: Request<proto::WatchInteractionRequest>,
    ) -> Result<Response<Self::WatchInteractionStream>, Status> {
        let agent_id = agent::caller(&request)?;
        let request = request.into_inner();
        validate::interaction_id(&request.interaction_id)?;
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
        )
        .await?;
        Ok(Response::new(stream))
    }

    type WatchInteractionsStream = watch::EventStream;

    async fn watch_interactions(
        &self,
        request: Request<proto::WatchInteractionsRequest>,
    ) -> Result<Response<Self::WatchInteractionsStream>, Status> {
        let agent_id = agent::caller(&request)?;
        let stream = watch::agent(self.manager.clone(), agent_id, self.shutdown.clone()).await?;
        Ok(Response::new(stream))
    }

    async fn get_interaction(
        &self,
        request: Request<proto::GetInteractionRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        let agent_id = agent::caller(&request)?;
        let id = &request.get_ref().interaction_id;
        validate::interaction_id(id)?;
        Ok(Response::new(
            self.manager.interaction(&agent_id, id).await?,
        ))
    }

    async fn list_interactions(
        &self,
        request: Request<proto::ListInteractionsRequest>,
    ) -> Result<Response<proto::ListInteractionsResponse>, Status> {
        let agent_id = agent::caller(&request)?;
        let request = request.into_inner();
        let page_size = validate::page_size(request.page_size)?;
        let state = validate::state_filter(request.state)?;
        let before = validate::page_token(&request.page_token, request.state)?;
        let page = self
            .manager
            .list(&agent_id, state, before, page_size)
            .await?;
        Ok(Response::new(proto::ListInteractionsResponse {
            interactions: page.interactions,
            next_page_token: validate::next_page_token(page.next_before, request.state),
        }))
    }

    async fn end_call(
        &self,
        request: Request<proto::EndCallRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        let agent_id = agent::caller(&request)?;
        self.change(&agent_id, &request.get_ref().interaction_id, Input::End)
            .await
    }

    async fn hold_call(
        &self,
        request: Request<proto::HoldCallRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        let agent_id = agent::caller(&request)?;
        self.change(&agent_id, &request.get_ref().interaction_id, Input::Hold)
            .await
    }

    async fn resume_call(
        &self,
        request: Request<proto::ResumeCallRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        let agent_id = agent::caller(&request)?;
        self.change(&agent_id, &request.get_ref().interaction_id, Input::Resume)
            .await
    }

    async fn complete_interaction(
        &self,
        request: Request<proto::CompleteInteractionRequest>,
    ) -> Result<Response<proto::Interaction>, Status> {
        let agent_id = agent::caller(&request)?;
        let request = request.into_inner();
        validate::disposition_and_notes(&request.disposition, &request.notes)?;
        let input = Input::Complete {
            disposition: request.disposition,
            notes: request.notes,
        };
        self.change(&agent_id, &request.interaction_id, input).await
    }

    async fn get_dialpad(
        &self,
        request: Request<proto::GetDialpadRequest>,
    ) -> Result<Response<proto::Dialpad>, Status> {
        let agent_id = agent::caller(&request)?;
        let dialpad = self.manager.dialpad(&agent_id).await?;
        Ok(Response::new(dialpad.unwrap_or_default()))
    }
}
