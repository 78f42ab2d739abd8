//! Reconnect back-off: exponential ceilings with full jitter, from a seeded generator.
//!
//! The n-th consecutive failure waits a uniformly random time in `[0, min(max, initial ×
//! factor^(n-1))]` (AWS's "full jitter"). The connection resets the counter after a session
//! stayed configured for [`Backoff::stable_period`], or when the server ended a configured
//! session on purpose (close code 1000 or 1001, as a restarting Vantiq does); the attempt after
//! such a clean end still waits at least half of [`Backoff::initial`]. So a server that drops
//! every session right after configuring it sees ever longer gaps (or, when it closes them
//! cleanly, a few attempts per second at most), never a hot loop, while clean restarts are
//! followed by a quick reconnect. The reasoning is in the repository's
//! `docs/design.md#d7-reconnect-back-off`.
//!
//! ```
//! use std::time::Duration;
//! use vantiq_proto::{Backoff, Rng};
//!
//! let b = Backoff::default();
//! let mut rng = Rng::new(7);
//! for failures in 1..=12 {
//!     let d = b.delay(failures, &mut rng);
//!     assert!(d <= b.ceiling(failures));
//!     assert!(b.ceiling(failures) <= Duration::from_secs(30));
//! }
//! ```

use std::time::Duration;

/// A small deterministic pseudo-random generator (SplitMix64). Not for cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeds the generator.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        // 53 random mantissa bits.
        #[allow(clippy::cast_precision_loss)]
        let v = (self.next_u64() >> 11) as f64;
        v / (1u64 << 53) as f64
    }
}

/// Back-off policy for reconnecting.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// Ceiling of the first delay (default 0.5 s).
    pub initial: Duration,
    /// Growth of the ceiling per consecutive failure (default 2).
    pub factor: f64,
    /// Largest ceiling (default 30 s).
    pub max: Duration,
    /// How long a session must stay configured before the failure count resets (default 10 s).
    /// A configured session the server closes with code 1000 or 1001 resets it too.
    pub stable_period: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            factor: 2.0,
            max: Duration::from_secs(30),
            stable_period: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The default policy with another first ceiling and cap.
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            ..Backoff::default()
        }
    }

    /// The ceiling for the given number of consecutive failures (≥ 1).
    #[must_use]
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = i32::try_from(failures.saturating_sub(1).min(64)).unwrap_or(64);
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        let secs = self.initial.as_secs_f64() * factor.powi(exp);
        let max = self.max.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }

    /// A random delay in `[0, ceiling(failures)]`.
    pub fn delay(&self, failures: u32, rng: &mut Rng) -> Duration {
        self.ceiling(failures).mul_f64(rng.next_f64())
    }
}
