//! Per-version request outcomes over a sliding window of one-second slots: requests, errors
//! (5xx answers, upstream failures) and a time-to-first-token histogram, for the canary guard
//! and the operator API. Kept outside the config snapshot, by `model/version`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (ms) of the TTFT histogram slots; the last slot is everything above.
pub const TTFT_BOUNDS_MS: [f64; 16] = [
    10.0, 25.0, 50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0, 2500.0, 5000.0, 10000.0,
    20000.0, 40000.0, 60000.0,
];
/// The longest window kept.
const MAX_SLOTS: u64 = 3600;

#[derive(Clone, Default)]
struct Slot {
    second: u64,
    requests: u64,
    errors: u64,
    ttft: [u64; TTFT_BOUNDS_MS.len() + 1],
}

/// Aggregates over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
}

#[derive(Default)]
pub struct VersionStats {
    slots: Mutex<VecDeque<Slot>>,
    /// This version's Prometheus series, resolved once (kept here: per version, across reloads).
    pub metrics: crate::metrics::VersionHandles,
}

fn now_second() -> u64 {
    crate::clock::now_ns() / 1_000_000_000
}

impl VersionStats {
    fn with_slot(&self, f: impl FnOnce(&mut Slot)) {
        let sec = now_second();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.back().is_none_or(|s| s.second != sec) {
            slots.push_back(Slot {
                second: sec,
                ..Slot::default()
            });
            while slots
                .front()
                .is_some_and(|s| sec.saturating_sub(s.second) >= MAX_SLOTS)
            {
                slots.pop_front();
            }
        }
        if let Some(s) = slots.back_mut() {
            f(s);
        }
    }

    /// One finished request (its final status class).
    pub fn record(&self, error: bool) {
        self.with_slot(|s| {
            s.requests += 1;
            s.errors += u64::from(error);
        });
    }

    /// Time to first token (streams) or to the whole answer (non-streams).
    pub fn record_ttft(&self, ttft: Duration) {
        let ms = ttft.as_secs_f64() * 1000.0;
        let i = TTFT_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(TTFT_BOUNDS_MS.len());
        self.with_slot(|s| s.ttft[i] += 1);
    }

    /// Totals over the last `window`.
    pub fn summary(&self, window: Duration) -> Summary {
        let now = now_second();
        let span = window.as_secs().max(1);
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut sum = Summary::default();
        let mut hist = [0u64; TTFT_BOUNDS_MS.len() + 1];
        for s in slots.iter().filter(|s| now.saturating_sub(s.second) < span) {
            sum.requests += s.requests;
            sum.errors += s.errors;
            for (h, v) in hist.iter_mut().zip(s.ttft.iter()) {
                *h += v;
            }
        }
        if sum.requests > 0 {
            sum.error_rate = sum.errors as f64 / sum.requests as f64;
        }
        sum.ttft_p50_ms = quantile(&hist, 0.50);
        sum.ttft_p95_ms = quantile(&hist, 0.95);
        sum
    }
}

/// The upper bound of the slot holding quantile `q` (conservative: never under-reports).
fn quantile(hist: &[u64], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(TTFT_BOUNDS_MS.get(i).copied().unwrap_or(f64::INFINITY));
        }
    }
    None
}

/// Stats by `model/version`, kept across reloads.
#[derive(Default)]
pub struct StatsRegistry {
    map: Mutex<HashMap<String, Arc<VersionStats>>>,
}

impl StatsRegistry {
    pub fn get(&self, model: &str, version: &str) -> Arc<VersionStats> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(format!("{model}/{version}")).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn windows_slide_and_quantiles_are_upper_bounds() {
        let s = VersionStats::default();
        for i in 0..100 {
            s.record(i % 5 == 0);
            s.record_ttft(Duration::from_millis(if i < 90 { 40 } else { 900 }));
        }
        let sum = s.summary(Duration::from_secs(60));
        assert_eq!((sum.requests, sum.errors), (100, 20));
        assert!((sum.error_rate - 0.2).abs() < 1e-9);
        assert_eq!(sum.ttft_p50_ms, Some(50.0));
        assert_eq!(sum.ttft_p95_ms, Some(1000.0));
        tokio::time::advance(Duration::from_secs(61)).await;
        s.record(false);
        let sum = s.summary(Duration::from_secs(60));
        assert_eq!(sum.requests, 1);
        assert_eq!(sum.ttft_p95_ms, None);
    }
}
