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

/// An agent id as a SIP URI user part (RFC 3261 §25.1): the unreserved characters (letters,
/// digits, `-_.!~*'()`) pass, every other byte is %-escaped. The user-unreserved ones (`;`,
/// `?`, `=`, `&`…) are escaped too: the grammar allows them in a user part, but parsers
/// (rsipstack's among them) read `sip:127.0.0.2;x=y@pbx` as the host 127.0.0.2, so that an
/// agent id could pick the host its call goes to.
fn escape_user(agent_id: &str) -> String {
    let mut out = String::with_capacity(agent_id.len());
    for byte in agent_id.bytes() {
        let c = char::from(byte);
        if c.is_ascii_alphanumeric() || "-_.!~*'()".contains(c) {
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
            changes: None,
        };
        assert_eq!(
            agents.uri_for("agent-7").as_deref(),
            Some("sip:7001@pbx.example.com:5060")
        );
        assert_eq!(
            agents.uri_for("a@evil.example:1").as_deref(),
            Some("sip:a%40evil.example%3A1@pbx.example.com")
        );
        assert_eq!(
            agents.peer_uris(),
            vec![
                "sip:{agent}@pbx.example.com".to_owned(),
                "sip:7001@pbx.example.com:5060".to_owned()
            ]
        );
    }

    /// Issue 21: with `sip:{agent}@pbx`, the agent id `127.0.0.2;x=y` made the INVITE go to
    /// 127.0.0.2. Whatever an agent id holds, the URI's host is the template's.
    #[test]
    fn no_agent_id_can_name_the_host_its_call_goes_to() {
        use rsipstack::sip::Uri;
        let agents = SipAgents {
            template: Some("sip:{agent}@pbx.example.com:5060;transport=tcp".into()),
            file: None,
            changes: None,
        };
        for hostile in [
            "127.0.0.2;x=y",
            "127.0.0.2",
            "a@127.0.0.2",
            "a@127.0.0.2:5060;",
            "a?x=y@h",
            "a:pw@127.0.0.2",
            "a%40127.0.0.2",
            "a>b<c",
            "a,b",
            "[::1]",
            "a/b#c",
            "é",
        ] {
            let uri = agents.uri_for(hostile).expect("a URI");
            let parsed = Uri::try_from(uri.as_str()).unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(
                parsed.host_with_port.to_string(),
                "pbx.example.com:5060",
                "{hostile:?} → {uri}"
            );
        }
        assert_eq!(
            agents.uri_for("127.0.0.2;x=y").as_deref(),
            Some("sip:127.0.0.2%3Bx%3Dy@pbx.example.com:5060;transport=tcp")
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
