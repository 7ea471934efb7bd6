//! The token bucket: its parameters ([`Bucket`]), what a take decides ([`Decision`]), and the
//! arithmetic both stores share. The Redis script (`redis.rs`) repeats [`Bucket::take`] operation
//! for operation, in the same IEEE doubles, so the two stores answer a sequence of takes alike.

/// Amounts within this many tokens of a whole number count as that number: floating-point
/// rounding in the refill never costs a token, nor hides one from `remaining`.
pub(crate) const EPSILON: f64 = 1e-9;

/// The largest delay reported (2^53 ms, some 285,000 years): beyond it a double stops counting
/// milliseconds exactly, and the Redis script returns integers.
pub(crate) const MAX_MS: f64 = 9_007_199_254_740_992.0;

/// A token bucket's parameters: it holds up to `capacity` tokens and gains `tokens_per_second`,
/// continuously (a bucket at 1 token per second holds half a token 500 ms after it was empty).
///
/// ```
/// use ws_kit::rate_limit::Bucket;
///
/// let bucket = Bucket::new(10, 2.0); // bursts of 10, then 2 messages a second
/// assert_eq!(bucket.capacity(), 10);
/// assert_eq!(bucket.tokens_per_second(), 2.0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    capacity: u32,
    tokens_per_second: f64,
}

impl Bucket {
    /// A bucket of `capacity` tokens refilled at `tokens_per_second`.
    ///
    /// # Panics
    ///
    /// When `capacity` is 0 or `tokens_per_second` is not a finite number above zero (a bucket
    /// that never refills would make every `retryAfterMs` infinite).
    pub fn new(capacity: u32, tokens_per_second: f64) -> Self {
        assert!(capacity > 0, "a rate limit's capacity must be at least 1");
        assert!(
            tokens_per_second.is_finite() && tokens_per_second > 0.0,
            "a rate limit's tokens_per_second must be finite and above zero, not {tokens_per_second}"
        );
        Bucket {
            capacity,
            tokens_per_second,
        }
    }

    /// `capacity` tokens refilled at `per_minute / 60` tokens a second.
    pub fn per_minute(capacity: u32, per_minute: f64) -> Self {
        Bucket::new(capacity, per_minute / 60.0)
    }

    /// The most tokens the bucket holds (a new bucket holds this many).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// How fast the bucket refills.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens_per_second
    }

    /// Takes `cost` tokens at `now_us` (microseconds on the store's clock) from a bucket last left
    /// in `state` (`None`: a full bucket). Returns the decision and, when the take was allowed,
    /// the state to keep; a refused take changes nothing.
    ///
    /// The Redis script is this function in Lua: change both or neither.
    pub(crate) fn take(
        &self,
        state: Option<State>,
        now_us: u64,
        cost: u32,
    ) -> (Decision, Option<State>) {
        let capacity = f64::from(self.capacity);
        let cost_f = f64::from(cost);
        let (mut tokens, now_us) = match state {
            None => (capacity, now_us),
            Some(state) => {
                // A clock that went back (threads racing to the lock, a failed-over Redis) adds
                // nothing and moves nothing back.
                let now_us = now_us.max(state.at_us);
                let elapsed = (now_us - state.at_us) as f64;
                let tokens =
                    (state.tokens + elapsed * self.tokens_per_second / 1_000_000.0).min(capacity);
                (tokens, now_us)
            }
        };
        if tokens + EPSILON >= cost_f {
            tokens = (tokens - cost_f).max(0.0);
            let decision = Decision::Allowed {
                remaining: whole(tokens),
            };
            (
                decision,
                Some(State {
                    tokens,
                    at_us: now_us,
                }),
            )
        } else {
            // The time until the take would pass: `cost` within EPSILON, as the test above has
            // it. So a client that waits exactly this long is let through.
            let retry_after_ms = ((cost_f - tokens - EPSILON) * 1000.0 / self.tokens_per_second)
                .ceil()
                .clamp(1.0, MAX_MS) as u64;
            let decision = Decision::Limited {
                remaining: whole(tokens),
                retry_after_ms,
            };
            (decision, None)
        }
    }

    /// How long until a bucket holding `tokens` is full again, in microseconds, rounded up: from
    /// then on it is the same as no bucket at all.
    pub(crate) fn full_after_us(&self, tokens: f64) -> u64 {
        ((f64::from(self.capacity) - tokens) * 1_000_000.0 / self.tokens_per_second)
            .ceil()
            .clamp(0.0, MAX_MS * 1000.0) as u64
    }
}

