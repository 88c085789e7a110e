//! `/metrics` against what the mock replicas really served: counts, token totals, TTFT and
//! inter-token histograms, client disconnects, and bounded label cardinality.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use loadtest::MockConfig;

/// Parses the Prometheus text format into (series with labels, value).
fn scrape(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn value(series: &[(String, f64)], name: &str, labels: &[&str]) -> f64 {
    series
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

async fn metrics(gw: &TestGateway) -> String {
    let r = request(gw.admin, "GET", "/metrics", &[], "").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    String::from_utf8(r.body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_histograms_and_tokens_match_what_the_replicas_served() {
    const TOKENS: usize = 6;
    let m = mock(MockConfig {
        ttft: Duration::from_millis(100),
        inter_token: Duration::from_millis(20),
        tokens: TOKENS,
        ..MockConfig::default()
    })
    .await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    // Ten clients, twenty requests each: enough overlap to be realistic, not so much that a
    // 2-core machine measures its own scheduling instead of the replica's delays.
    let mut tasks = Vec::new();
    for w in 0..10 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                if (w + i) % 2 == 0 {
                    let resp = open_stream(addr).await;
                    assert_eq!(resp.status(), 200);
                    assert!(read_all(resp.into_body()).await.1);
                } else {
                    let r = post_json(addr, "/v1/chat/completions", chat(false)).await;
                    assert_eq!(r.status, 200);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = metrics(&gw).await;
    let s = scrape(&text);
    let model = format!("model=\"{MODEL}\"");
    assert_eq!(
        value(
            &s,
            "ai_requests_total",
            &[&model, "version=\"1.0.0\"", "status=\"200\""]
        ),
        200.0
    );
    // Completion tokens: usage of the 100 JSON answers, content events of the 100 streams.
    assert_eq!(
        value(&s, "ai_tokens_total", &[&model, "type=\"completion\""]),
        (200 * TOKENS) as f64
    );
    let prompt_each = (chat(false).to_string().len() / 4) as f64;
    assert_eq!(
        value(&s, "ai_tokens_total", &[&model, "type=\"prompt\""]),
        100.0 * prompt_each
    );
    assert_eq!(
        value(&s, "ai_time_to_first_token_seconds_count", &[&model]),
        100.0
    );
    let ttft_mean = value(&s, "ai_time_to_first_token_seconds_sum", &[&model]) / 100.0;
    assert!((ttft_mean - 0.100).abs() <= 0.005, "TTFT mean {ttft_mean}");
    let gaps = 100.0 * (TOKENS - 1) as f64;
    assert_eq!(
        value(&s, "ai_inter_token_latency_seconds_count", &[&model]),
        gaps
    );
    let itl_mean = value(&s, "ai_inter_token_latency_seconds_sum", &[&model]) / gaps;
    assert!((itl_mean - 0.020).abs() <= 0.005, "ITL mean {itl_mean}");
    // The median falls in the bucket holding the configured delay.
    let le = |b: &str| value(&s, "ai_time_to_first_token_seconds_bucket", &[&model, b]);
    assert!(le("le=\"0.1\"") < 50.0 && le("le=\"0.15\"") >= 50.0);
    let le = |b: &str| value(&s, "ai_inter_token_latency_seconds_bucket", &[&model, b]);
    assert!(le("le=\"0.015\"") < gaps / 2.0 && le("le=\"0.03\"") >= gaps / 2.0);
    eprintln!(
        "TTFT mean {:.1} ms (mock 100 ms), ITL mean {:.1} ms (mock 20 ms)",
        ttft_mean * 1e3,
        itl_mean * 1e3
    );
    assert_eq!(
        value(
            &s,
            "ai_request_duration_seconds_count",
            &[&model, "operation=\"chat\""]
        ),
        200.0
    );
    assert!(value(&s, "gateway_overhead_seconds_count", &[]) >= 200.0);
    // The config watch samples the scheduler's lateness every 250 ms; the run took seconds.
    assert!(value(&s, "gateway_event_loop_lag_seconds_count", &[]) >= 1.0);
    assert_eq!(value(&s, "gateway_upstream_inflight", &[]), 0.0);
    assert_eq!(
        value(
            &s,
            "gateway_upstream_healthy",
            &[&format!("replica=\"{}\"", m.addr)]
        ),
        1.0
    );
    assert_eq!(value(&s, "ai_queue_size", &[&model]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_leaves_counts_as_client_closed() {
    let m = mock(MockConfig {
        tokens: 500,
        inter_token: Duration::from_millis(10),
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    let mut resp = open_stream(gw.addr).await;
    use http_body_util::BodyExt;
    resp.body_mut().frame().await.unwrap().unwrap();
    drop(resp);
    m.stats.wait_aborted().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = scrape(&metrics(&gw).await);
    assert_eq!(
        value(&s, "ai_requests_total", &["status=\"client_closed\""]),
        1.0
    );
    assert_eq!(value(&s, "ai_requests_total", &["status=\"200\""]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_model_names_leave_the_series_count_bounded() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    let series = |t: &str| scrape(t).len();
    let before = series(&metrics(&gw).await);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            for i in 0..1250 {
                let name = format!("rand-{w}-{i}-{}", fastrand::u64(..));
                let r = post_json(
                    addr,
                    "/v1/chat/completions",
                    serde_json::json!({"model": name, "messages": []}),
                )
                .await;
                assert_eq!(r.status, 404);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let text = metrics(&gw).await;
    let after = series(&text);
    eprintln!("series before {before}, after 10,000 random model names {after}");
    assert!(after <= before + 30, "series grew from {before} to {after}");
    assert!(!text.contains("rand-"));
    assert_eq!(
        value(
            &scrape(&text),
            "ai_requests_total",
            &["model=\"unknown\"", "status=\"404\""]
        ),
        10_000.0
    );
}
