//! The wait for a free replica slot: one bounded FIFO per pool (model version). A request that
//! finds every eligible replica at `max_inflight` takes a ticket; the head of the line is woken
//! whenever a slot frees, and newcomers queue behind waiters instead of overtaking them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub struct PoolQueue {
    waiters: Mutex<VecDeque<Arc<Notify>>>,
    len: AtomicUsize,
}

impl PoolQueue {
    /// Requests waiting now (what `ai_queue_size` reports).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins the end of the line, unless `max` are already waiting.
    pub fn enqueue(self: &Arc<Self>, max: usize) -> Option<Ticket> {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() >= max {
            return None;
        }
        let me = Arc::new(Notify::new());
        w.push_back(me.clone());
        self.len.store(w.len(), Ordering::Relaxed);
        Some(Ticket {
            queue: self.clone(),
            me,
        })
    }

    /// Tells the head of the line to try again (a slot may have freed).
    pub fn wake_head(&self) {
        if self.is_empty() {
            return;
        }
        let w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(head) = w.front() {
            // Stores a permit if the head is between checks, so no wake-up is lost.
            head.notify_one();
        }
    }
}

/// A place in line; leaving (served, timed out, or the client went away) drops it.
pub struct Ticket {
    queue: Arc<PoolQueue>,
    me: Arc<Notify>,
}

impl Ticket {
    pub fn is_head(&self) -> bool {
        let w = self.queue.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.front().is_some_and(|h| Arc::ptr_eq(h, &self.me))
    }

    /// Waits to be woken.
    pub async fn woken(&self) {
        self.me.notified().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut w = self.queue.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let was_head = w.front().is_some_and(|h| Arc::ptr_eq(h, &self.me));
        w.retain(|h| !Arc::ptr_eq(h, &self.me));
        self.queue.len.store(w.len(), Ordering::Relaxed);
        // The next in line may be able to go now (a slot freed for us, or we were served and
        // more slots remain).
        if was_head {
            if let Some(next) = w.front() {
                next.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_fifo_with_head_handoff() {
        let q = Arc::new(PoolQueue::default());
        let a = q.enqueue(2).unwrap();
        let b = q.enqueue(2).unwrap();
        assert!(q.enqueue(2).is_none(), "full");
        assert_eq!(q.len(), 2);
        assert!(a.is_head() && !b.is_head());
        q.wake_head();
        a.woken().await; // the permit was stored
        drop(a);
        assert!(b.is_head());
        // a leaving as head woke b
        tokio::time::timeout(std::time::Duration::from_secs(1), b.woken())
            .await
            .unwrap();
        drop(b);
        assert!(q.is_empty());
    }
}
