//! A sink's bounded queue: the main loop pushes without ever waiting; past the bound the oldest
//! notice is dropped (and counted), since the newest says most about the present.

use std::{
    collections::VecDeque,
    sync::{Mutex, PoisonError},
};

use tokio::sync::Notify;

/// Notices waiting for one sink's task.
pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    ready: Notify,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    dropped: u64,
}

impl<T> Queue<T> {
    #[must_use]
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.min(64)),
                closed: false,
                dropped: 0,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `item`; when full, drops the oldest and returns it with how many were dropped so
    /// far.
    pub(crate) fn push(&self, item: T) -> Option<(T, u64)> {
        let dropped = {
            let mut state = self.state();
            let dropped = if state.items.len() >= self.capacity {
                state.dropped += 1;
                state.items.pop_front().map(|old| (old, state.dropped))
            } else {
                None
            };
            state.items.push_back(item);
            dropped
        };
        // One consumer: a permit is kept if it is not waiting yet.
        self.ready.notify_one();
        dropped
    }

    /// The next item; None once the queue is closed and empty.
    pub(crate) async fn pop(&self) -> Option<T> {
        loop {
            {
                let mut state = self.state();
                if let Some(item) = state.items.pop_front() {
                    return Some(item);
                }
                if state.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// No more items will come: the consumer ends once it has taken what is left.
    pub(crate) fn close(&self) {
        self.state().closed = true;
        self.ready.notify_one();
    }

    /// Items waiting, and items dropped since the start.
    #[must_use]
    pub(crate) fn counts(&self) -> (usize, u64) {
        let state = self.state();
        (state.items.len(), state.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_goes_first_and_is_counted() {
        let queue = Queue::new(2);
        assert!(queue.push(1).is_none());
        assert!(queue.push(2).is_none());
        assert_eq!(queue.push(3), Some((1, 1)));
        assert_eq!(queue.push(4), Some((2, 2)));
        assert_eq!(queue.counts(), (2, 2));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        queue.close();
        let got = runtime.block_on(async {
            let mut got = Vec::new();
            while let Some(item) = queue.pop().await {
                got.push(item);
            }
            got
        });
        assert_eq!(got, [3, 4]);
    }

    #[test]
    fn a_waiting_consumer_wakes_on_push() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let queue = std::sync::Arc::new(Queue::new(4));
            let consumer = {
                let queue = std::sync::Arc::clone(&queue);
                tokio::spawn(async move { queue.pop().await })
            };
            tokio::task::yield_now().await;
            queue.push("notice");
            let got = tokio::time::timeout(std::time::Duration::from_secs(1), consumer)
                .await
                .expect("woken")
                .expect("task");
            assert_eq!(got, Some("notice"));
        });
    }
}
