//! The simulated switch: deterministic call outcomes by number, so that tests and demos can
//! drive every path of the lifecycle. Each call is a task that sleeps through its script and
//! reports signals; nothing is shared between calls.

use std::time::Duration;

use super::{Dial, SignalSink, SwitchOp, SwitchSignal, Telephony};
use crate::domain::TransferTarget;

/// The switch's delays (the `--sim-*` flags).
#[derive(Debug, Clone, Copy)]
pub struct SimTimings {
    /// Dial → ringing (and → busy or failure).
    pub ring: Duration,
    /// Ringing → answer.
    pub answer: Duration,
    /// How long the no-answer number rings before giving up.
    pub no_answer: Duration,
    /// How long the remote-hangup number talks.
    pub talk: Duration,
}

/// The scripted numbers of the contract (the fictional 555-01xx range).
pub const BUSY: &str = "+12025550101";
pub const NO_ANSWER: &str = "+12025550102";
pub const NETWORK_FAILURE: &str = "+12025550103";
pub const NEVER_ACKNOWLEDGED: &str = "+12025550104";
pub const REMOTE_HANGUP: &str = "+12025550105";

/// The simulated switch.
#[derive(Debug, Clone)]
pub struct SimSwitch {
    timings: SimTimings,
}

impl SimSwitch {
    pub fn new(timings: SimTimings) -> Self {
        Self { timings }
    }

    /// The signals a number produces, each after a delay from the one before.
    fn script(&self, phone_number: &str) -> Vec<(Duration, SwitchSignal)> {
        use SwitchSignal::*;
        let t = self.timings;
        let zero = Duration::ZERO;
        match phone_number {
            NEVER_ACKNOWLEDGED => vec![],
            BUSY => vec![(zero, Acknowledged), (t.ring, Busy)],
            NETWORK_FAILURE => vec![(zero, Acknowledged), (t.ring, Failed)],
            NO_ANSWER => vec![
                (zero, Acknowledged),
                (t.ring, Ringing),
                (t.no_answer, NoAnswer),
            ],
            REMOTE_HANGUP => vec![
                (zero, Acknowledged),
                (t.ring, Ringing),
                (t.answer, Answered),
                (t.talk, RemoteHangup),
            ],
            _ => vec![
                (zero, Acknowledged),
                (t.ring, Ringing),
                (t.answer, Answered),
            ],
        }
    }
}

impl SimSwitch {
    /// How a transfer, consultation or conference target behaves: after how long it answers
    /// (None refusal) or gives up, and why. The customer numbers' scripts apply to targets
    /// too (busy, no answer, failure); every other number, and every agent, answers.
    fn target_script(&self, target: &TransferTarget) -> (Duration, Option<String>) {
        let t = self.timings;
        let number = match target {
            TransferTarget::Number(number) => number.as_str(),
            TransferTarget::Agent(_) => "",
        };
        match number {
            BUSY => (t.ring, Some("the target is busy".to_owned())),
            NO_ANSWER => (
                t.ring + t.no_answer,
                Some(format!(
                    "the target did not answer within {:?}",
                    t.no_answer
                )),
            ),
            NETWORK_FAILURE | NEVER_ACKNOWLEDGED => {
                (t.ring, Some("the call to the target failed".to_owned()))
            }
            _ => (t.ring + t.answer, None),
        }
    }
}

impl Telephony for SimSwitch {
    fn originate(&self, dial: Dial, signals: SignalSink) {
        let script = self.script(&dial.phone_number);
        let call_id = dial.call_id;
        tokio::spawn(async move {
            for (delay, signal) in script {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if !signals.send(&call_id, signal).await {
                    return;
                }
            }
        });
    }

    fn hangup(&self, _call_id: &str) {
        // A simulated call has nobody on the line: the call manager ignores whatever the
        // script still reports for a call that has ended, and the script ends by itself.
    }

    fn switch(&self, call_id: &str, op: SwitchOp, signals: SignalSink) {
        // No media to re-negotiate: every operation takes effect, those that call a target
        // once the target's script says so. Reported from a task, as a real switch would, so
        // that the call manager never waits on its own channel.
        let call_id = call_id.to_owned();
        let (delay, refusal) = match &op {
            SwitchOp::Transfer { target, .. }
            | SwitchOp::Consult { target }
            | SwitchOp::Conference { target, .. } => self.target_script(target),
            SwitchOp::Hold
            | SwitchOp::Resume
            | SwitchOp::CompleteTransfer { .. }
            | SwitchOp::CancelConsult => (Duration::ZERO, None),
        };
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match refusal {
                None => signals.send(&call_id, SwitchSignal::Applied(op)).await,
                Some(why) => {
                    let refused = SwitchSignal::Refused(op);
                    signals.send_with_detail(&call_id, refused, why).await
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    fn switch() -> SimSwitch {
        SimSwitch::new(SimTimings {
            ring: Duration::from_millis(500),
            answer: Duration::from_secs(1),
            no_answer: Duration::from_secs(20),
            talk: Duration::from_secs(3),
        })
    }

    async fn run(number: &str, for_how_long: Duration) -> Vec<(u128, SwitchSignal)> {
        let (tx, mut rx) = mpsc::channel(16);
        let start = tokio::time::Instant::now();
        let dial = Dial {
            call_id: "c1".into(),
            agent_id: "a1".into(),
            phone_number: number.into(),
            caller_id: String::new(),
            associated_object: None,
        };
        switch().originate(dial, SignalSink::new(tx));
        let mut seen = vec![];
        let deadline = tokio::time::sleep(for_how_long);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                Some(report) = rx.recv() => {
                    assert_eq!(report.call_id, "c1");
                    seen.push((start.elapsed().as_millis(), report.signal));
                }
                _ = &mut deadline => return seen,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scripts_follow_the_contract_timings() {
        use SwitchSignal::*;
        let s = Duration::from_secs(60);
        assert_eq!(
            run("+12025550100", s).await,
            vec![(0, Acknowledged), (500, Ringing), (1500, Answered)]
        );
        assert_eq!(run(BUSY, s).await, vec![(0, Acknowledged), (500, Busy)]);
        assert_eq!(
            run(NETWORK_FAILURE, s).await,
            vec![(0, Acknowledged), (500, Failed)]
        );
        assert_eq!(
            run(NO_ANSWER, s).await,
            vec![(0, Acknowledged), (500, Ringing), (20_500, NoAnswer)]
        );
        assert_eq!(
            run(REMOTE_HANGUP, s).await,
            vec![
                (0, Acknowledged),
                (500, Ringing),
                (1500, Answered),
                (4500, RemoteHangup)
            ]
        );
        assert_eq!(run(NEVER_ACKNOWLEDGED, s).await, vec![]);
    }
}
