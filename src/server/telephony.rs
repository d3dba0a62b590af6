//! The one place a telephony backend is chosen: `--telephony` names it, this builds it.
//!
//! Every backend implements [`Telephony`]; nothing else in the service knows which one runs.
//! What the server needs beside it — the trunk's health (OPTIONS keepalives), the SIP port's
//! address, and at shutdown the hanging up of every live leg — it asks of [`Lines`], which
//! answers for whichever backend runs.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::{
    config::{Config, SipTransportKind, TelephonyKind},
    error::ServeError,
    sip_agents::SipAgents,
};
use crate::telephony::{
    sip::{SipConfig, SipCredential, SipSwitch, SipTransport, TlsIdentity},
    Pacer, PacingLimits, SimSwitch, SimTimings, Telephony,
};

/// Where the trunk's digest password may come from besides `--sip-auth-password-file`.
pub const SIP_PASSWORD_ENV: &str = "CALLDESK_SIP_PASSWORD";

/// The backend the server runs.
pub struct Backend {
    /// What the call manager dials through (behind trunk pacing, when it is on).
    pub telephony: Arc<dyn Telephony>,
    /// What the server's health and shutdown need of it.
    pub lines: Lines,
    /// Trunk pacing, for the replicas' shares of its limits; None when it is off.
    pub pacer: Option<Arc<Pacer>>,
    /// How long a dial may wait in line for the trunk (zero without pacing).
    pub pacing_wait: Duration,
}

/// The phone lines a backend holds open, as the server sees them: their trunk's health, the
/// port they are reached on, and hanging them all up at shutdown. The simulated switch has
/// none (its calls have nobody on the line).
#[derive(Clone, Default)]
pub struct Lines {
    /// The SIP switch, with `--telephony sip`.
    sip: Option<Arc<SipSwitch>>,
}

impl Lines {
    /// The trunk's health (false while its OPTIONS keepalives go unanswered); None without
    /// a trunk.
    pub fn trunk_up(&self) -> Option<watch::Receiver<bool>> {
        self.sip.as_ref().map(|sip| sip.trunk_up())
    }

    /// The SIP port's address (UDP and TCP), with `--telephony sip`.
    pub fn sip_addr(&self) -> Option<SocketAddr> {
        self.sip.as_ref().map(|sip| sip.local_addr())
    }

    /// CANCELs or BYEs every live leg and waits (a few seconds at most) for the far ends.
    pub async fn hang_up_all(&self) {
        if let Some(sip) = &self.sip {
            sip.hang_up_all().await;
        }
    }
}

/// Builds the backend the config names, behind trunk pacing where it applies; refuses flags
/// that belong to the other backend.
pub async fn backend(config: &Config) -> Result<Backend, ServeError> {
    let (telephony, sip) = switch(config).await?;
    // SIP is always paced: a trunk that pushes back slows calldesk down even without limits.
    // The simulated switch only with a limit, so that tests see pacing without SIP.
    let paced = sip.is_some() || config.sip_max_cps.is_some() || config.sip_max_calls.is_some();
    if !paced {
        return Ok(Backend {
            telephony,
            lines: Lines { sip },
            pacer: None,
            pacing_wait: Duration::ZERO,
        });
    }
    // Without a limit nothing waits: a dial during a trunk's Retry-After fails TRUNK_BUSY at
    // once, and the originate timeout stays what it was.
    let limited = config.sip_max_cps.is_some() || config.sip_max_calls.is_some();
    let wait = if limited {
        config.sip_pacing_wait
    } else {
        Duration::ZERO
    };
    let pacer = Pacer::new(
        telephony,
        PacingLimits {
            max_cps: config.sip_max_cps,
            max_calls: config.sip_max_calls,
            wait,
        },
    );
    Ok(Backend {
        telephony: pacer.clone(),
        lines: Lines { sip },
        pacer: Some(pacer),
        pacing_wait: wait,
    })
}

