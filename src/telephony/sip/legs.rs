//! A call's legs, by role: where the next event comes from, and how they all end.
//!
//! A call starts with none, gains the agent's phone and then the customer; a third party
//! (a transfer's target, a conference) would be one more [`Role`] here, and every phase that
//! waits on the legs hears from it without a change.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use super::super::SignalSink;
use super::dialog_store::{self, AnsweredTarget};
use super::engine::Engine;
use super::leg::{Leg, LegEvent, Role};

pub(super) struct Legs {
    /// In the order they were started, at most one per role: events are taken in this order.
    legs: Vec<Leg>,
    /// While a third party is called (a transfer's target): where each leg added is reported
    /// for the store, so that a restart can CANCEL its INVITE (dialog_store.rs).
    reporter: Option<Reporter>,
    /// What the reporter was last given, by its [`dialog_store::fingerprint`].
    reported: Option<u64>,
}

/// Where [`Legs::add`] reports the call's dialogs, and what it needs for that.
pub(super) struct Reporter {
    pub sink: SignalSink,
    /// The call manager's id for the call.
    pub call_id: String,
    /// The media is held (it is stored with the dialogs).
    pub held: bool,
}

/// A leg the call's phase expected is not there: a bug, reported as the call's failure.
#[derive(Debug)]
pub(super) struct Missing(pub Role);

impl Default for Legs {
    /// Room for a call's two legs: a first push would make room for four (~0.3 KiB more of
    /// every live call); a third party's leg, which is rare, makes that room then.
    fn default() -> Self {
        Legs {
            legs: Vec::with_capacity(2),
            reporter: None,
            reported: None,
        }
    }
}

impl Legs {
    /// Parks every leg that may be parked (parked.rs): the call waits.
    pub fn park(&mut self, engine: &Engine) {
        for leg in &mut self.legs {
            leg.park(engine);
        }
    }

    /// Adds a started leg (replacing none: a role is started once), and reports the call's
    /// dialogs with its INVITE while a [`Reporter`] is set.
    pub fn add(&mut self, leg: Leg) {
        debug_assert!(self.legs.iter().all(|l| l.role != leg.role));
        self.legs.push(leg);
        self.report();
    }

    /// Reports the call's dialogs while a [`Reporter`] is set, unless they are as last
    /// reported (a leg's INVITE sent again after a 401/407 changes them).
    pub fn report(&mut self) {
        let Some(reporter) = self.reporter.take() else {
            return;
        };
        if let Some(dialogs) = dialog_store::call_dialogs(self, reporter.held, AnsweredTarget::Left)
        {
            let fingerprint = dialog_store::fingerprint(&dialogs);
            if self.reported != Some(fingerprint) {
                if reporter.sink.try_send_dialogs(&reporter.call_id, dialogs) {
                    self.reported = Some(fingerprint);
                } else {
                    tracing::debug!(call_id = %reporter.call_id, "a leg's INVITE was not reported");
                }
            }
        }
        self.reporter = Some(reporter);
    }

    /// Reports each leg added from now on to `reporter` (None: no more).
    pub fn report_to(&mut self, reporter: Option<Reporter>) {
        self.reporter = reporter;
        self.reported = None;
    }

    /// Takes a leg out of the call (a transfer hands the agent's place to its target).
    pub fn remove(&mut self, role: Role) -> Option<Leg> {
        let index = self.legs.iter().position(|leg| leg.role == role)?;
        Some(self.legs.remove(index))
    }

    pub fn get_mut(&mut self, role: Role) -> Result<&mut Leg, Missing> {
        self.legs
            .iter_mut()
            .find(|leg| leg.role == role)
            .ok_or(Missing(role))
    }

    /// Two different legs at once (a hold re-INVITEs both).
    pub fn pair_mut(&mut self, a: Role, b: Role) -> Result<(&mut Leg, &mut Leg), Missing> {
        let index = |role| {
            self.legs
                .iter()
                .position(|leg| leg.role == role)
                .ok_or(Missing(role))
        };
        let (i, j) = (index(a)?, index(b)?);
        if i == j {
            return Err(Missing(b));
        }
        let (low, high) = self.legs.split_at_mut(i.max(j));
        let (first, second) = (&mut low[i.min(j)], &mut high[0]);
        Ok(if i < j {
            (first, second)
        } else {
            (second, first)
        })
    }

    /// The next event on any leg, with its role; pending while there is none.
    pub async fn next_event(&mut self) -> (Role, LegEvent) {
        poll_fn(|cx| {
            for leg in &mut self.legs {
                if let Poll::Ready(event) = leg.poll_event(cx) {
                    return Poll::Ready((leg.role, event));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Ends every leg at once (CANCEL or BYE) and waits for them all.
    pub async fn end_all(&mut self, engine: &Arc<Engine>) {
        let mut ending: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = self
            .legs
            .iter_mut()
            .map(|leg| Box::pin(leg.end(engine)) as Pin<Box<dyn Future<Output = ()> + Send>>)
            .collect();
        poll_fn(|cx| {
            ending.retain_mut(|end| end.as_mut().poll(cx).is_pending());
            if ending.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}
