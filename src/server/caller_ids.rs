//! `--caller-ids`: the file read at start-up (a bad one fails the start, naming the file and
//! line) and again on SIGHUP (a bad one keeps the previous reading), handed to the call manager
//! as [`CallerIds`] with `--sip-caller-id` for agents it gives no line.

use std::path::Path;

use super::{
    config::Config,
    error::ServeError,
    reload::{self, Reloadable},
};
use crate::caller_id::{CallerIds, Pools};

impl Reloadable for Pools {
    const WHAT: &'static str = "caller IDs";

    fn load(path: &Path) -> Result<Self, String> {
        Pools::load(path)
    }

    fn entries(&self) -> usize {
        Pools::entries(self)
    }
}

/// Loads what the config names: the file, and `--sip-caller-id` as everyone's fallback.
pub fn load(config: &Config) -> Result<CallerIds, ServeError> {
    let pools = config
        .caller_ids
        .as_deref()
        .map(reload::watch_file::<Pools>)
        .transpose()
        .map_err(ServeError)?;
    Ok(CallerIds::new(pools, config.sip.sip_caller_id.as_deref()))
}
