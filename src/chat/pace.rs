//! Pacing of a platform's requests, per key: every request takes its key's next slot, so one
//! busy key waits its turn while the others go on. Slack accepts about one message per second
//! per channel (PROTOCOL-NOTES §5), so Slack paces per channel; Discord allows a bot about 50
//! requests per second in all, which Discord only reports once it is exceeded, so Discord paces
//! every request under one key. (A 429 is still waited out by each platform's client.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone)]
pub struct Pace {
    interval: Duration,
    next: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Pace {
    pub fn new(interval: Duration) -> Pace {
        Pace {
            interval,
            next: Arc::default(),
        }
    }

    /// Waits for the channel's next free slot, and takes it.
    pub async fn slot(&self, channel: &str) {
        let at = {
            let mut next = self.next.lock().expect("pace lock poisoned");
            let now = Instant::now();
            let slot = next
                .get(channel)
                .copied()
                .filter(|t| *t > now)
                .unwrap_or(now);
            next.insert(channel.to_owned(), slot + self.interval);
            slot
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_channel_waits_its_turn_and_others_do_not() {
        let pace = Pace::new(Duration::from_secs(1));
        let start = Instant::now();
        pace.slot("C1").await;
        pace.slot("C2").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        pace.slot("C1").await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
