//! Where each agent's phone is: `--sip-agent-uri TEMPLATE` for everyone, overridden per agent by
//! `--sip-agents FILE` (one `AGENT_ID SIP_URI` line each, `#` starts a comment), which is re-read
//! on SIGHUP like the token file.

use std::{collections::HashMap, path::Path, sync::Arc};

use tokio::sync::watch;

use super::reload::{watch_file, Reloadable};
use crate::telephony::sip::{AgentDirectory, AgentPhone};

/// What `{agent}` in the template stands for.
const AGENT_PLACEHOLDER: &str = "{agent}";

/// The agents' phones the SIP backend rings first.
pub struct SipAgents {
    /// `--sip-agent-uri`, checked to hold `{agent}` in its user part only.
    template: Option<String>,
    /// The latest good reading of `--sip-agents`.
    file: Option<watch::Receiver<Arc<AgentPhones>>>,
    /// Changes with each new reading of the file (for the SIP port's allow list).
    changes: Option<watch::Receiver<()>>,
}

impl SipAgents {
    /// Checks the template and loads the file (re-read on SIGHUP); at least one is needed.
    pub fn new(template: Option<&str>, file: Option<&Path>) -> Result<Self, String> {
        if template.is_none() && file.is_none() {
            return Err(
                "--telephony sip needs --sip-agent-uri TEMPLATE or --sip-agents FILE \
                        to know where each agent's phone is"
                    .to_owned(),
            );
        }
        if let Some(template) = template {
            if !is_template(template) {
                return Err(format!(
                    "--sip-agent-uri {template:?} must be a sip: or sips: URI with \
                     {AGENT_PLACEHOLDER} in its user part (before the @), e.g. \
                     sip:{AGENT_PLACEHOLDER}@pbx.example.com"
                ));
            }
        }
        let file = file.map(watch_file).transpose()?;
        let changes = file.clone().map(forward_changes);
        Ok(Self {
            template: template.map(str::to_owned),
            file,
            changes,
        })
    }
}

/// A template the agent id can only fill the user part of: `sip:` or `sips:`, `{agent}` in
/// the user part and nowhere after the `@`, and a URI once filled.
fn is_template(template: &str) -> bool {
    let Some((scheme, rest)) = template.split_once(':') else {
        return false;
    };
    let Some((user, host)) = rest.split_once('@') else {
        return false;
    };
    matches!(scheme, "sip" | "sips")
        && is_sip_uri(template)
        && user.contains(AGENT_PLACEHOLDER)
        && !host.contains(AGENT_PLACEHOLDER)
        && !host.contains('@')
        && rsipstack::sip::Uri::try_from(template.replace(AGENT_PLACEHOLDER, "agent").as_str())
            .is_ok()
}

/// A signal that changes with each new reading of the file; the task that forwards them ends
/// when nobody follows it any more.
fn forward_changes(mut file: watch::Receiver<Arc<AgentPhones>>) -> watch::Receiver<()> {
    let (sender, changes) = watch::channel(());
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            loop {
                tokio::select! {
                    () = sender.closed() => return,
                    changed = file.changed() => if changed.is_err() { return },
                }
                sender.send_replace(());
            }
        });
    }
    changes
}

impl AgentDirectory for SipAgents {
    fn phone_for(&self, agent_id: &str) -> Option<AgentPhone> {
        if let Some(file) = &self.file {
            let phones = Arc::clone(&file.borrow());
            if let Some(uri) = phones.by_agent.get(agent_id) {
                return Some(AgentPhone {
                    uri: uri.clone(),
                    user: None,
                });
            }
        }
        let template = self.template.as_ref()?;
        // The user part is filled as a value, never pasted into URI text: the switch writes
        // it escaped (RFC 3261 §25.1), so an agent id cannot name a host, port or parameter.
        let (scheme, rest) = template.split_once(':')?;
        let (user, host) = rest.split_once('@')?;
        Some(AgentPhone {
            uri: format!("{scheme}:agent@{host}"),
            user: Some(user.replace(AGENT_PLACEHOLDER, agent_id)),
        })
    }

    fn peer_uris(&self) -> Vec<String> {
        let mut uris: Vec<String> = self.template.iter().cloned().collect();
        if let Some(file) = &self.file {
            uris.extend(file.borrow().by_agent.values().cloned());
        }
        uris
    }

