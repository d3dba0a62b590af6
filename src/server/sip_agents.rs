//! Where each agent's phone is: `--sip-agent-uri TEMPLATE` for everyone, overridden per agent by
//! `--sip-agents FILE` (one `AGENT_ID SIP_URI` line each, `#` starts a comment), which is re-read
//! on SIGHUP like the token file.

use std::{collections::HashMap, path::Path, sync::Arc};

use tokio::sync::watch;

use super::reload::{watch_file, Reloadable};
use crate::telephony::sip::AgentDirectory;

/// What `{agent}` in the template stands for.
const AGENT_PLACEHOLDER: &str = "{agent}";

/// The agents' phones the SIP backend rings first.
pub struct SipAgents {
    /// `--sip-agent-uri`, checked to hold `{agent}`.
    template: Option<String>,
    /// The latest good reading of `--sip-agents`.
    file: Option<watch::Receiver<Arc<AgentPhones>>>,
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
            if !is_sip_uri(template) || !template.contains(AGENT_PLACEHOLDER) {
                return Err(format!(
                    "--sip-agent-uri {template:?} must be a sip: or sips: URI containing \
                     {AGENT_PLACEHOLDER}, e.g. sip:{AGENT_PLACEHOLDER}@pbx.example.com"
                ));
            }
        }
        Ok(Self {
            template: template.map(str::to_owned),
            file: file.map(watch_file).transpose()?,
        })
    }
}

impl AgentDirectory for SipAgents {
    fn uri_for(&self, agent_id: &str) -> Option<String> {
        if let Some(file) = &self.file {
            let phones = Arc::clone(&file.borrow());
            if let Some(uri) = phones.by_agent.get(agent_id) {
                return Some(uri.clone());
            }
        }
        let template = self.template.as_ref()?;
        Some(template.replace(AGENT_PLACEHOLDER, &escape_user(agent_id)))
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

/// An agent id as a SIP URI user part (RFC 3261 §25.1): unreserved characters and the
/// user-unreserved ones pass, anything else is %-escaped, so that an id holding `@` or `:`
/// cannot change the host the call goes to.
fn escape_user(agent_id: &str) -> String {
    let mut out = String::with_capacity(agent_id.len());
    for byte in agent_id.bytes() {
        let c = char::from(byte);
        if c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c) {
            out.push(c);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
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
        };
        assert_eq!(
            agents.uri_for("agent-7").as_deref(),
            Some("sip:7001@pbx.example.com:5060")
        );
        assert_eq!(
            agents.uri_for("a@evil.example:1").as_deref(),
            Some("sip:a%40evil.example%3A1@pbx.example.com")
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
    }
}
