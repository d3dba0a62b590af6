//! The live calls: each call task's command queue, by call id, and what the switch may ask of
//! a call while it runs.
//!
//! The switch ([`super::SipSwitch`]) registers a call before its task starts and the task
//! removes itself when it ends, so that a call id is in here exactly while its task runs.

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};

use futures_channel::mpsc;
use futures_core::Stream;
use tokio::sync::oneshot;

use super::super::{SignalSink, SwitchOp};

/// Commands one call may have waiting. The call manager sends a call at most one hold or
/// resume at a time and then a hang-up, so a full queue means the call task is stuck.
const COMMANDS_PER_CALL: usize = 8;

/// A call task's queue of commands: futures' bounded channel, which allocates a command only
/// while it waits. tokio's allocates 32 slots with the channel and pads its halves to cache
/// lines: ~0.8 KiB of every live call, for commands that are rare (a hang-up, a hold). Boxed:
/// the channel keeps one empty node as large as a message.
pub(super) type Commands = mpsc::Receiver<Box<Command>>;
/// Where commands to a call task go.
pub(super) type CommandSender = mpsc::Sender<Box<Command>>;

/// A call task's command queue: the sender to register, and its receiver.
pub(super) fn command_queue() -> (CommandSender, Commands) {
    // Its one sender (the one registered) has a slot of its own beyond the buffer.
    mpsc::channel(COMMANDS_PER_CALL - 1)
}

/// The next command; None once no sender is left (the switch forgot the call).
pub(super) async fn next_command(commands: &mut Commands) -> Option<Command> {
    let command = poll_fn(|cx| Pin::new(&mut *commands).poll_next(cx)).await;
    command.map(|c| *c)
}

/// What the switch asks of a live call. `span` is the work of the request that asked (the
/// EndCall's, the HoldCall's): the SIP transactions it leads to are its children in a trace.
pub(super) enum Command {
    /// CANCEL or BYE every leg; report nothing more.
    Hangup { span: tracing::Span },
    /// Carry out a switch operation (hold, resume); exactly one `Applied` or `Refused`
    /// follows on `sink`.
    Switch {
        op: SwitchOp,
        sink: SignalSink,
        span: tracing::Span,
    },
    /// Like `Hangup`, then say so.
    Shutdown(oneshot::Sender<()>),
}

/// Why a command did not reach a call.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unsent {
    /// No task runs for this call id.
    NoSuchCall,
    /// Its queue is full: the task is stuck.
    Full,
}

/// Every live call's queue, and which of them were told to hang up.
#[derive(Default)]
pub(super) struct LiveCalls {
    /// A call's queue, from its registration until its task ends.
    queues: Mutex<HashMap<String, CommandSender>>,
    /// Calls told to hang up ([`LiveCalls::hang_up`]) whose task may still be ending:
    /// shutdown neither waits for them nor warns of them (their CANCEL or BYE went out then).
    ending: Mutex<HashSet<String>>,
}

impl LiveCalls {
    fn queues(&self) -> MutexGuard<'_, HashMap<String, CommandSender>> {
        // A poisoned map is still a valid map: every writer only inserts or removes.
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ending(&self) -> MutexGuard<'_, HashSet<String>> {
        self.ending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a call's queue; false (and nothing changed) when that id is already live.
    pub fn register(&self, call_id: &str, queue: CommandSender) -> bool {
        let mut queues = self.queues();
        if queues.contains_key(call_id) {
            return false;
        }
        queues.insert(call_id.to_owned(), queue);
        true
    }

    /// The call `from` goes on as `to` (a transfer to an agent: its new interaction's id).
    pub fn rename(&self, from: &str, to: &str) {
        let mut queues = self.queues();
        if let Some(queue) = queues.remove(from) {
            queues.insert(to.to_owned(), queue);
        }
    }

    /// Forgets a call whose task has ended.
    pub fn remove(&self, call_id: &str) {
        self.queues().remove(call_id);
    }

