//! Parked dialogs: a connected call spends nearly all of its life waiting, and while it waits
//! each leg's dialog is kept here, as the text of rsipstack's `DialogSnapshot` of it (~0.5 KiB),
//! instead of
//! in rsipstack's dialog layer (its `DialogInner`, the INVITE transaction's channel it holds,
//! its copies of requests: ~13 KiB a leg). BENCHMARKS.md (SIP): 37.3 → 11.4 KiB per live call.
//!
//! A parked dialog goes back into the dialog layer, with rsipstack's
//! `DialogLayer::restore_from_snapshot` (as a restart's adoption does, dialog_store.rs), when
//! the call acts on the leg ([`Leg::dialog`](super::leg::Leg::dialog)) or when a request of the
//! dialog arrives (incoming.rs, before it is matched); the call parks it again once it waits
//! again ([`Leg::park`](super::leg::Leg::park)). The edge counts parked dialogs as known, so
//! their requests are let in.
//!
//! Parking and unparking hold one lock across the dialog layer's change and this table's, so
//! a dialog is always in one of the two.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rsipstack::dialog::dialog::{DialogSnapshot, DialogStateSender, SessionIdState};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::DialogId;

use super::dialog_store::DialogText;
use super::edge::OtherDialogs;

/// How long a connected call waits with nothing happening before its dialogs are parked: a
/// call ended at once (the benchmark's calls/s) never pays for parking and taking back, one
/// that talks is parked a moment in. Not longer: the dialogs of every call answered within it
/// are live at once (at 1,500 answers/s, 1 s of them held ~35 MiB more at the peak, which the
/// allocator keeps).
pub(super) const PARK_AFTER: Duration = Duration::from_millis(250);

/// `calldesk_sip_parked_dialogs`: how many there are (docs/guide/operations.md).
const GAUGE: &str = "calldesk_sip_parked_dialogs";

pub(super) struct ParkedDialogs {
    /// Each parked dialog, as it was when it was parked.
    dialogs: Mutex<HashMap<DialogId, Parked>>,
}

/// A parked dialog: its snapshot as text, with what the text leaves out.
struct Parked {
    text: DialogText,
    supports_100rel: bool,
    session_id: Option<SessionIdState>,
}

impl Parked {
    fn of(snapshot: DialogSnapshot) -> Parked {
        let (supports_100rel, session_id) = (snapshot.supports_100rel, snapshot.session_id.clone());
        let (_, text) = DialogText::of(snapshot);
        Parked {
            text,
            supports_100rel,
            session_id,
        }
    }

    fn snapshot(&self, id: &DialogId) -> Result<DialogSnapshot, String> {
        let mut snapshot = self.text.snapshot(id.clone())?;
        snapshot.supports_100rel = self.supports_100rel;
        snapshot.session_id = self.session_id.clone();
        Ok(snapshot)
    }
}

impl ParkedDialogs {
    /// None yet (the gauge is exposed at 0).
    pub fn new() -> Self {
        metrics::gauge!(GAUGE).set(0.0);
        ParkedDialogs {
            dialogs: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DialogId, Parked>> {
        // A panic while the lock was held left the table whole (each change is one call).
        self.dialogs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `id` is parked here.
    pub fn contains(&self, id: &DialogId) -> bool {
        self.lock().contains_key(id)
    }

    /// Takes the dialog `snapshot` was taken of out of the dialog layer, and keeps the
    /// snapshot in its place.
    pub fn park(&self, layer: &DialogLayer, snapshot: DialogSnapshot) {
        let mut parked = self.lock();
        layer.remove_dialog(&snapshot.id);
        let id = snapshot.id.clone();
        parked.insert(id, Parked::of(snapshot));
        metrics::gauge!(GAUGE).set(parked.len() as f64);
    }

    /// Puts dialog `id` back into the dialog layer if it is parked (its changes reported on
    /// `states`). Ok when it is in the layer now or was not parked; an error when it was
    /// parked and could not be restored (it is then lost: its leg is as good as ended).
    pub fn unpark(
        &self,
        layer: &DialogLayer,
        states: DialogStateSender,
        id: &DialogId,
    ) -> Result<(), String> {
        let mut parked = self.lock();
        let Some(stored) = parked.remove(id) else {
            return Ok(());
        };
        metrics::gauge!(GAUGE).set(parked.len() as f64);
        let snapshot = stored.snapshot(id)?;
        layer
            .restore_from_snapshot(snapshot, states)
            .map(|_| ())
            .map_err(|_| "a parked dialog could not be restored".to_owned())
    }

    /// The snapshot of dialog `id` as it was parked, if it is.
    pub fn snapshot(&self, id: &DialogId) -> Option<DialogSnapshot> {
        self.lock().get(id)?.snapshot(id).ok()
    }

    /// Forgets dialog `id` (its leg is gone).
    pub fn forget(&self, id: &DialogId) {
        let mut parked = self.lock();
        if parked.remove(id).is_some() {
            metrics::gauge!(GAUGE).set(parked.len() as f64);
        }
    }
}

impl OtherDialogs for ParkedDialogs {
    fn contains(&self, id: &DialogId) -> bool {
        ParkedDialogs::contains(self, id)
    }
}
