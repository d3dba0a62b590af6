//! Dialing within the law: `--calling-hours` (when a number may be called, in the called
//! party's local time) and `--dnc` (numbers never to call). Both are off unless configured.
//!
//! The server loads the files (and re-reads them on SIGHUP) and hands the current readings in
//! as watch receivers; [`Compliance::check`] answers for one number at one instant. The call
//! manager asks it before a dial, outside its actor: a DNC lookup is a binary search, a
//! calling-hours check a few time-zone conversions.
//!
//! The parts: [`calling_hours`] (the file and the pure rule), [`zones`] (a number's country,
//! subdivision and time zones, from data), [`dnc`] (the lists).

pub mod calling_hours;
pub mod dnc;
pub mod zones;

use std::{sync::Arc, time::SystemTime};

use tokio::sync::watch;

pub use calling_hours::CallingHours;
pub use dnc::DncLists;

use crate::domain::CallError;

/// The current calling hours and do-not-call lists; either may be off. Clone it freely.
#[derive(Debug, Clone, Default)]
pub struct Compliance {
    /// `--calling-hours`: the latest good reading of the file.
    calling_hours: Option<watch::Receiver<Arc<CallingHours>>>,
    /// `--dnc`: the latest good reading of every list.
    dnc: Option<watch::Receiver<Arc<DncLists>>>,
}

impl Compliance {
    pub fn new(
        calling_hours: Option<watch::Receiver<Arc<CallingHours>>>,
        dnc: Option<watch::Receiver<Arc<DncLists>>>,
    ) -> Self {
        if calling_hours.is_some() {
            zones::warm_up();
        }
        Self { calling_hours, dnc }
    }

    /// Whether `e164` may be dialed at `now`: `DoNotCall` first (a listed number is never
    /// called), then `OutsideCallingHours`.
    pub fn check(&self, e164: &str, now: SystemTime) -> Result<(), CallError> {
        if let Some(dnc) = &self.dnc {
            let lists = dnc.borrow().clone();
            if let Some(list) = lists.lookup(e164) {
                return Err(CallError::DoNotCall {
                    list: list.to_owned(),
                });
            }
        }
        if let Some(hours) = &self.calling_hours {
            let hours = hours.borrow().clone();
            let now = jiff::Timestamp::try_from(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            hours
                .check(e164, now)
                .map_err(CallError::OutsideCallingHours)?;
        }
        Ok(())
    }
}

/// A number as refusals log it: its last 4 digits only (`…0100`).
pub fn last_four(number: &str) -> String {
    let start = number.len().saturating_sub(4);
    format!("…{}", number.get(start..).unwrap_or_default())
}
