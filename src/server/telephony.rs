//! The one place a telephony backend is chosen: the config names it, this builds it.
//!
//! Every backend implements [`Telephony`]; nothing else in the service knows which one runs.

use std::sync::Arc;

use super::{config::Config, ServeError};
use crate::telephony::{SimSwitch, SimTimings, Telephony};

/// Builds the backend the config names. Today that is the simulated switch; a new backend
/// (`--telephony ...`) is added here and in [`crate::telephony`], and nowhere else.
pub fn backend(config: &Config) -> Result<Arc<dyn Telephony>, ServeError> {
    Ok(Arc::new(SimSwitch::new(SimTimings {
        ring: config.sim_ring,
        answer: config.sim_answer,
        no_answer: config.sim_no_answer,
        talk: config.sim_talk,
    })))
}
