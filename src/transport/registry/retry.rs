//! The one retry loop ([`with_retry`]): exponential backoff with jitter, bounded in attempts
//! and total time; `Retry-After`.

use std::time::{Duration, Instant, SystemTime};

use super::error::RegistryError;
use super::reference::RetryPolicy;

/// A failed attempt: the error, and the server's `Retry-After` if it sent one.
#[derive(Debug)]
pub struct Failure {
    pub error: RegistryError,
    pub retry_after: Option<Duration>,
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Self {
        Failure { error, retry_after: None }
    }
}

/// The one retry loop every registry operation goes through: runs `attempt` until it succeeds,
/// fails with an error that is not transient, or the policy's bounds run out (then
/// [`RegistryError::GaveUp`]). `attempt` gets the backoff: [`Backoff::is_retry`] tells it to
/// recover first (ask the server how far an upload got), and an attempt that sends several
/// requests (chunks) calls [`Backoff::progressed`] after each one that lands.
pub fn with_retry<T>(
    policy: RetryPolicy,
    mut attempt: impl FnMut(&mut Backoff) -> Result<T, Failure>,
) -> Result<T, RegistryError> {
    let mut backoff = Backoff::new(policy);
    loop {
        backoff.attempt();
        match attempt(&mut backoff) {
            Ok(t) => return Ok(t),
            Err(f) => backoff.wait(f.error, f.retry_after)?,
        }
    }
}

/// The state of one retried operation.
pub struct Backoff {
    policy: RetryPolicy,
    started: Instant,
    /// Attempts made so far.
    attempts: u32,
    /// Failures since the last progress (drives the delay and the attempt bound).
    failures: u32,
}

impl Backoff {
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy, started: Instant::now(), attempts: 0, failures: 0 }
    }

    /// Records an attempt.
    fn attempt(&mut self) {
        self.attempts += 1;
    }

    /// Whether the attempt under way follows a failed one.
    pub fn is_retry(&self) -> bool {
        self.attempts > 1
    }

    /// Progress was made (a chunk landed): the bounds count from here, so a long upload through
    /// a flaky link goes on as long as it advances.
    pub fn progressed(&mut self) {
        self.failures = 0;
        self.started = Instant::now();
    }

    /// After a failed attempt: sleeps and returns `Ok` if another attempt may start, else the
    /// final error. `retry_after` is the server's `Retry-After`, honoured when it fits the budget.
    fn wait(&mut self, err: RegistryError, retry_after: Option<Duration>) -> Result<(), RegistryError> {
        if !err.is_transient() {
            return Err(err);
        }
        self.failures += 1;
        let elapsed = self.started.elapsed();
        let delay = match retry_after {
            Some(d) => d.min(Duration::from_secs(120)),
            None => self.delay(),
        };
        if self.failures > self.policy.retries || elapsed + delay > self.policy.max_total {
            return Err(RegistryError::GaveUp {
                attempts: self.attempts,
                secs: elapsed.as_secs_f64(),
                last: Box::new(err),
            });
        }
        tracing::info!("{err}; retrying in {:.1}s", delay.as_secs_f64());
        std::thread::sleep(delay);
        Ok(())
    }

    /// base · 2^(failures−1), capped, with "equal jitter": half fixed, half random.
    fn delay(&self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(20);
        let full = self.policy.base_delay.saturating_mul(1 << exp).min(self.policy.max_delay);
        let half = full / 2;
        half + half.mul_f64(jitter())
    }
}

/// A number in [0, 1), different on every call (seeded by std's random hasher keys).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> RegistryError {
        RegistryError::Status { host: "h".into(), what: "w".into(), status: 503, body: String::new() }
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let policy = RetryPolicy {
            retries: 10,
            max_total: Duration::from_secs(3600),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(800),
        };
        let mut b = Backoff::new(policy);
        let mut seen = Vec::new();
        for f in 1..=6 {
            b.failures = f;
            let d = b.delay();
            let full = (100u64 << (f - 1)).min(800);
            assert!(d >= Duration::from_millis(full / 2) && d <= Duration::from_millis(full), "{f}: {d:?}");
            seen.push(d);
        }
        assert!(seen.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn with_retry_retries_transient_failures_only() {
        let policy = RetryPolicy {
            retries: 3,
            max_total: Duration::from_secs(60),
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut calls = Vec::new();
        let got = with_retry(policy, |b| {
            calls.push(b.is_retry());
            if calls.len() < 3 { Err(transient().into()) } else { Ok(7) }
        });
        assert_eq!(got.unwrap(), 7);
        assert_eq!(calls, [false, true, true]);
        let mut n = 0;
        let e = with_retry(policy, |_| -> Result<(), Failure> {
            n += 1;
            Err(RegistryError::Status { host: "h".into(), what: "w".into(), status: 404, body: String::new() }.into())
        });
        assert_eq!((n, e.unwrap_err().status()), (1, Some(404)));
        // Progress resets the bound: five failures, each after a landed chunk, still finish.
        let mut n = 0;
        let got = with_retry(RetryPolicy { retries: 1, ..policy }, |b| {
            n += 1;
            b.progressed();
            if n < 5 { Err(transient().into()) } else { Ok(n) }
        });
        assert_eq!(got.unwrap(), 5);
    }

    #[test]
    fn bounded_in_count_and_time() {
        let policy = RetryPolicy {
            retries: 2,
            max_total: Duration::from_secs(60),
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut b = Backoff::new(policy);
        b.attempt();
        assert!(b.wait(transient(), None).is_ok());
        b.attempt();
        assert!(b.wait(transient(), None).is_ok());
        b.attempt();
        let e = b.wait(transient(), None).unwrap_err();
        assert!(e.to_string().contains("gave up after 3 attempts"), "{e}");
        // A Retry-After beyond the time budget gives up at once.
        let mut b = Backoff::new(RetryPolicy { max_total: Duration::from_secs(1), ..policy });
        b.attempt();
        assert!(b.wait(transient(), Some(Duration::from_secs(5))).is_err());
        // Non-transient errors are returned as they are.
        let e = RegistryError::Status { host: "h".into(), what: "w".into(), status: 404, body: String::new() };
        assert!(matches!(Backoff::new(policy).wait(e, None), Err(RegistryError::Status { status: 404, .. })));
    }
}
