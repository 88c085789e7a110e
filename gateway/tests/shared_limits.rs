//! Limits shared by several gateway instances through a real Redis (a `redis-server` each test
//! starts on a free port and stops by its PID), and what happens when Redis goes away.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

const KEY: &str = "sk-shared-cccccccccccccccc";

fn shared_config(replica: &str, redis: &str, limits_extra: &str, key_extra: &str) -> String {
    config(
        &[replica.to_owned()],
        &format!(
            "[auth]\nenabled = true\n\
             [limits]\nredis_url = \"{redis}\"\nredis_timeout = \"200ms\"\n{limits_extra}\n\
             [[api_keys]]\nname = \"shared\"\nsha256 = \"{}\"\n{key_extra}\n",
            sha(KEY)
        ),
    )
}

async fn metrics(gw: &TestGateway) -> String {
    let r = request(gw.admin, "GET", "/metrics", &[], "").await;
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_key_limit_through_redis() {
    let redis = RedisServer::start().await;
    let m = mock(fast()).await;
    let cfg = shared_config(
        &m.url(),
        &redis.url(),
        "instances = 2",
        "requests_per_second = 50.0\nburst = 10",
    );
    let a = TestGateway::start(&cfg).await;
    let b = TestGateway::start(&cfg).await;
    let secs = 4.0;
    let (ra, rb) = tokio::join!(pace(a.addr, KEY, 100, secs), pace(b.addr, KEY, 100, secs));
    let ok = ra.0 + rb.0;
    let expected = 10.0 + 50.0 * secs;
    eprintln!(
        "2 instances x 100 r/s for {secs} s against a shared 50 r/s burst 10: {ok} accepted ({} + {}), expected {expected}",
        ra.0, rb.0
    );
    assert_eq!(ra.2 + rb.2, 0, "unexpected errors");
    assert!(
        (ok as f64 - expected).abs() <= expected * 0.05,
        "accepted {ok}"
    );
    assert!(metrics(&a).await.contains("gateway_ratelimit_degraded 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_falls_back_to_local_shares_and_comes_back() {
    let mut redis = RedisServer::start().await;
    let port = redis.port;
    let m = mock(fast()).await;
    let gw = TestGateway::start(&shared_config(
        &m.url(),
        &redis.url(),
        "instances = 2",
        "requests_per_second = 100.0\nburst = 20\ntokens_per_minute = 1000000",
    ))
    .await;
    let (ok, _, other) = pace(gw.addr, KEY, 50, 1.0).await;
    assert_eq!((ok, other), (50, 0));

    redis.stop();
    // Under the local fallback this instance takes half the rate: 50 r/s, burst 10.
    let (ok, limited, other) = pace(gw.addr, KEY, 100, 2.0).await;
    eprintln!(
        "Redis down: {ok} accepted, {limited} limited of 200 at 100 r/s (local share 50 r/s)"
    );
    assert_eq!(other, 0, "requests failed instead of falling back");
    assert!((90..=125).contains(&ok), "accepted {ok}");
    let text = metrics(&gw).await;
    assert!(text.contains("gateway_ratelimit_degraded 1"), "{text}");
    assert!(!text.contains("gateway_ratelimit_redis_errors_total 0"));

    let _back = RedisServer::start_on(port).await;
    let restored = async {
        loop {
            if metrics(&gw).await.contains("gateway_ratelimit_degraded 0") {
                return;
            }
            let _ = pace(gw.addr, KEY, 10, 0.2).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), restored)
        .await
        .expect("never returned to Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_open_admits_and_fallback_closed_refuses_with_503() {
    let m = mock(fast()).await;
    // Nothing listens here: Redis is down from the start.
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let open = TestGateway::start(&shared_config(
        &m.url(),
        &dead,
        "redis_fallback = \"open\"",
        "requests_per_second = 1.0\nburst = 1",
    ))
    .await;
    let (ok, limited, other) = pace(open.addr, KEY, 50, 0.4).await;
    assert_eq!((ok, limited, other), (20, 0, 0));

    let closed = TestGateway::start(&shared_config(
        &m.url(),
        &dead,
        "redis_fallback = \"closed\"",
        "requests_per_second = 1.0\nburst = 1",
    ))
    .await;
    let auth = format!("Bearer {KEY}");
    let r = post_chat(
        closed.addr,
        &[("authorization", &auth)],
        chat(false).to_string(),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "ratelimit_unavailable");
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_budgets_are_shared_and_settled_in_redis() {
    let redis = RedisServer::start().await;
    let m = mock(fast()).await;
    let cfg = shared_config(&m.url(), &redis.url(), "", "tokens_per_minute = 3000");
    let a = TestGateway::start(&cfg).await;
    let b = TestGateway::start(&cfg).await;
    let body = serde_json::json!({"model": MODEL, "max_tokens": 900, "messages": []});
    let auth = format!("Bearer {KEY}");
    let send_to = |gw: &TestGateway| {
        let (addr, auth, body) = (gw.addr, auth.clone(), body.to_string());
        async move { post_chat(addr, &[("authorization", &auth)], body).await }
    };
    // Each reservation is ~920 tokens; they settle to the mock's real usage (~20).
    for gw in [&a, &b, &a, &b, &a, &b] {
        let r = send_to(gw).await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        let left: u64 = r.headers["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(left < 3000);
    }
    // Without settlement, six reservations of ~920 would have exhausted 3,000 tokens.
}
