//! A broadcast whose buffer holds only what its slowest receiver has not read, up to its
//! capacity: an agent's feed (WatchInteractions) costs the events in flight, not its capacity.
//!
//! tokio's broadcast allocates every slot up front and keeps the last `capacity` values: with
//! 1,024 slots that is ~80 KiB per agent watched, 800 MiB for 10,000 agents' consoles
//! (BENCHMARKS.md, day). The semantics here are tokio's: a receiver sees the values sent after
//! it subscribed, in order; one more than `capacity` behind loses the oldest and is told how
//! many (`Lagged`); once the sender is dropped, receivers read what is left, then `Closed`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast::error::RecvError, Notify};

/// Creates a feed holding at most `capacity` values unread by its slowest receiver.
pub fn channel<T: Clone>(capacity: usize) -> Sender<T> {
    Sender {
        shared: Arc::new(Shared {
            state: Mutex::new(State {
                buffer: VecDeque::new(),
                first: 0,
                positions: Vec::new(),
                free: Vec::new(),
                receivers: 0,
                closed: false,
            }),
            sent: Notify::new(),
            capacity: capacity.max(1),
        }),
    }
}

/// The sending side: one per feed; dropping it closes the feed.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// One receiver's place in the feed.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Its slot in `State::positions`.
    slot: usize,
    /// The position of the next value it reads.
    next: u64,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Woken on every send and on close.
    sent: Notify,
    /// The most values kept for a receiver that falls behind.
    capacity: usize,
}

struct State<T> {
    /// The values some receiver has not read, oldest first.
    buffer: VecDeque<T>,
    /// The position of `buffer[0]`: every value sent has the next position.
    first: u64,
    /// Each receiver's next position, by slot (None: a free slot), to know what all have read.
    positions: Vec<Option<u64>>,
    /// Free slots of `positions`.
    free: Vec<usize>,
    /// Receivers alive.
    receivers: usize,
    /// The sender was dropped.
    closed: bool,
}

impl<T> State<T> {
    fn end(&self) -> u64 {
        self.first + self.buffer.len() as u64
    }

