//! How much to amplify a missed read, from what the backend's requests cost.
//!
//! Fetching the missing chunks next to a missed one saves a later request (one round trip)
//! at the price of bytes that may never be read. The two costs balance at the link's
//! bandwidth-delay product: on a long link (or a slow server) a request costs more than a
//! megabyte, on a thin one a few kilobytes. From recent fetches we fit `time = latency +
//! bytes / bandwidth` by least squares (a token bucket's burst makes small fetches look
//! fast, so no single fetch is trusted) and amplify by latency × bandwidth, capped by the
//! configured `amplify_io`.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Fetches remembered; the estimate follows a link that changes.
const WINDOW: usize = 32;
/// Fetches seen before the estimate replaces the configured amplification.
const WARMUP: usize = 8;
/// The spread of fetch sizes (standard deviation, bytes) a fit needs.
const MIN_SPREAD: u64 = 16 << 10;

#[derive(Default)]
pub struct LinkEstimate {
    samples: Mutex<VecDeque<(u64, f64)>>,
}

impl LinkEstimate {
    /// One fetch of `bytes` that took `secs`.
    pub fn record(&self, bytes: u64, secs: f64) {
        if !(secs.is_finite() && secs > 0.0) {
            return;
        }
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() == WINDOW {
            s.pop_front();
        }
        s.push_back((bytes, secs));
    }

    /// (latency in seconds, bandwidth in bytes per second), once enough fetches of
    /// different sizes were seen.
    pub fn estimate(&self) -> Option<(f64, f64)> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() < WARMUP {
            return None;
        }
        let k = s.len() as f64;
        let mean_n = s.iter().map(|&(n, _)| n as f64).sum::<f64>() / k;
        let mean_t = s.iter().map(|&(_, t)| t).sum::<f64>() / k;
        let var_n = s.iter().map(|&(n, _)| (n as f64 - mean_n).powi(2)).sum::<f64>();
        let cov = s.iter().map(|&(n, t)| (n as f64 - mean_n) * (t - mean_t)).sum::<f64>();
        // Sizes too alike say nothing of bandwidth (all fetches one whole chunk, say).
        if var_n < k * (MIN_SPREAD as f64).powi(2) || cov <= 0.0 {
            return None;
        }
        let per_byte = cov / var_n;
        let latency = (mean_t - per_byte * mean_n).max(0.0);
        Some((latency, 1.0 / per_byte))
    }

    /// Bytes to amplify a missed read by: the bandwidth-delay product, at most `max`; `max`
    /// itself until the link is known.
    pub fn amplify(&self, max: u64) -> u64 {
        match self.estimate() {
            Some((latency, bandwidth)) => ((latency * bandwidth) as u64).min(max),
            None => max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn link(latency: f64, bandwidth: f64, sizes: &[u64]) -> LinkEstimate {
        let l = LinkEstimate::default();
        for &n in sizes {
            l.record(n, latency + n as f64 / bandwidth);
        }
        l
    }

    const SIZES: [u64; 10] = [4096, 65536, 131072, 262144, 1 << 20, 8192, 524288, 98304, 200000, 700000];

    #[test]
    fn the_configured_amplification_holds_until_the_link_is_known() {
        // 1 ms at 100 MB/s: worth about 100 kB once known.
        let l = link(0.001, 1e8, &SIZES[..WARMUP - 1]);
        assert_eq!(l.amplify(1 << 20), 1 << 20);
        l.record(1 << 20, 0.001 + (1 << 20) as f64 / 1e8);
        assert!((80_000..140_000).contains(&l.amplify(1 << 20)), "{}", l.amplify(1 << 20));
    }

    #[test]
    fn a_thin_link_amplifies_little_and_a_long_one_up_to_the_cap() {
        // 100 Mbit/s at 1 ms: a request is worth 12.5 kB.
        let thin = link(0.001, 12.5e6, &SIZES);
        let (lat, bw) = thin.estimate().unwrap();
        assert!((lat - 0.001).abs() < 0.001 && (bw / 12.5e6 - 1.0).abs() < 0.1, "{lat} {bw}");
        assert!(thin.amplify(1 << 20) < 32 << 10);
        // 1 Gbit/s at 30 ms: worth 3.75 MB, capped.
        assert_eq!(link(0.03, 125e6, &SIZES).amplify(1 << 20), 1 << 20);
    }

    #[test]
    fn a_bursting_link_is_judged_by_its_rate() {
        // tbf at 100 Mbit/s with a 128 kB burst: small fetches arrive at once.
        let l = LinkEstimate::default();
        for &n in SIZES.iter().chain(SIZES.iter()) {
            let t = 0.0005 + n.saturating_sub(128 << 10) as f64 / 12.5e6 + n.min(128 << 10) as f64 / 1e9;
            l.record(n, t);
        }
        assert!(l.amplify(1 << 20) < 64 << 10, "{:?}", l.estimate());
    }

    #[test]
    fn fetches_of_one_size_leave_the_configured_amplification() {
        let l = link(0.001, 1e7, &[1 << 20; WINDOW]);
        assert_eq!(l.amplify(4 << 20), 4 << 20);
    }

    #[test]
    fn nonsense_timings_are_ignored() {
        let l = LinkEstimate::default();
        for _ in 0..WINDOW {
            l.record(1 << 20, f64::NAN);
            l.record(1 << 20, -1.0);
            l.record(1 << 20, 0.0);
        }
        assert_eq!(l.amplify(777), 777);
    }

    proptest! {
        #[test]
        fn the_amplification_never_exceeds_the_cap(
            samples in proptest::collection::vec((0u64..(64 << 20), 0.0f64..10.0), 0..80),
            cap in 0u64..(256 << 20),
        ) {
            let l = LinkEstimate::default();
            for (n, t) in samples {
                l.record(n, t);
            }
            prop_assert!(l.amplify(cap) <= cap);
        }
    }
}
