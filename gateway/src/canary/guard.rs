//! The canary guard: once a second, every model with a canary and a `guard` has its canary's
//! error rate and TTFT p95 over the guard window compared with the budget. A breach (with at
//! least `min_requests` in the window) sets the weight to 0 through the one publish path —
//! written to the config file, audited with the reason, counted in
//! `gateway_canary_rollbacks_total`. With `steps`, a canary that stays within budget for
//! `step_interval` moves to the next step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::stats::Summary;
use crate::config::GuardConfig;
use crate::control::{change_canary, Change};
use crate::state::AppState;

/// Why a canary is out of budget, if it is.
pub fn breach(guard: &GuardConfig, canary: &Summary, stable: &Summary) -> Option<String> {
    if canary.requests < guard.min_requests {
        return None;
    }
    if canary.error_rate > guard.max_error_rate {
        return Some(format!(
            "error rate {:.1} % over {} requests exceeds {:.1} % (stable: {:.1} %)",
            canary.error_rate * 100.0,
            canary.requests,
            guard.max_error_rate * 100.0,
            stable.error_rate * 100.0
        ));
    }
    if let (Some(max), Some(p95)) = (guard.max_ttft_p95_ms, canary.ttft_p95_ms) {
        if p95 > max {
            return Some(format!(
                "TTFT p95 {p95:.0} ms exceeds {max:.0} ms (stable: {})",
                stable
                    .ttft_p95_ms
                    .map_or("n/a".to_owned(), |v| format!("{v:.0} ms"))
            ));
        }
    }
    None
}

pub async fn run(app: Arc<AppState>, stop: CancellationToken) {
    // When each model's canary weight last changed (for steps).
    let mut since: HashMap<String, (f64, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let snapshot = app.snapshot();
        for m in &snapshot.config.models {
            let (Some(c), Some(route)) = (&m.canary, snapshot.routes.get(&m.name)) else {
                continue;
            };
            if c.weight_percent <= 0.0 || c.version == m.stable {
                since.remove(&m.name);
                continue;
            }
            let entry = since
                .entry(m.name.clone())
                .or_insert((c.weight_percent, Instant::now()));
            if entry.0 != c.weight_percent {
                *entry = (c.weight_percent, Instant::now());
            }
            let Some(guard) = &c.guard else { continue };
            let (Some(cp), Some(sp)) =
                (route.versions.get(c.version), route.versions.get(m.stable))
            else {
                continue;
            };
            let canary = cp.stats.summary(guard.window);
            let stable = sp.stats.summary(guard.window);
            if let Some(reason) = breach(guard, &canary, &stable) {
                tracing::warn!(model = %m.name, version = %cp.version, %reason, "canary out of budget: rolling back");
                app.metrics
                    .canary_rollbacks
                    .with_label_values(&[&m.name])
                    .inc();
                if let Err(e) =
                    change_canary(&app, &m.name, Change::Rollback, "guard", Some(&reason)).await
                {
                    tracing::error!(model = %m.name, error = ?e, "guard rollback failed");
                }
                since.remove(&m.name);
                continue;
            }
            // Step up while green: a full interval at this weight with enough traffic seen.
            let next = c.steps.iter().copied().find(|s| *s > c.weight_percent);
            if let Some(next) = next {
                if entry.1.elapsed() >= c.step_interval && canary.requests >= guard.min_requests {
                    let reason = format!(
                        "within budget for {:?} at {} %: stepping to {next} %",
                        c.step_interval, c.weight_percent
                    );
                    if change_canary(&app, &m.name, Change::Weight(next), "guard", Some(&reason))
                        .await
                        .is_ok()
                    {
                        since.insert(m.name.clone(), (next, Instant::now()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> GuardConfig {
        GuardConfig {
            max_error_rate: 0.05,
            max_ttft_p95_ms: Some(500.0),
            min_requests: 100,
            window: Duration::from_secs(60),
        }
    }

    fn summary(requests: u64, errors: u64, p95: Option<f64>) -> Summary {
        Summary {
            requests,
            errors,
            error_rate: errors as f64 / requests.max(1) as f64,
            ttft_p50_ms: p95,
            ttft_p95_ms: p95,
        }
    }

    #[test]
    fn breaches_need_enough_traffic_and_name_the_reason() {
        let stable = summary(1000, 1, Some(100.0));
        assert_eq!(breach(&guard(), &summary(50, 25, None), &stable), None);
        let why = breach(&guard(), &summary(200, 40, Some(100.0)), &stable).unwrap();
        assert!(why.contains("error rate 20.0 %"), "{why}");
        let why = breach(&guard(), &summary(200, 0, Some(750.0)), &stable).unwrap();
        assert!(why.contains("TTFT p95 750 ms"), "{why}");
        assert_eq!(
            breach(&guard(), &summary(200, 5, Some(300.0)), &stable),
            None
        );
    }
}
