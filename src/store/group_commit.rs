//! Group commit: one flush serves every writer that was waiting when it started.
//!
//! A writer applies its batch, then calls [`GroupCommit::wait`]. A single task collects all
//! waiters, flushes sled once, and answers them together. Writers that arrive during a flush
//! wait for the next one, because the running flush may have missed their writes.

use tokio::sync::{mpsc, oneshot};

use super::{StoreError, StoreResult};

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Clone)]
pub struct GroupCommit {
    waiters: mpsc::UnboundedSender<Waiter>,
}

impl GroupCommit {
    pub fn start(db: sled::Db) -> GroupCommit {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let result = db
                    .flush_async()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                for waiter in batch {
                    // A waiter that gave up (its request was dropped) no longer listens.
                    let _ = waiter.send(result.clone());
                }
            }
        });
        GroupCommit { waiters: tx }
    }

    pub async fn wait(&self) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .send(tx)
            .map_err(|_| StoreError::Flush("the flush task has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Flush("the flush task has stopped".into()))?
            .map_err(StoreError::Flush)
    }
}