    /// Sends `command` to the call without waiting.
    pub fn send(&self, call_id: &str, command: Command) -> Result<(), Unsent> {
        let mut queues = self.queues();
        let queue = queues.get_mut(call_id).ok_or(Unsent::NoSuchCall)?;
        queue.try_send(Box::new(command)).map_err(|_| Unsent::Full)
    }

    /// Tells the call to hang up (for the request whose work is `span`), and remembers that
    /// it is ending.
    pub fn hang_up(&self, call_id: &str, span: tracing::Span) {
        // The queues, then the set: the order `shut_down_all` takes them in.
        let mut queues = self.queues();
        if let Some(queue) = queues.get_mut(call_id) {
            let _ = queue.try_send(Box::new(Command::Hangup { span }));
            let mut ending = self.ending();
            // Only calls whose task still runs: the set stays as small as they are.
            ending.retain(|id| queues.contains_key(id));
            ending.insert(call_id.to_owned());
        }
    }

    /// Tells every call not already ending to shut down; returns each one told, with the
    /// receiver its task answers on once its legs have ended.
    pub fn shut_down_all(&self) -> Vec<(String, oneshot::Receiver<()>)> {
        let mut queues = self.queues();
        let ending = self.ending();
        queues
            .iter_mut()
            .filter(|(call_id, _)| !ending.contains(*call_id))
            .filter_map(|(call_id, queue)| {
                let (done, wait) = oneshot::channel();
                queue
                    .try_send(Box::new(Command::Shutdown(done)))
                    .ok()
                    .map(|()| (call_id.clone(), wait))
            })
            .collect()
    }

    /// Which of `call_ids` still have a task running.
    pub fn still_live<'a>(&self, call_ids: &'a [String]) -> Vec<&'a String> {
        let queues = self.queues();
        call_ids
            .iter()
            .filter(|id| queues.contains_key(*id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue of one command.
    fn queue() -> (CommandSender, Commands) {
        mpsc::channel(0)
    }

    #[test]
    fn a_call_id_is_registered_once_until_removed() {
        let live = LiveCalls::default();
        let (first, _first) = queue();
        let (second, _second) = queue();
        assert!(live.register("a", first.clone()));
        assert!(!live.register("a", second));
        live.remove("a");
        assert!(live.register("a", first));
    }

    #[test]
    fn commands_reach_only_live_calls_and_a_full_queue_is_told() {
        let live = LiveCalls::default();
        let (sender, mut receiver) = queue();
        live.register("a", sender);
        let hangup = || Command::Hangup {
            span: tracing::Span::none(),
        };
        assert_eq!(live.send("b", hangup()), Err(Unsent::NoSuchCall));
        assert_eq!(live.send("a", hangup()), Ok(()));
        assert_eq!(live.send("a", hangup()), Err(Unsent::Full));
        assert!(matches!(receiver.try_recv(), Ok(c) if matches!(*c, Command::Hangup { .. })));
    }

    #[test]
    fn shutdown_skips_calls_already_hung_up_and_still_live_lists_running_tasks() {
        let live = LiveCalls::default();
        let (a, mut a_queue) = queue();
        let (b, mut b_queue) = queue();
        live.register("a", a);
        live.register("b", b);
        live.hang_up("a", tracing::Span::none());
        assert!(matches!(a_queue.try_recv(), Ok(c) if matches!(*c, Command::Hangup { .. })));
        let told: Vec<String> = live.shut_down_all().into_iter().map(|(id, _)| id).collect();
        assert_eq!(told, ["b"]);
        assert!(matches!(b_queue.try_recv(), Ok(c) if matches!(*c, Command::Shutdown(_))));
        live.remove("b");
        let ids = ["a".to_owned(), "b".to_owned()];
        assert_eq!(live.still_live(&ids), [&ids[0]]);
    }
}
