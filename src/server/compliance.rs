//! `--calling-hours` and `--dnc`: the files read at start-up (a bad one fails the start,
//! naming the file and line) and again on SIGHUP (a bad one keeps the previous reading), handed
//! to the call manager as [`Compliance`].

use std::path::{Path, PathBuf};

use super::{
    config::Config,
    error::ServeError,
    reload::{self, Reloadable, ReloadableFiles},
};
use crate::compliance::{CallingHours, Compliance, DncLists};

impl Reloadable for CallingHours {
    const WHAT: &'static str = "calling hours";

    fn load(path: &Path) -> Result<Self, String> {
        CallingHours::load(path)
    }

    fn entries(&self) -> usize {
        CallingHours::entries(self)
    }
}

impl ReloadableFiles for DncLists {
    const WHAT: &'static str = "do-not-call lists";

    fn load(paths: &[PathBuf]) -> Result<Self, String> {
        DncLists::load(paths)
    }

    fn entries(&self) -> usize {
        DncLists::entries(self)
    }
}

/// Loads what the config names; off where it names nothing.
pub fn load(config: &Config) -> Result<Compliance, ServeError> {
    let calling_hours = config
        .calling_hours
        .as_deref()
        .map(reload::watch_file::<CallingHours>)
        .transpose()
        .map_err(ServeError)?;
    let dnc = (!config.dnc.is_empty())
        .then(|| reload::watch_files::<DncLists>(&config.dnc))
        .transpose()
        .map_err(ServeError)?;
    Ok(Compliance::new(calling_hours, dnc))
}
