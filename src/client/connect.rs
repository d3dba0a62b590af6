//! The connection: the server URL and TLS settings checked before connecting, and the agent
//! and token metadata every request carries.

use std::{path::Path, str::FromStr, time::Duration};

use tonic::{
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
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

/// Checks the server URL and the TLS settings, reading the PEM files (no connection yet).
pub(super) fn endpoint(options: &ClientOptions) -> Result<Endpoint, CliError> {
    let server = options.server_url();
    let tls = options.tls
        || server.starts_with("https://")
        || options.ca_cert.is_some()
        || options.client_cert.is_some();
    // TLS is asked for by a flag or the environment as well as by the scheme: the URL follows.
    let url = match server.strip_prefix("http://") {
        Some(rest) if tls => format!("https://{rest}"),
        _ => server.to_owned(),
    };
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(|e| CliError::Usage(format!("--server {server:?} is not a valid URL: {e}")))?
        .connect_timeout(Duration::from_secs(10));
    if tls {
        let mut config = match &options.ca_cert {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(ca)?)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        match (&options.client_cert, &options.client_key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(CliError::Usage(
                    "--client-cert and --client-key go together (mutual TLS)".into(),
                ))
            }
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| CliError::Usage(format!("TLS settings: {}", error_chain(&e))))?;
    }
    Ok(endpoint)
}

fn read_pem(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))
}

/// Connects to the server.
pub async fn connect(options: &ClientOptions) -> Result<Client, CliError> {
    let credentials = Credentials::new(options)?;
    let endpoint = endpoint(options)?;
    let channel = endpoint.connect().await.map_err(|e| {
        CliError::Connect(format!(
            "cannot connect to {}: {}",
            options.server_url(),
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
