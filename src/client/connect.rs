//! The connection: the server URL checked before connecting, and the agent and token
//! metadata every request carries.

use std::{str::FromStr, time::Duration};

use tonic::{
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
    Request, Status,
};

use super::{errors::CliError, ClientOptions};
use crate::proto::interaction_service_client::InteractionServiceClient;

/// Adds the agent and token metadata to every request.
#[derive(Clone)]
pub struct Credentials {
    agent: Option<MetadataValue<Ascii>>,
    authorization: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    /// Checks that the agent and token can be sent as metadata.
    pub fn new(options: &ClientOptions) -> Result<Self, CliError> {
        let agent = match &options.agent {
            Some(agent) => Some(MetadataValue::from_str(agent).map_err(|_| {
                CliError::Usage(format!(
                    "--agent {agent:?} cannot be sent as metadata (printable ASCII only)"
                ))
            })?),
            None => None,
        };
        let authorization = match &options.token {
            Some(token) => {
                // The error names neither the token nor the header value.
                let mut value =
                    MetadataValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        CliError::Usage(
                            "--token cannot be sent as metadata (printable ASCII only)".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Credentials {
            agent,
            authorization,
        })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(agent) = &self.agent {
            request.metadata_mut().insert("x-agent-id", agent.clone());
        }
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        Ok(request)
    }
}

/// The generated client with the credentials interceptor.
pub type Client = InteractionServiceClient<InterceptedService<Channel, Credentials>>;

/// Checks the server URL (no connection yet).
pub(super) fn endpoint(server: &str) -> Result<Endpoint, CliError> {
    let endpoint = Endpoint::from_shared(server.to_string())
        .map_err(|e| CliError::Usage(format!("--server {server:?} is not a valid URL: {e}")))?;
    Ok(endpoint.connect_timeout(Duration::from_secs(10)))
}

/// Connects to the server.
pub async fn connect(options: &ClientOptions) -> Result<Client, CliError> {
    let credentials = Credentials::new(options)?;
    let endpoint = endpoint(&options.server)?;
    let channel = endpoint.connect().await.map_err(|e| {
        CliError::Connect(format!(
            "cannot connect to {}: {}",
            options.server,
            error_chain(&e)
        ))
    })?;
    Ok(InteractionServiceClient::with_interceptor(
        channel,
        credentials,
    ))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    let mut previous = out.clone();
    while let Some(s) = source {
        // hyper and tonic often wrap an error in one with the same text.
        let text = s.to_string();
        if text != previous {
            out.push_str(": ");
            out.push_str(&text);
        }
        previous = text;
        source = s.source();
    }
    out
}
