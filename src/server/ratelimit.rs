//! The per-connection message rate limit: a token bucket.
//!
//! Time comes in as an argument, so the tests need no clock. A refused message answers
//! `error rate_limited`; `abuse_limit` refusals without the bucket ever refilling to full
//! mean the client ignores the errors, and the connection is closed with 1008.

use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Refuse,
    /// Sustained abuse: close the connection with 1008.
    Abuse,
}

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    refused: u32,
    abuse_limit: u32,
}

impl TokenBucket {
    /// A full bucket refilled at `rate` tokens per second up to `burst`.
    pub fn new(rate: u32, burst: u32, abuse_limit: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
            refused: 0,
            abuse_limit,
        }
    }

    /// Takes one token for a message arriving at `now`.
    pub fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= self.burst {
            self.refused = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        self.refused += 1;
        if self.refused > self.abuse_limit {
            Verdict::Abuse
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_burst_then_refuses_then_refills() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, 100, t0);
        assert_eq!(bucket.take(t0), Verdict::Allow);
        assert_eq!(bucket.take(t0), Verdict::Allow);
        assert_eq!(bucket.take(t0), Verdict::Allow);
        assert_eq!(bucket.take(t0), Verdict::Refuse);
        // 100 ms at 10/s is one token.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(bucket.take(t1), Verdict::Allow);
        assert_eq!(bucket.take(t1), Verdict::Refuse);
    }

    #[test]
    fn sustained_refusals_become_abuse_and_a_full_refill_forgives() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1, 1, 2, t0);
        assert_eq!(bucket.take(t0), Verdict::Allow);
        assert_eq!(bucket.take(t0), Verdict::Refuse);
        assert_eq!(bucket.take(t0), Verdict::Refuse);
        assert_eq!(bucket.take(t0), Verdict::Abuse);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(bucket.take(t1), Verdict::Allow);
        assert_eq!(bucket.take(t1), Verdict::Refuse);
    }
}
