//! Parked dialogs: a connected call spends nearly all of its life waiting, and while it waits
//! each leg's dialog is kept here, as rsipstack's `DialogSnapshot` of it (~1 KiB), instead of
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

use rsipstack::dialog::dialog::{DialogSnapshot, DialogStateSender};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::DialogId;

use super::edge::OtherDialogs;

/// `calldesk_sip_parked_dialogs`: how many there are (docs/guide/operations.md).
const GAUGE: &str = "calldesk_sip_parked_dialogs";

pub(super) struct ParkedDialogs {
    /// Each parked dialog, as rsipstack's snapshot of it when it was parked.
    dialogs: Mutex<HashMap<DialogId, DialogSnapshot>>,
}

impl ParkedDialogs {
    /// None yet (the gauge is exposed at 0).
    pub fn new() -> Self {
        metrics::gauge!(GAUGE).set(0.0);
        ParkedDialogs {
            dialogs: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DialogId, DialogSnapshot>> {
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
        parked.insert(snapshot.id.clone(), snapshot);
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
        let Some(snapshot) = parked.remove(id) else {
            return Ok(());
        };
        metrics::gauge!(GAUGE).set(parked.len() as f64);
        layer
            .restore_from_snapshot(snapshot, states)
            .map(|_| ())
            .map_err(|_| "a parked dialog could not be restored".to_owned())
    }

    /// A copy of the snapshot of dialog `id`, if it is parked.
    pub fn snapshot(&self, id: &DialogId) -> Option<DialogSnapshot> {
        self.lock().get(id).cloned()
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
