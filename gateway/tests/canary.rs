//! Canary routing, operator controls, the guard and hot reload, through the real gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use loadtest::{MockConfig, MockReplica};

/// Stable 1.0.0 on one mock, canary 1.1.0 on another.
fn two_versions(stable: &str, canary: &str, extra: &str, canary_line: &str) -> String {
    format!(
        "[auth]\nenabled = false\n{extra}\n\
         [[models]]\nname = \"{MODEL}\"\nstable = \"1.0.0\"\n{canary_line}\n\
         [[models.versions]]\nname = \"1.0.0\"\nreplicas = [{{ url = \"{stable}\" }}]\n\
         [[models.versions]]\nname = \"1.1.0\"\nreplicas = [{{ url = \"{canary}\" }}]\n"
    )
}

fn version_of(r: &Reply) -> String {
    r.headers["x-gateway-model-version"]
        .to_str()
        .unwrap()
        .to_owned()
}

async fn drive(addr: std::net::SocketAddr, n: usize, workers: usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                post_json(addr, "/v1/chat/completions", chat(false)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_over_20000_requests_and_weight_changes_apply_on_the_next_request() {
    const TOKEN: &str = "GW_TEST_ADMIN_CANARY_SPLIT";
    std::env::set_var(TOKEN, "ops:split-token");
    let quick = MockConfig {
        ttft: Duration::ZERO,
        inter_token: Duration::ZERO,
        tokens: 1,
        ..MockConfig::default()
    };
    let stable = mock(quick.clone()).await;
    let canary = mock(quick).await;
    let gw = TestGateway::start(&two_versions(
        &stable.url(),
        &canary.url(),
        &format!("[server]\nadmin_token_env = \"{TOKEN}\"\n"),
        "canary = { version = \"1.1.0\", weight_percent = 10.0, sticky = \"none\" }",
    ))
    .await;
    drive(gw.addr, 20_000, 8).await;
    let c = canary.stats.requests.load(Ordering::Relaxed);
    let s = stable.stats.requests.load(Ordering::Relaxed);
    let share = c as f64 / (c + s) as f64;
    eprintln!("canary share at 10 %: {:.2} % of {}", share * 100.0, c + s);
    assert_eq!(c + s, 20_000);
    assert!((share - 0.10).abs() <= 0.01, "{share}");

    for (weight, want) in [(100.0, "1.1.0"), (0.0, "1.0.0"), (100.0, "1.1.0")] {
        let body = serde_json::json!({"version": "1.1.0", "weight_percent": weight}).to_string();
        let r = request(
            gw.admin,
            "PUT",
            &format!("/admin/models/{MODEL}/canary"),
            &[("authorization", "Bearer split-token")],
            body,
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
        assert_eq!(
            version_of(&r),
            want,
            "the very next request after {weight} %"
        );
    }
    let metrics =
        String::from_utf8_lossy(&request(gw.admin, "GET", "/metrics", &[], "").await.body)
            .into_owned();
    assert!(metrics.contains(&format!(
        "gateway_canary_weight{{model=\"{MODEL}\",version=\"1.1.0\"}} 100"
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_keep_their_arm_and_raising_the_weight_only_adds_clients() {
    const TOKEN: &str = "GW_TEST_ADMIN_CANARY_STICKY";
    std::env::set_var(TOKEN, "sticky-token");
    let stable = mock(fast()).await;
    let canary = mock(fast()).await;
    let gw = TestGateway::start(&two_versions(
        &stable.url(),
        &canary.url(),
        &format!("[server]\nadmin_token_env = \"{TOKEN}\"\n"),
        "canary = { version = \"1.1.0\", weight_percent = 5.0, sticky = \"header:x-user\" }",
    ))
    .await;
    let arm_of = |user: usize| {
        let addr = gw.addr;
        async move {
            let u = format!("user-{user}");
            let r = post_chat(addr, &[("x-user", &u)], chat(false).to_string()).await;
            version_of(&r)
        }
    };
    let mut at5 = HashMap::new();
    for u in 0..1000 {
        let first = arm_of(u).await;
        assert_eq!(
            arm_of(u).await,
            first,
            "user-{u} switched arms without a change"
        );
        at5.insert(u, first);
    }
    let r = admin(
        &gw,
        "PUT",
        &format!("/admin/models/{MODEL}/canary"),
        "sticky-token",
    )
    .await;
    assert_eq!(r.status, 400, "a PUT without a body is refused");
    let body = serde_json::json!({"version": "1.1.0", "weight_percent": 20.0}).to_string();
    let r = request(
        gw.admin,
        "PUT",
        &format!("/admin/models/{MODEL}/canary"),
        &[("authorization", "Bearer sticky-token")],
        body,
    )
    .await;
    assert_eq!(r.status, 200);
    let (mut n5, mut n20) = (0, 0);
    for u in 0..1000 {
        let now = arm_of(u).await;
        if at5[&u] == "1.1.0" {
            n5 += 1;
            assert_eq!(
                now, "1.1.0",
                "user-{u} left the canary when the weight went up"
            );
        }
        n20 += usize::from(now == "1.1.0");
    }
    eprintln!("sticky: {n5} of 1000 users on canary at 5 %, {n20} at 20 %");
    assert!((30..=70).contains(&n5) && (160..=240).contains(&n20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_the_current_link_changes_the_stable_version_within_a_second() {
    let dir = temp_dir("deploy");
    for v in ["1.0.0", "1.1.0"] {
        std::fs::create_dir_all(dir.join(v)).unwrap();
        std::fs::write(dir.join(v).join("config.json"), "{}").unwrap();
    }
    std::os::unix::fs::symlink("1.0.0", dir.join("current")).unwrap();
    let a = mock(fast()).await;
    let b = mock(fast()).await;
    let cfg = format!(
        "[auth]\nenabled = false\n[[models]]\nname = \"{MODEL}\"\ndeploy_dir = \"{}\"\n\
         [[models.versions]]\nname = \"1.0.0\"\nreplicas = [{{ url = \"{}\" }}]\n\
         [[models.versions]]\nname = \"1.1.0\"\nreplicas = [{{ url = \"{}\" }}]\n",
        dir.display(),
        a.url(),
        b.url()
    );
    let gw = TestGateway::start(&cfg).await;
    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(version_of(&r), "1.0.0");
    gateway::canary::versions::switch(&dir, "1.1.0").unwrap();
    let switched = Instant::now();
    loop {
        let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
        if version_of(&r) == "1.1.0" {
            break;
        }
        assert!(
            switched.elapsed() < Duration::from_secs(1),
            "link switch not seen within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("link switch reflected after {:?}", switched.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn pinning_a_version_needs_pin_versions() {
    let stable = mock(fast()).await;
    let canary = mock(fast()).await;
    let pin = format!("{MODEL}@1.1.0");
    let keys = format!(
        "[[api_keys]]\nname = \"pinner\"\nsha256 = \"{}\"\npin_versions = true\n\
         [[api_keys]]\nname = \"plain\"\nsha256 = \"{}\"\n",
        sha("sk-pinner-1234567890"),
        sha("sk-plain-1234567890")
    );
    let cfg = two_versions(&stable.url(), &canary.url(), "", "")
        .replace("[auth]\nenabled = false\n", "")
        + &keys;
    let gw = TestGateway::start(&cfg).await;
    let body = serde_json::json!({"model": pin, "messages": []}).to_string();
    let r = post_chat(
        gw.addr,
        &[("authorization", "Bearer sk-pinner-1234567890")],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(version_of(&r), "1.1.0");
    let r = post_chat(
        gw.addr,
        &[("authorization", "Bearer sk-plain-1234567890")],
        body,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "version_pin_not_allowed");
    let unknown = serde_json::json!({"model": format!("{MODEL}@9.9.9"), "messages": []});
    let r = post_chat(
        gw.addr,
        &[("authorization", "Bearer sk-pinner-1234567890")],
        unknown.to_string(),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_rolls_back_a_canary_with_20_percent_errors() {
    let dir = temp_dir("guard");
    let audit = dir.join("audit.log");
    let stable = mock(fast()).await;
    let canary = mock(MockConfig {
        error_rate: 0.2,
        error_status: 500,
        ..fast()
    })
    .await;
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        two_versions(
            &stable.url(),
            &canary.url(),
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\naudit_log = \"{}\"\n\
                 [health]\nmax_fails = 0\n",
                audit.display()
            ),
            "canary = { version = \"1.1.0\", weight_percent = 50.0, sticky = \"none\", \
             guard = { max_error_rate = 0.05, min_requests = 50, window = \"30s\" } }",
        ),
    )
    .unwrap();
    let gw = TestGateway::start_file(&path).await;
    let started = Instant::now();
    let mut rolled_back = false;
    while started.elapsed() < Duration::from_secs(10) {
        drive(gw.addr, 50, 4).await;
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("weight_percent = 0.0") {
            rolled_back = true;
            break;
        }
    }
    assert!(rolled_back, "the guard did not roll back");
    eprintln!("guard rolled back the canary after {:?}", started.elapsed());
    // Nothing goes to the canary now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = canary.stats.requests.load(Ordering::Relaxed);
    drive(gw.addr, 50, 2).await;
    assert_eq!(canary.stats.requests.load(Ordering::Relaxed), before);
    let log = std::fs::read_to_string(&audit).unwrap();
    let entry: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(entry["who"], "guard");
    assert_eq!(entry["action"], "rollback");
    assert!(entry["reason"].as_str().unwrap().contains("error rate"));
    assert_eq!(entry["before"]["canary"]["weight_percent"], 50.0);
    assert_eq!(entry["after"]["canary"]["weight_percent"], 0.0);
    let metrics =
        String::from_utf8_lossy(&request(gw.admin, "GET", "/metrics", &[], "").await.body)
            .into_owned();
    assert!(metrics.contains(&format!(
        "gateway_canary_rollbacks_total{{model=\"{MODEL}\"}} 1"
    )));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_weight_change_lands_in_the_file_with_its_comments_and_survives_a_restart() {
    const TOKEN: &str = "GW_TEST_ADMIN_CANARY_PERSIST";
    std::env::set_var(TOKEN, "persist-token");
    let dir = temp_dir("persist");
    let path = dir.join("gateway.toml");
    let stable = mock(fast()).await;
    let canary = mock(fast()).await;
    let text = two_versions(
        &stable.url(),
        &canary.url(),
        &format!(
            "# Production gateway: edit with care.\n[server]\nlisten = \"127.0.0.1:0\"\n\
             admin_listen = \"127.0.0.1:0\"\nadmin_token_env = \"{TOKEN}\"  # ops token\n"
        ),
        "# canary under test\ncanary = { version = \"1.1.0\", weight_percent = 5.0 }  # start small",
    );
    std::fs::write(&path, &text).unwrap();
    let gw = TestGateway::start_file(&path).await;
    let body = serde_json::json!({"version": "1.1.0", "weight_percent": 25.0}).to_string();
    let r = request(
        gw.admin,
        "PUT",
        &format!("/admin/models/{MODEL}/canary"),
        &[("authorization", "Bearer persist-token")],
        body,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["canary"]["weight_percent"], 25.0);
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.contains("weight_percent = 25.0"), "{after}");
    for comment in [
        "# Production gateway: edit with care.",
        "# ops token",
        "# canary under test",
        "# start small",
    ] {
        assert!(after.contains(comment), "lost {comment:?}:\n{after}");
    }
    let r = admin(&gw, "GET", "/admin/models", "persist-token").await;
    assert_eq!(r.json()["models"][0]["canary"]["weight_percent"], 25.0);
    // An invalid change is refused and changes nothing.
    let bad = serde_json::json!({"version": "7.7.7", "weight_percent": 10.0}).to_string();
    let r = request(
        gw.admin,
        "PUT",
        &format!("/admin/models/{MODEL}/canary"),
        &[("authorization", "Bearer persist-token")],
        bad,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), after);
    gw.shutdown().await;
    // A restart from the same file keeps the weight.
    let again = TestGateway::start_file(&path).await;
    let r = admin(&again, "GET", "/admin/models", "persist-token").await;
    assert_eq!(r.json()["models"][0]["canary"]["weight_percent"], 25.0);
    // Promote: the canary becomes stable.
    let r = admin(
        &again,
        "POST",
        &format!("/admin/models/{MODEL}/promote"),
        "persist-token",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["stable"], "1.1.0");
    let r = post_json(again.addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(version_of(&r), "1.1.0");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_200_concurrent_requests_lose_nothing() {
    const TOKEN: &str = "GW_TEST_ADMIN_RELOAD";
    std::env::set_var(TOKEN, "reload-token");
    let dir = temp_dir("reload");
    let path = dir.join("gateway.toml");
    let m = mock(MockConfig {
        tokens: 8,
        inter_token: Duration::from_millis(5),
        ..fast()
    })
    .await;
    let m2 = mock(MockConfig {
        tokens: 8,
        inter_token: Duration::from_millis(5),
        ..fast()
    })
    .await;
    let valid = |retries: u32| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token_env = \"{TOKEN}\"\n\
             [upstream]\nretries = {retries}\n[auth]\nenabled = false\n\
             [[models]]\nname = \"{MODEL}\"\n[[models.versions]]\nname = \"1.0.0\"\n\
             replicas = [{{ url = \"{}\" }}, {{ url = \"{}\" }}]\n",
            m.url(),
            m2.url()
        )
    };
    std::fs::write(&path, valid(2)).unwrap();
    let gw = Arc::new(TestGateway::start_file(&path).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..200 {
        let (addr, stop) = (gw.addr, stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut bad) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                if i % 2 == 0 {
                    let resp = open_stream(addr).await;
                    let status = resp.status();
                    let (body, clean) = read_all(resp.into_body()).await;
                    if status == 200 && clean && body.ends_with(b"data: [DONE]\n\n") {
                        ok += 1;
                    } else {
                        bad += 1;
                    }
                } else {
                    let r = post_json(addr, "/v1/chat/completions", chat(false)).await;
                    if r.status == 200 {
                        ok += 1;
                    } else {
                        bad += 1;
                    }
                }
            }
            (ok, bad)
        }));
    }
    let mut refused = 0;
    for n in 0..50 {
        if n % 2 == 0 {
            std::fs::write(&path, valid(1 + n % 3)).unwrap();
        } else {
            std::fs::write(&path, "[[models]]\nname = \"broken\"\n").unwrap();
        }
        let r = admin(&gw, "POST", "/admin/reload", "reload-token").await;
        if n % 2 == 1 {
            assert_eq!(r.status, 400);
            refused += 1;
            // Still serving on the old configuration.
            assert!(gw.state.snapshot().routes.contains_key(MODEL));
        } else {
            assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    std::fs::write(&path, valid(2)).unwrap();
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut bad) = (0, 0);
    for c in clients {
        let (o, b) = c.await.unwrap();
        ok += o;
        bad += b;
    }
    eprintln!("50 reloads ({refused} invalid) under 200 concurrent clients: {ok} requests ok, {bad} failed");
    assert_eq!(bad, 0);
    assert!(ok > 400);
    let metrics =
        String::from_utf8_lossy(&request(gw.admin, "GET", "/metrics", &[], "").await.body)
            .into_owned();
    assert!(metrics.contains("gateway_config_reload_total{result=\"error\"}"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_file_is_picked_up_without_a_command_and_a_bad_edit_is_ignored() {
    let dir = temp_dir("watch");
    let path = dir.join("gateway.toml");
    let a = mock(fast()).await;
    let b = MockReplica::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            model: "second".into(),
            ..fast()
        },
    )
    .await
    .unwrap();
    let base = format!(
        "# watched\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [auth]\nenabled = false\n[[models]]\nname = \"{MODEL}\"\n[[models.versions]]\n\
         name = \"1\"\nreplicas = [{{ url = \"{}\" }}]\n",
        a.url()
    );
    std::fs::write(&path, &base).unwrap();
    let gw = TestGateway::start_file(&path).await;
    let second = serde_json::json!({"model": "second", "messages": []});
    assert_eq!(
        post_json(gw.addr, "/v1/chat/completions", second.clone())
            .await
            .status,
        404
    );
    std::fs::write(&path, format!("{base}not toml at all [[[\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        post_json(gw.addr, "/v1/chat/completions", chat(false))
            .await
            .status,
        200
    );
    let added = format!(
        "{base}[[models]]\nname = \"second\"\n[[models.versions]]\nname = \"1\"\n\
         replicas = [{{ url = \"{}\" }}]\n",
        b.url()
    );
    std::fs::write(&path, added).unwrap();
    let seen = Instant::now();
    loop {
        if post_json(gw.addr, "/v1/chat/completions", second.clone())
            .await
            .status
            == 200
        {
            break;
        }
        assert!(
            seen.elapsed() < Duration::from_secs(3),
            "file change not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_canary_steps_up_through_its_steps() {
    let dir = temp_dir("steps");
    let path = dir.join("gateway.toml");
    let stable = mock(fast()).await;
    let canary = mock(fast()).await;
    std::fs::write(
        &path,
        two_versions(
            &stable.url(),
            &canary.url(),
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
            "canary = { version = \"1.1.0\", weight_percent = 10.0, sticky = \"none\", \
             steps = [10, 50], step_interval = \"1s\", \
             guard = { max_error_rate = 0.05, min_requests = 10, window = \"30s\" } }",
        ),
    )
    .unwrap();
    let gw = TestGateway::start_file(&path).await;
    let started = Instant::now();
    loop {
        drive(gw.addr, 100, 4).await;
        let w = gw.state.snapshot().routes[MODEL]
            .canary
            .as_ref()
            .map(|c| c.weight_percent);
        if w == Some(50.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "never stepped up (at {w:?})"
        );
    }
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("weight_percent = 50.0"));
    std::fs::remove_dir_all(&dir).unwrap();
}