    /// Drops the values every receiver has read, and those beyond `capacity`.
    fn trim(&mut self, capacity: usize) {
        let slowest = self.positions.iter().flatten().min().copied();
        let read_by_all = slowest.unwrap_or_else(|| self.end());
        while self.first < read_by_all || self.buffer.len() > capacity {
            if self.buffer.pop_front().is_none() {
                break;
            }
            self.first += 1;
        }
        // A burst grew the buffer; give the memory back once it is mostly read.
        if self.buffer.capacity() > 64 && self.buffer.len() < self.buffer.capacity() / 4 {
            self.buffer.shrink_to(self.buffer.len() * 2);
        }
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic elsewhere while holding it leaves plain data: go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Clone> Sender<T> {
    /// Sends `value` to every receiver; the number of receivers, or the value back if there
    /// are none (as tokio's).
    pub fn send(&self, value: T) -> Result<usize, T> {
        let receivers = {
            let mut state = self.shared.lock();
            if state.receivers == 0 {
                return Err(value);
            }
            state.buffer.push_back(value);
            state.trim(self.shared.capacity);
            state.receivers
        };
        self.shared.sent.notify_waiters();
        Ok(receivers)
    }

    /// A receiver of the values sent from now on.
    pub fn subscribe(&self) -> Receiver<T> {
        let mut state = self.shared.lock();
        let next = state.end();
        let slot = match state.free.pop() {
            Some(slot) => {
                state.positions[slot] = Some(next);
                slot
            }
            None => {
                state.positions.push(Some(next));
                state.positions.len() - 1
            }
        };
        state.receivers += 1;
        Receiver {
            shared: self.shared.clone(),
            slot,
            next,
        }
    }

    pub fn receiver_count(&self) -> usize {
        self.shared.lock().receivers
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.sent.notify_waiters();
    }
}

impl<T: Clone> Receiver<T> {
    /// The next value; `Lagged(n)` if `n` values were dropped before this receiver read them
    /// (the next call returns the oldest kept); `Closed` once the sender is gone and all is read.
    pub async fn recv(&mut self) -> Result<T, RecvError> {
        loop {
            // Registered before looking, so that a send between the look and the wait wakes it.
            let sent = self.shared.sent.notified();
            tokio::pin!(sent);
            sent.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if self.next < state.first {
                    let missed = state.first - self.next;
                    self.next = state.first;
                    state.positions[self.slot] = Some(self.next);
                    return Err(RecvError::Lagged(missed));
                }
                if let Some(value) = state.buffer.get((self.next - state.first) as usize) {
                    let value = value.clone();
                    let was_oldest = self.next == state.first;
                    self.next += 1;
                    state.positions[self.slot] = Some(self.next);
                    if was_oldest {
                        state.trim(self.shared.capacity);
                    }
                    return Ok(value);
                }
                if state.closed {
                    return Err(RecvError::Closed);
                }
            }
            sent.await;
        }
    }

    /// Values sent that this receiver has not read and that are still kept.
    pub fn len(&self) -> usize {
        let state = self.shared.lock();
        (state.end() - self.next.max(state.first)) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.positions[self.slot] = None;
        state.free.push(self.slot);
        state.receivers -= 1;
        state.trim(self.shared.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffered<T>(sender: &Sender<T>) -> usize {
        sender.shared.lock().buffer.len()
    }

    #[tokio::test]
    async fn every_receiver_reads_every_value_in_order_and_the_buffer_empties() {
        let sender = channel::<u32>(1024);
        let mut a = sender.subscribe();
        let mut b = sender.subscribe();
        for v in 0..10 {
            assert_eq!(sender.send(v), Ok(2));
        }
        assert_eq!(buffered(&sender), 10);
        for v in 0..10 {
            assert_eq!(a.recv().await, Ok(v));
        }
        // b has read none: everything is kept for it.
        assert_eq!(buffered(&sender), 10);
        assert_eq!(b.len(), 10);
        for v in 0..10 {
            assert_eq!(b.recv().await, Ok(v));
        }
        assert_eq!(buffered(&sender), 0);
        assert!(a.is_empty());
    }

    #[tokio::test]
    async fn a_receiver_more_than_capacity_behind_lags_by_what_it_lost() {
        let sender = channel::<u32>(4);
        let mut slow = sender.subscribe();
        for v in 0..7 {
            sender.send(v).unwrap();
        }
        assert_eq!(buffered(&sender), 4);
        assert_eq!(slow.len(), 4);
        assert_eq!(slow.recv().await, Err(RecvError::Lagged(3)));
        assert_eq!(slow.recv().await, Ok(3));
    }

    #[tokio::test]
    async fn a_new_receiver_sees_only_later_values_and_a_dropped_one_frees_its_backlog() {
        let sender = channel::<u32>(16);
        let early = sender.subscribe();
        sender.send(1).unwrap();
        let mut late = sender.subscribe();
        sender.send(2).unwrap();
        assert_eq!(late.recv().await, Ok(2));
        assert_eq!(buffered(&sender), 2);
        drop(early);
        assert_eq!(buffered(&sender), 0);
        assert_eq!(sender.receiver_count(), 1);
    }

    #[tokio::test]
    async fn no_receiver_gives_the_value_back_and_a_dropped_sender_closes() {
        let sender = channel::<u32>(16);
        assert_eq!(sender.send(7), Err(7));
        let mut receiver = sender.subscribe();
        sender.send(8).unwrap();
        drop(sender);
        assert_eq!(receiver.recv().await, Ok(8));
        assert_eq!(receiver.recv().await, Err(RecvError::Closed));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send() {
        let sender = channel::<u32>(16);
        let mut receiver = sender.subscribe();
        let waiting = tokio::spawn(async move { receiver.recv().await });
        tokio::task::yield_now().await;
        sender.send(5).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(got, Ok(5));
    }
}