/// Whole tokens, rounded down (within [`EPSILON`]).
fn whole(tokens: f64) -> u32 {
    (tokens + EPSILON).floor() as u32
}

/// What a bucket holds between takes: tokens (fractional) as of a time on the store's clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct State {
    pub(crate) tokens: f64,
    pub(crate) at_us: u64,
}

/// What a store answers for one take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The tokens were taken.
    Allowed {
        /// Whole tokens left after the take (rounded down).
        remaining: u32,
    },
    /// Not enough tokens: nothing was taken.
    Limited {
        /// Whole tokens in the bucket now (rounded down), fewer than the cost.
        remaining: u32,
        /// Milliseconds until the bucket holds the cost again (rounded up, at least 1).
        retry_after_ms: u64,
    },
}

impl Decision {
    /// Whether the tokens were taken.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }

    /// Whole tokens in the bucket after the decision.
    pub fn remaining(&self) -> u32 {
        match *self {
            Decision::Allowed { remaining } | Decision::Limited { remaining, .. } => remaining,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    /// Takes in sequence on one bucket, `(at_us, cost)`, as a store would.
    fn run(bucket: Bucket, takes: &[(u64, u32)]) -> Vec<Decision> {
        let mut state = None;
        takes
            .iter()
            .map(|&(at, cost)| {
                let (decision, next) = bucket.take(state, at, cost);
                if next.is_some() {
                    state = next;
                }
                decision
            })
            .collect()
    }

    fn allowed(remaining: u32) -> Decision {
        Decision::Allowed { remaining }
    }

    fn limited(remaining: u32, retry_after_ms: u64) -> Decision {
        Decision::Limited {
            remaining,
            retry_after_ms,
        }
    }

    #[test]
    fn a_new_bucket_starts_full() {
        let bucket = Bucket::new(5, 1.0);
        assert_eq!(bucket.take(None, 42, 1).0, allowed(4));
        assert_eq!(bucket.take(None, 42, 5).0, allowed(0));
    }

    #[test]
    fn the_third_of_two_is_refused_for_exactly_a_second() {
        let bucket = Bucket::new(2, 1.0);
        assert_eq!(
            run(bucket, &[(0, 1), (0, 1), (0, 1)]),
            [allowed(1), allowed(0), limited(0, 1000)]
        );
    }

    #[test]
    fn retry_after_counts_the_time_already_passed_and_rounds_up() {
        let bucket = Bucket::new(2, 1.0);
        // 300 µs after the bucket emptied: 999.7 ms to go, reported as 1000.
        assert_eq!(
            run(bucket, &[(0, 1), (0, 1), (300, 1)]),
            [allowed(1), allowed(0), limited(0, 1000)]
        );
        // 999.5 ms after: 0.5 ms to go, reported as 1 (never 0).
        assert_eq!(
            run(bucket, &[(0, 1), (0, 1), (999_500, 1)])[2],
            limited(0, 1)
        );
        // 250 ms after: 750 ms.
        assert_eq!(
            run(bucket, &[(0, 1), (0, 1), (250_000, 1)])[2],
            limited(0, 750)
        );
    }

    #[test]
    fn refill_is_continuous_and_capped() {
        let bucket = Bucket::new(2, 1.0);
        let decisions = run(
            bucket,
            &[
                (0, 2),
                (S, 1),         // one token back after a second
                (S, 1),         // none left
                (S + S / 2, 1), // half a token
                (100 * S, 2),   // long idle: full (2), not 100
                (100 * S, 1),
            ],
        );
        assert_eq!(
            decisions,
            [
                allowed(0),
                allowed(0),
                limited(0, 1000),
                limited(0, 500),
                allowed(0),
                limited(0, 1000),
            ]
        );
    }

    #[test]
    fn a_refused_take_spends_nothing() {
        let bucket = Bucket::new(3, 1.0);
        // Cost 3 refused with 2 left; the 2 are still there for two cost-1 takes.
        assert_eq!(
            run(bucket, &[(0, 1), (0, 3), (0, 3), (0, 1), (0, 1), (0, 1)]),
            [
                allowed(2),
                limited(2, 1000),
                limited(2, 1000),
                allowed(1),
                allowed(0),
                limited(0, 1000),
            ]
        );
    }

    #[test]
    fn remaining_is_rounded_down() {
        let bucket = Bucket::new(10, 1.0);
        // 2.9 tokens after 10 - 7 - 1 + 0.9 s of refill.
        let d = run(bucket, &[(0, 7), (0, 1), (900_000, 1)]);
        assert_eq!(d, [allowed(3), allowed(2), allowed(1)]);
        // 1.9 left: a cost of 2 is refused, remaining 1, 100 ms to go.
        let d = run(bucket, &[(0, 7), (0, 1), (900_000, 1), (900_000, 2)]);
        assert_eq!(d[3], limited(1, 100));
    }

    #[test]
    fn fractional_rates_land_on_whole_tokens() {
        // 0.1 a second: one token every 10 s, exactly, despite 0.1 not being a double.
        let bucket = Bucket::new(1, 0.1);
        let d = run(bucket, &[(0, 1), (10 * S, 1), (20 * S - 1, 1), (20 * S, 1)]);
        assert_eq!(d, [allowed(0), allowed(0), limited(0, 1), allowed(0)]);
        // 3 a second: 333_334 µs hold a whole token.
        let bucket = Bucket::new(1, 3.0);
        let d = run(bucket, &[(0, 1), (333_334, 1)]);
        assert_eq!(d, [allowed(0), allowed(0)]);
    }

    #[test]
    fn waiting_exactly_retry_after_always_passes() {
        for rate in [0.1, 0.3, 1.0, 3.0, 7.0, 10.0, 33.3, 1000.0] {
            for cost in 1..=5u32 {
                let bucket = Bucket::new(5, rate);
                let (_, state) = bucket.take(None, 1234, 5);
                let state = state.unwrap();
                // Some time after the bucket emptied, less than any refill of a token.
                let later = 1234 + 700_000 / (rate as u64 + 1);
                let (d, _) = bucket.take(Some(state), later, cost);
                let Decision::Limited { retry_after_ms, .. } = d else {
                    panic!("rate {rate}, cost {cost}: {d:?}")
                };
                let retry_at = later + retry_after_ms * 1000;
                let (d, _) = bucket.take(Some(state), retry_at, cost);
                assert!(d.is_allowed(), "rate {rate}, cost {cost}: {d:?}");
                // And not a millisecond earlier (the delay is not padded).
                let (d, _) = bucket.take(Some(state), retry_at - 1000, cost);
                assert!(!d.is_allowed(), "rate {rate}, cost {cost}: {d:?}");
            }
        }
    }

    #[test]
    fn time_going_back_adds_nothing() {
        let bucket = Bucket::new(2, 1.0);
        let d = run(bucket, &[(5 * S, 2), (S, 1), (5 * S, 1)]);
        assert_eq!(d, [allowed(0), limited(0, 1000), limited(0, 1000)]);
    }

    #[test]
    fn cost_above_capacity_is_never_allowed() {
        let bucket = Bucket::new(2, 1.0);
        assert!(!bucket.take(None, 0, 3).0.is_allowed());
    }

    #[test]
    fn full_after_rounds_up() {
        let bucket = Bucket::new(2, 3.0);
        assert_eq!(bucket.full_after_us(2.0), 0);
        assert_eq!(bucket.full_after_us(1.0), 333_334);
        assert_eq!(bucket.full_after_us(0.0), 666_667);
    }

    #[test]
    #[should_panic(expected = "capacity")]
    fn zero_capacity_is_refused() {
        Bucket::new(0, 1.0);
    }

    #[test]
    #[should_panic(expected = "tokens_per_second")]
    fn zero_rate_is_refused() {
        Bucket::new(1, 0.0);
    }
}