    fn changes(&self) -> Option<watch::Receiver<()>> {
        self.changes.clone()
    }
}

/// One reading of `--sip-agents`.
struct AgentPhones {
    by_agent: HashMap<String, String>,
}

impl Reloadable for AgentPhones {
    const WHAT: &'static str = "SIP agent phones";

    fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read SIP agents file {}: {e}", path.display()))?;
        parse(path, &text)
    }

    fn entries(&self) -> usize {
        self.by_agent.len()
    }
}

fn parse(path: &Path, text: &str) -> Result<AgentPhones, String> {
    let mut by_agent = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = |what: String| format!("{}:{}: {what}", path.display(), n + 1);
        let mut words = line.split_whitespace();
        let (Some(agent), Some(uri), None) = (words.next(), words.next(), words.next()) else {
            return Err(at("expected `AGENT_ID SIP_URI`".to_owned()));
        };
        if !is_sip_uri(uri) {
            return Err(at(format!("{uri:?} is not a sip: or sips: URI")));
        }
        if by_agent.insert(agent.to_owned(), uri.to_owned()).is_some() {
            return Err(at(format!("agent {agent:?} is listed twice")));
        }
    }
    Ok(AgentPhones { by_agent })
}

fn is_sip_uri(s: &str) -> bool {
    (s.starts_with("sip:") || s.starts_with("sips:")) && !s.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_overrides_the_template_and_ids_are_escaped() {
        let phones = parse(
            Path::new("agents"),
            "# desk phones\nagent-7 sip:7001@pbx.example.com:5060 # Ann\n\n",
        );
        let Ok(phones) = phones else {
            panic!("{phones:?}", phones = phones.err());
        };
        assert_eq!(phones.by_agent.len(), 1);
        let (_tx, rx) = watch::channel(Arc::new(phones));
        let agents = SipAgents {
            template: Some("sip:{agent}@pbx.example.com".into()),
            file: Some(rx),
            changes: None,
        };
        let phone = |uri: &str, user: Option<&str>| {
            Some(AgentPhone {
                uri: uri.to_owned(),
                user: user.map(str::to_owned),
            })
        };
        assert_eq!(
            agents.phone_for("agent-7"),
            phone("sip:7001@pbx.example.com:5060", None)
        );
        assert_eq!(
            agents.phone_for("a@evil.example:1"),
            phone("sip:agent@pbx.example.com", Some("a@evil.example:1"))
        );
        assert_eq!(
            agents.peer_uris(),
            vec![
                "sip:{agent}@pbx.example.com".to_owned(),
                "sip:7001@pbx.example.com:5060".to_owned()
            ]
        );
        let prefixed = SipAgents {
            template: Some("sips:desk-{agent}@10.0.0.1:5061;transport=tls".into()),
            file: None,
            changes: None,
        };
        assert_eq!(
            prefixed.phone_for("127.0.0.2;x=y"),
            phone(
                "sips:agent@10.0.0.1:5061;transport=tls",
                Some("desk-127.0.0.2;x=y")
            )
        );
    }

    #[test]
    fn bad_lines_and_templates_are_refused_with_their_place() {
        let err = parse(Path::new("agents"), "a sip:1@h\nb http://x\n").err();
        assert_eq!(
            err.as_deref(),
            Some("agents:2: \"http://x\" is not a sip: or sips: URI")
        );
        let err = parse(Path::new("agents"), "a sip:1@h\na sip:2@h\n").err();
        assert!(err.is_some_and(|e| e.contains("listed twice")));
        assert!(SipAgents::new(Some("sip:pbx.example.com"), None).is_err());
        assert!(SipAgents::new(None, None).is_err());
        // The agent id may only fill the user part.
        for bad in [
            "sip:phone@{agent}.pbx.example.com",
            "sip:{agent}",
            "sip:7001@pbx.example.com;user={agent}",
            "http:{agent}@pbx.example.com",
            "sip:{agent}@",
        ] {
            assert!(SipAgents::new(Some(bad), None).is_err(), "{bad}");
        }
        assert!(SipAgents::new(Some("sips:{agent}@pbx.example.com:5061"), None).is_ok());
        assert!(SipAgents::new(Some("sip:agent-{agent}@10.0.0.1"), None).is_ok());
    }
}