/// The switch itself.
async fn switch(
    config: &Config,
) -> Result<(Arc<dyn Telephony>, Option<Arc<SipSwitch>>), ServeError> {
    match config.telephony {
        TelephonyKind::Sim => Ok((
            Arc::new(SimSwitch::new(SimTimings {
                ring: config.sim_ring,
                answer: config.sim_answer,
                no_answer: config.sim_no_answer,
                talk: config.sim_talk,
            })),
            None,
        )),
        TelephonyKind::Sip => {
            if !config.sim_flags_given.is_empty() {
                return Err(ServeError(format!(
                    "{} belong to the simulated switch and cannot be used with --telephony sip",
                    config.sim_flags_given.join(", ")
                )));
            }
            let switch = SipSwitch::start(sip_config(config)?)
                .await
                .map_err(|e| ServeError(format!("SIP: {e}")))?;
            Ok((switch.clone(), Some(switch)))
        }
    }
}

fn sip_config(config: &Config) -> Result<SipConfig, ServeError> {
    let sip = &config.sip;
    let agents = SipAgents::new(sip.sip_agent_uri.as_deref(), sip.sip_agents.as_deref())
        .map_err(ServeError)?;
    let Some(trunk) = sip.sip_trunk.clone() else {
        return Err(ServeError(
            "--telephony sip needs --sip-trunk URI: where customer calls go".to_owned(),
        ));
    };
    let mut settings = SipConfig::new(Arc::new(agents));
    settings.listen = sip.sip_listen;
    settings.transport = match sip.sip_transport {
        SipTransportKind::Udp => SipTransport::Udp,
        SipTransportKind::Tcp => SipTransport::Tcp,
        SipTransportKind::Tls => SipTransport::Tls,
    };
    settings.allow_from = sip.sip_allow_from.clone();
    settings.max_connections = sip.sip_max_connections as usize;
    settings.first_message_timeout = sip.sip_first_message_timeout;
    settings.idle_connection_timeout = sip.sip_idle_connection_timeout;
    settings.tls_identity = match (&sip.sip_tls_cert, &sip.sip_tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(TlsIdentity {
            cert_pem: read_pem(cert, "--sip-tls-cert")?,
            key_pem: read_pem(key, "--sip-tls-key")?,
        }),
        _ => {
            return Err(ServeError(
                "--sip-tls-cert and --sip-tls-key go together".to_owned(),
            ))
        }
    };
    settings.tls_ca_pem = sip
        .sip_tls_ca
        .as_deref()
        .map(|path| read_pem(path, "--sip-tls-ca"))
        .transpose()?;
    settings.trunk = trunk;
    settings.caller_id = sip.sip_caller_id.clone();
    settings.caller_name = sip.sip_caller_name.clone();
    settings.agent_auto_answer = sip.sip_agent_auto_answer;
    settings.send_uui = sip.sip_send_uui;
    settings.credential = credential(
        sip.sip_auth_user.as_deref(),
        sip.sip_auth_password_file.as_deref(),
        std::env::var(SIP_PASSWORD_ENV).ok(),
    )?;
    settings.agent_answer_timeout = sip.sip_agent_answer_timeout;
    settings.no_answer_timeout = sip.sip_no_answer_timeout;
    settings.max_call_duration = config.max_call_duration;
    settings.keepalive_interval =
        (!sip.sip_keepalive_interval.is_zero()).then_some(sip.sip_keepalive_interval);
    Ok(settings)
}

/// A PEM file a flag names.
fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path)
        .map_err(|e| ServeError(format!("cannot read {flag} {}: {e}", path.display())))
}

/// The trunk's digest credential: a user and a password, both or neither. The password is read
/// from a file or the environment, never a flag (flags show in `ps`), and is never logged.
fn credential(
    user: Option<&str>,
    password_file: Option<&Path>,
    password_env: Option<String>,
) -> Result<Option<SipCredential>, ServeError> {
    let password = match password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ServeError(format!(
                    "cannot read --sip-auth-password-file {}: {e}",
                    path.display()
                ))
            })?;
            Some(text.lines().next().unwrap_or_default().to_owned())
        }
        None => password_env,
    };
    match (user, password) {
        (None, None) => Ok(None),
        (Some(user), Some(password)) if !password.is_empty() => Ok(Some(SipCredential {
            user: user.to_owned(),
            password,
        })),
        (Some(_), _) => Err(ServeError(format!(
            "--sip-auth-user needs a password: --sip-auth-password-file FILE or {SIP_PASSWORD_ENV}"
        ))),
        (None, Some(_)) => Err(ServeError(format!(
            "a SIP password was given (--sip-auth-password-file or {SIP_PASSWORD_ENV}) without \
             --sip-auth-user"
        ))),
    }
}
