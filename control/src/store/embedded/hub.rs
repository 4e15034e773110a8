//! Fan-out of committed events to live watchers.
//!
//! Each watcher has its own bounded channel, filled at publish time with only the events
//! under its prefix, so a watcher of a quiet prefix is not pushed out by traffic elsewhere.
//! Publishing never blocks the writer: a watcher whose channel is full is marked lagged
//! and dropped (as kine does), and its stream ends with `WatchLagged`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;

use crate::store::{Event, Revision};

pub(super) struct Hub {
    inner: Mutex<HubInner>,
    buffer: usize,
}

struct HubInner {
    /// Every event with a higher revision reaches subscribers registered now.
    published: Revision,
    subscribers: Vec<Subscriber>,
    /// The writer has stopped: nothing more will be published.
    closed: bool,
}

struct Subscriber {
    prefix: String,
    tx: mpsc::Sender<Arc<Event>>,
    lagged: Arc<AtomicBool>,
}

/// A registered watcher's end of the channel.
pub(super) struct Subscription {
    pub rx: mpsc::Receiver<Arc<Event>>,
    /// Set when the hub dropped this subscriber because its channel was full.
    pub lagged: Arc<AtomicBool>,
    /// Events after this revision arrive on `rx`; earlier ones must come from history.
    pub published_at_subscribe: Revision,
}

impl Hub {
    pub(super) fn new(published: Revision, buffer: usize) -> Self {
        Hub {
            inner: Mutex::new(HubInner {
                published,
                subscribers: Vec::new(),
                closed: false,
            }),
            buffer: buffer.max(1),
        }
    }

    // A panic while holding the lock leaves the list of senders intact, so carry on.
    fn lock(&self) -> MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn subscribe(&self, prefix: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(self.buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut inner = self.lock();
        if !inner.closed {
            inner.subscribers.push(Subscriber {
                prefix: prefix.to_owned(),
                tx,
                lagged: lagged.clone(),
            });
        }
        // When closed, `tx` is dropped here and the watcher sees the channel end at once.
        Subscription {
            rx,
            lagged,
            published_at_subscribe: inner.published,
        }
    }

    /// Hands committed events (in revision order) to every matching subscriber, then
    /// advances the published revision to `revision`.
    pub(super) fn publish(&self, events: &[Arc<Event>], revision: Revision) {
        let mut inner = self.lock();
        inner.subscribers.retain(|sub| {
            if sub.tx.is_closed() {
                return false;
            }
            for event in events.iter().filter(|e| e.key().starts_with(sub.prefix.as_str())) {
                match sub.tx.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(prefix = %sub.prefix, revision = event.revision(), "dropping a watcher that fell behind");
                        sub.lagged.store(true, Ordering::Release);
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        inner.published = inner.published.max(revision);
    }

    /// The published revision if `rx` holds no event yet to be taken: every event up to it
    /// has then reached that watcher. Checked under the lock, as `publish` fills channels
    /// before it advances the revision.
    pub(super) fn progress(&self, rx: &mpsc::Receiver<Arc<Event>>) -> Option<Revision> {
        let inner = self.lock();
        rx.is_empty().then_some(inner.published)
    }

    /// Ends every watch: called when the writer stops.
    pub(super) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.subscribers.clear();
    }

    pub(super) fn watchers(&self) -> usize {
        self.lock().subscribers.iter().filter(|s| !s.tx.is_closed()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyValue;

    fn put(key: &str, rev: Revision) -> Arc<Event> {
        let kv = KeyValue {
            key: key.into(),
            value: vec![],
            create_revision: rev,
            mod_revision: rev,
        };
        Arc::new(Event::Put { kv, prev: None })
    }

    #[test]
    fn delivers_only_matching_prefix() {
        let hub = Hub::new(1, 8);
        let mut sub = hub.subscribe("a/");
        assert_eq!(sub.published_at_subscribe, 1);
        hub.publish(&[put("a/1", 2), put("b/1", 3), put("a/2", 4)], 4);
        assert_eq!(sub.rx.try_recv().map(|e| e.revision()).ok(), Some(2));
        assert_eq!(sub.rx.try_recv().map(|e| e.revision()).ok(), Some(4));
        assert!(sub.rx.try_recv().is_err());
        assert_eq!(hub.subscribe("a/").published_at_subscribe, 4);
    }

    #[test]
    fn progress_only_once_the_channel_is_drained() {
        let hub = Hub::new(1, 8);
        let mut sub = hub.subscribe("a/");
        hub.publish(&[put("a/1", 2), put("b/1", 3)], 3);
        assert_eq!(hub.progress(&sub.rx), None, "event 2 not taken yet");
        assert!(sub.rx.try_recv().is_ok());
        assert_eq!(hub.progress(&sub.rx), Some(3));
    }

    #[test]
    fn full_subscriber_is_dropped_and_marked_lagged() {
        let hub = Hub::new(1, 2);
        let mut slow = hub.subscribe("");
        let mut other = hub.subscribe("z/");
        hub.publish(&[put("a", 2), put("b", 3), put("c", 4)], 4);
        assert!(slow.lagged.load(Ordering::Acquire));
        assert!(slow.rx.try_recv().is_ok());
        assert!(slow.rx.try_recv().is_ok());
        // Sender gone: the channel reports disconnection once drained.
        assert!(matches!(
            slow.rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert!(!other.lagged.load(Ordering::Acquire));
        assert!(matches!(other.rx.try_recv(), Err(mpsc::error::TryRecvError::Empty)));
        assert_eq!(hub.watchers(), 1);
    }

    #[test]
    fn close_ends_subscriptions() {
        let hub = Hub::new(1, 2);
        let mut sub = hub.subscribe("");
        hub.close();
        assert!(matches!(
            sub.rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        let mut late = hub.subscribe("");
        assert!(matches!(
            late.rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }
}
