//! A watcher's stream: history first, then live events, without a gap or a duplicate at
//! the switch.
//!
//! The replay reads the history in short chunks until it reaches the end of what is
//! committed, and only then subscribes to the hub, so a long replay cannot overflow the
//! live buffer. The hub reports the revision it had published when the subscription
//! began: everything above it arrives live, so the replay continues up to it (it is
//! committed, hence readable). Live events at or below what the replay already covered are
//! skipped; they can occur because a batch is committed before it is published.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use redb::{Database, ReadableDatabase};

use super::Shared;
use super::hub::Subscription;
use super::reader::{self, ChunkLimits, EventChunk};
use crate::store::{Event, Revision, StoreError, WatchStream};

const CHUNK_LIMITS: ChunkLimits = ChunkLimits {
    max_events: 512,
    max_scanned: 8192,
};

enum Phase {
    /// Reading history up to whatever is committed.
    CatchUp,
    /// Subscribed; reading the rest of the history the hub had already published when the
    /// subscription began, up to `until`.
    Drain {
        sub: Subscription,
        until: Revision,
    },
    Live {
        sub: Subscription,
    },
    Done,
}

struct WatchState {
    db: Arc<Database>,
    shared: Arc<Shared>,
    prefix: String,
    /// Every revision up to here has been read from history (queued in `ready` if it
    /// matched) or taken from the live channel.
    covered: Revision,
    /// The revision of the last event handed out, for `WatchLagged`.
    last_delivered: Revision,
    ready: VecDeque<Event>,
    phase: Phase,
}

pub(super) fn stream(db: Arc<Database>, shared: Arc<Shared>, prefix: &str, after: Revision) -> WatchStream {
    let state = WatchState {
        db,
        shared,
        prefix: prefix.to_owned(),
        covered: after,
        last_delivered: after,
        ready: VecDeque::new(),
        phase: Phase::CatchUp,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    })
    .boxed()
}

impl WatchState {
    async fn next(&mut self) -> Option<Result<Event, StoreError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                self.last_delivered = event.revision();
                return Some(Ok(event));
            }
            let phase = std::mem::replace(&mut self.phase, Phase::Done);
            let result = match phase {
                Phase::Done => return None,
                Phase::CatchUp => self.catch_up().await,
                Phase::Drain { sub, until } => self.drain(sub, until).await,
                Phase::Live { sub } => self.live(sub).await,
            };
            match result {
                Ok(Some(event)) => {
                    self.last_delivered = event.revision();
                    return Some(Ok(event));
                }
                Ok(None) => {}
                // `phase` stays Done: the stream ends after its error.
                Err(e) => return Some(Err(e)),
            }
        }
    }

    async fn catch_up(&mut self) -> Result<Option<Event>, StoreError> {
        let at_end = self.read(None).await?;
        if at_end {
            let sub = self.shared.hub.subscribe(&self.prefix);
            let until = sub.published_at_subscribe;
            self.phase = if until > self.covered {
                Phase::Drain { sub, until }
            } else {
                Phase::Live { sub }
            };
        } else {
            self.phase = Phase::CatchUp;
        }
        Ok(None)
    }

    async fn drain(&mut self, sub: Subscription, until: Revision) -> Result<Option<Event>, StoreError> {
        self.read(Some(until)).await?;
        self.phase = if self.covered >= until {
            Phase::Live { sub }
        } else {
            Phase::Drain { sub, until }
        };
        Ok(None)
    }

    async fn live(&mut self, mut sub: Subscription) -> Result<Option<Event>, StoreError> {
        loop {
            let received = tokio::select! {
                event = sub.rx.recv() => event,
                _ = tokio::time::sleep(crate::store::PROGRESS_EVERY) => {
                    match self.shared.hub.progress(&sub.rx) {
                        Some(published) if published > self.covered => {
                            self.covered = published;
                            self.phase = Phase::Live { sub };
                            return Ok(Some(Event::Progress { revision: published }));
                        }
                        _ => continue,
                    }
                }
            };
            let Some(event) = received else {
                if sub.lagged.load(Ordering::Acquire) {
                    return Err(StoreError::WatchLagged {
                        last_delivered: self.last_delivered,
                    });
                }
                return Err(StoreError::Closed);
            };
            if event.revision() <= self.covered {
                continue;
            }
            self.covered = event.revision();
            self.phase = Phase::Live { sub };
            return Ok(Some(Arc::unwrap_or_clone(event)));
        }
    }

    /// Reads the next chunk of history into `ready`; true when it reached the end.
    async fn read(&mut self, until: Option<Revision>) -> Result<bool, StoreError> {
        let db = self.db.clone();
        let prefix = self.prefix.clone();
        let after = self.covered;
        let chunk: EventChunk = tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            reader::read_events(&txn, &prefix, after, until, &CHUNK_LIMITS)
        })
        .await
        .map_err(StoreError::backend)??;
        self.covered = chunk.scanned_to;
        self.ready.extend(chunk.events);
        Ok(chunk.at_end)
    }
}
