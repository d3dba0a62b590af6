//! Who the customer sees calling: each agent's caller IDs (`--caller-ids`, re-read on SIGHUP),
//! the check of the one a StartCall asks for, and, when it asks for none, the choice of the
//! closest one (local presence).
//!
//! The server loads the file and hands the current reading in as a watch receiver; the call
//! manager asks [`CallerIds::choose`] before a dial or a staging, outside its actor (a lookup
//! and, for local presence, a few table lookups per number of the pool).
//!
//! The parts: [`pools`] (the file), [`presence`] (the pure rule of local presence).

pub mod pools;
pub mod presence;

use std::sync::Arc;

use tokio::sync::watch;

pub use pools::Pools;

use crate::domain::CallError;

/// The current caller IDs of every agent. Clone it freely.
#[derive(Debug, Clone, Default)]
pub struct CallerIds {
    /// `--caller-ids`: the latest good reading of the file.
    pools: Option<watch::Receiver<Arc<Pools>>>,
    /// `--sip-caller-id`: everyone's one caller ID without the file, and that of an agent the
    /// file gives no line to (nor a `*` line).
    fallback: Option<Arc<str>>,
}

/// What one agent may present, the default first; empty when the server has none configured.
pub type Pool = Arc<[String]>;

impl CallerIds {
    pub fn new(pools: Option<watch::Receiver<Arc<Pools>>>, fallback: Option<&str>) -> Self {
        if pools.is_some() {
            crate::compliance::zones::warm_up();
        }
        Self {
            pools,
            fallback: fallback.map(Arc::from),
        }
    }

    /// The agent's caller IDs, the default first: its own line of the file, else the `*`
    /// line, else `--sip-caller-id` alone (or none).
    pub fn pool(&self, agent_id: &str) -> Pool {
        if let Some(pools) = &self.pools {
            let pools = Arc::clone(&pools.borrow());
            if let Some(pool) = pools.of(agent_id) {
                return pool;
            }
        }
        match &self.fallback {
            Some(number) => Arc::from([number.to_string()]),
            None => Arc::from([]),
        }
    }

    /// The caller ID to present on a call of `agent_id` to `customer`: `requested` if it is
    /// one of the agent's (else `CallerIdNotAllowed`), or, without one, the pool's number
    /// closest to the customer's ([`presence::closest`]); empty when the pool is.
    pub fn choose(
        &self,
        agent_id: &str,
        requested: Option<&str>,
        customer: &str,
    ) -> Result<String, CallError> {
        let pool = self.pool(agent_id);
        match requested {
            Some(number) if pool.iter().any(|n| n == number) => Ok(number.to_owned()),
            Some(number) => Err(CallError::CallerIdNotAllowed {
                caller_id: number.to_owned(),
            }),
            None => Ok(presence::closest(&pool, customer)
                .map(str::to_owned)
                .unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str, fallback: Option<&str>) -> CallerIds {
        let pools = pools::parse(std::path::Path::new("ids"), text).expect("a good file");
        let (tx, rx) = watch::channel(Arc::new(pools));
        std::mem::forget(tx);
        CallerIds::new(Some(rx), fallback)
    }

    #[test]
    fn without_the_file_everyone_has_the_sip_caller_id_or_nothing() {
        let ids = CallerIds::new(None, Some("+12025550100"));
        assert_eq!(&*ids.pool("anyone"), ["+12025550100"]);
        assert_eq!(
            ids.choose("a", None, "+442079460000").as_deref(),
            Ok("+12025550100")
        );
        assert_eq!(
            ids.choose("a", Some("+12025550100"), "+1").as_deref(),
            Ok("+12025550100")
        );
        assert_eq!(
            ids.choose("a", Some("+12025550199"), "+1"),
            Err(CallError::CallerIdNotAllowed {
                caller_id: "+12025550199".into()
            })
        );
        let none = CallerIds::default();
        assert!(none.pool("a").is_empty());
        assert_eq!(none.choose("a", None, "+12025550100").as_deref(), Ok(""));
        assert!(none.choose("a", Some("+12025550100"), "+1").is_err());
    }

    #[test]
    fn an_agent_has_its_own_line_else_the_star_line_else_the_fallback() {
        let ids = with_file(
            "ann +12125550100 +13105550100\n* +18005550100\n",
            Some("+12025550100"),
        );
        assert_eq!(&*ids.pool("ann"), ["+12125550100", "+13105550100"]);
        assert_eq!(&*ids.pool("bob"), ["+18005550100"]);
        assert!(ids.choose("bob", Some("+12125550100"), "+1").is_err());
        let no_star = with_file("ann +12125550100\n", Some("+12025550100"));
        assert_eq!(&*no_star.pool("bob"), ["+12025550100"]);
    }
}
