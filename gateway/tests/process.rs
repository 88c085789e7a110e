//! The `gateway` binary as operators run it: SIGTERM drain, check-config, the demo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use loadtest::MockConfig;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Kills the child by its own PID if a test fails half-way.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// `gateway serve --config <path>`, its JSON log on a pipe (stderr inherited unless the caller
/// says otherwise), stopped by the guard.
fn serve(
    path: &std::path::Path,
    configure: impl FnOnce(&mut Command) -> &mut Command,
) -> ChildGuard {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    ChildGuard(Some(configure(&mut cmd).spawn().unwrap()))
}

/// The gateway's JSON log lines, as they come.
type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Follows the JSON log on stdout: the "data listener ready" line once it comes, and every
/// line kept as it comes.
fn follow_log(child: &mut Child) -> (serde_json::Value, Log) {
    let stdout = child.stdout.take().unwrap();
    let lines = Log::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let kept = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("data listener ready") {
                let _ = tx.send(serde_json::from_str::<serde_json::Value>(&line).unwrap());
            }
            kept.lock().unwrap().push(line);
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("gateway did not start");
    (ready, lines)
}

/// The data listener's address, from the log.
fn wait_for_addr(child: &mut Child) -> SocketAddr {
    follow_log(child).0["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_20_open_streams_finish_then_exits_0() {
    let m = mock(MockConfig {
        tokens: 20,
        inter_token: Duration::from_millis(40),
        ..fast()
    })
    .await;
    let cfg = config(
        &[m.url()],
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
    );
    let path = temp_file("drain.toml", &cfg);
    let mut guard = serve(&path, |c| c);
    let child = guard.0.as_mut().unwrap();
    let addr = wait_for_addr(child);
    let mut streams = Vec::new();
    for _ in 0..20 {
        let resp = open_stream(addr).await;
        assert_eq!(resp.status(), 200);
        streams.push(tokio::spawn(read_all(resp.into_body())));
    }
    sigterm(child.id());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections once draining.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    for s in streams {
        let (body, clean) = s.await.unwrap();
        assert!(clean, "stream cut by shutdown");
        assert!(body.ends_with(b"data: [DONE]\n\n"));
    }
    let status = tokio::task::spawn_blocking(move || {
        let mut c = guard.0.take().unwrap();
        c.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn workers_sets_the_number_of_runtime_threads() {
    let path = temp_file(
        "workers.toml",
        &config(
            &["http://127.0.0.1:9".to_string()],
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
        ),
    );
    for workers in [1, 3] {
        let mut child = Command::new(BIN)
            .args(["--workers", &workers.to_string(), "serve", "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let _guard = ChildGuard(Some(child));
        let ready = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("data listener ready"))
            .expect("gateway did not start");
        let v: serde_json::Value = serde_json::from_str(&ready).unwrap();
        assert_eq!(v["workers"], workers, "{ready}");
        // One worker is tokio's single-threaded scheduler (no work stealing to pay for).
        let scheduler = if workers == 1 {
            "current_thread"
        } else {
            "multi_thread"
        };
        assert_eq!(v["scheduler"], scheduler, "{ready}");
    }
}

#[test]
fn check_config_prints_every_error_and_exits_1() {
    let path = temp_file(
        "three-errors.toml",
        r#"
        [auth]
        enabled = false
        [upstream]
        connect_timeout = "5 parsecs"
        [[models]]
        name = "a"
        balancer = "fastest"
        [[models.versions]]
        name = "v1"
        replicas = [{ url = "htp:/x" }]
        "#,
    );
    let out = Command::new(BIN)
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("3 error(s)"), "{err}");
    assert!(err.contains("upstream.connect_timeout:"), "{err}");
    assert!(
        err.contains("models[0].balancer: unknown balancer \"fastest\""),
        "{err}"
    );
    assert!(
        err.contains(r#"models[0].versions[0].replicas[0].url: invalid URL "htp:/x""#),
        "{err}"
    );
}

#[test]
fn check_config_accepts_the_shipped_configs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("config");
    for f in ["gateway.example.toml", "demo.toml", "minimal.toml"] {
        let out = Command::new(BIN)
            .args(["check-config", root.join(f).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn serve_without_a_config_or_with_a_bad_one_fails_clearly() {
    let out = Command::new(BIN)
        .arg("serve")
        .env_remove("GATEWAY_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let path = temp_file("syntax.toml", "[server\nlisten = 1");
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new(BIN)
        .args(["versions", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dir"));
}

#[test]
fn versions_manages_a_deployment_tree_and_refuses_bad_switches() {
    let dir = std::env::temp_dir().join(format!("gateway-versions-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for v in ["0.9.0", "1.0.0", "1.0.1", "1.1.0", "1.2.0"] {
        std::fs::create_dir_all(dir.join(v)).unwrap();
        std::fs::write(dir.join(v).join("weights.bin"), vec![0u8; 1000]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::create_dir_all(dir.join("2.0.0-empty")).unwrap();
    std::os::unix::fs::symlink("1.0.0", dir.join("current")).unwrap();
    let d = dir.to_str().unwrap().to_owned();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["versions", "--dir", &d])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&["verify"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out, _) = run(&["switch", "1.0.1"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("current -> 1.0.1 (previous: 1.0.0)"), "{out}");
    let (code, out, _) = run(&["list"]);
    assert_eq!(code, Some(0));
    assert!(
        out.lines()
            .any(|l| l.starts_with("1.0.1") && l.ends_with("current")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("1.0.0") && l.ends_with("previous")),
        "{out}"
    );
    for (bad, why) in [("9.9.9", "does not exist"), ("2.0.0-empty", "empty")] {
        let (code, _, err) = run(&["switch", bad]);
        assert_eq!(code, Some(1));
        assert!(err.contains(why), "{err}");
    }
    let (code, out, _) = run(&["rollback"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("current -> 1.0.0"), "{out}");
    // Keep the newest one, plus current (1.0.0), previous (1.0.1), the canary and a pin.
    let (code, out, _) = run(&[
        "cleanup", "--keep", "1", "--canary", "1.1.0", "--pin", "0.9.0",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 version(s) deleted"), "{out}");
    for v in ["0.9.0", "1.0.0", "1.0.1", "1.1.0", "2.0.0-empty"] {
        assert!(dir.join(v).is_dir(), "{v} was deleted: {out}");
    }
    assert!(
        !dir.join("1.2.0").exists() || out.contains("deleted"),
        "{out}"
    );
    std::fs::remove_dir_all(dir.join("1.0.0")).unwrap();
    let (code, _, err) = run(&["verify"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("dangling") || err.contains("not a version"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_cli_drives_the_admin_api() {
    std::env::set_var("GW_TEST_CLI_TOKEN", "cli:cli-secret");
    let a = mock(fast()).await;
    let b = mock(fast()).await;
    let cfg = format!(
        "[server]\nadmin_token_env = \"GW_TEST_CLI_TOKEN\"\n[auth]\nenabled = false\n\
         [[models]]\nname = \"{MODEL}\"\nstable = \"1\"\n\
         [[models.versions]]\nname = \"1\"\nreplicas = [{{ url = \"{}\" }}]\n\
         [[models.versions]]\nname = \"2\"\nreplicas = [{{ url = \"{}\" }}]\n",
        a.url(),
        b.url()
    );
    let gw = TestGateway::start(&cfg).await;
    let admin = format!("http://{}", gw.admin);
    let cli = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["canary", "--admin"])
                .args(args)
                .env("GATEWAY_ADMIN_TOKEN", "cli-secret")
                .output()
                .unwrap()
        })
    };
    let set = |model: &str, weight: &str| {
        vec![
            admin.clone(),
            "set".into(),
            model.into(),
            "--version".into(),
            "2".into(),
            "--weight".into(),
            weight.into(),
        ]
    };
    let out = cli(set(MODEL, "30")).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let weight = gw.state.snapshot().routes[MODEL]
        .canary
        .as_ref()
        .unwrap()
        .weight_percent;
    assert_eq!(weight, 30.0);
    let out = cli(vec![admin.clone(), "rollback".into(), MODEL.into()])
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(gw.state.snapshot().routes[MODEL].canary.is_none());
    let out = cli(set("nope", "5")).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = cli(vec![admin.clone(), "status".into()]).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"models\""));
}

#[test]
fn hash_key_prints_the_sha256_of_a_key_on_stdin() {
    use std::io::Write;
    let run = |input: &[u8]| {
        let mut child = Command::new(BIN)
            .arg("hash-key")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    for input in [&b"test"[..], b"test\n", b"test\r\n"] {
        let out = run(input);
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n"
        );
    }
    for bad in [&b""[..], b"two words\n"] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_the_curl_it_prints() {
    let child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(Some(child));
    let child = guard.0.as_mut().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("curl ") {
                let _ = tx.send(line);
            }
        }
    });
    let curl = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("no curl printed");
    let url = curl
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let body = curl.split("-d '").nth(1).unwrap().trim_end_matches('\'');
    // The demo runs with auth on and prints its key in the curl.
    let auth = curl
        .split("-H 'Authorization: ")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("the demo's curl carries its key")
        .to_owned();
    let without = send(addr, "POST", "/v1/chat/completions", &[], body.to_owned()).await;
    assert_eq!(without.status(), 401);
    let resp = send(
        addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        body.to_owned(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let (got, clean) = read_all(resp.into_body()).await;
    assert!(clean && got.ends_with(b"data: [DONE]\n\n"));
    sigterm(child.id());
    let status = tokio::task::spawn_blocking(move || guard.0.take().unwrap().wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_metric_or_error_body_contains_a_plaintext_key() {
    const GOOD: &str = "sk-secret-good-5f2a9c1e7d";
    const LIMITED: &str = "sk-secret-limited-0b8e44aa";
    const WRONG: &str = "sk-secret-wrong-77d0c3e1b9";
    let m = mock(fast()).await;
    let cfg = config(
        &[m.url()],
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [auth]\nenabled = true\n\
             [[api_keys]]\nname = \"good\"\nsha256 = \"{}\"\ntokens_per_minute = 100000\n\
             [[api_keys]]\nname = \"limited\"\nsha256 = \"{}\"\nrequests_per_second = 1.0\nburst = 1\n\
             models = [\"{MODEL}\"]\n",
            sha(GOOD),
            sha(LIMITED)
        ),
    );
    let path = temp_file("keys.toml", &cfg);
    let mut guard = serve(&path, |c| {
        c.env("GATEWAY_LOG", "trace").stderr(Stdio::piped())
    });
    let child = guard.0.as_mut().unwrap();
    let stderr = child.stderr.take().unwrap();
    let err_log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    // Capture stdout ourselves (the address line first, then everything).
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out_log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("data listener ready") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send(v["addr"].as_str().unwrap().parse::<SocketAddr>().unwrap());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let mut bodies = String::new();
    for (name, value) in [
        ("authorization", format!("Bearer {GOOD}")),
        ("x-api-key", GOOD.to_owned()),
        ("authorization", format!("Bearer {WRONG}")),
        ("x-api-key", WRONG.to_owned()),
        ("authorization", WRONG.to_owned()),
        ("authorization", format!("Bearer {LIMITED}")),
        ("authorization", format!("Bearer {LIMITED}")),
    ] {
        for (path, body) in [
            ("/v1/chat/completions", chat(false).to_string()),
            ("/v1/chat/completions", chat(true).to_string()),
            ("/v1/models", String::new()),
            ("/v1/embeddings", "{\"model\":\"nope\"}".to_owned()),
        ] {
            let method = if body.is_empty() { "GET" } else { "POST" };
            let r = request(addr, method, path, &[(name, value.as_str())], body).await;
            bodies.push_str(&String::from_utf8_lossy(&r.body));
            for (k, v) in &r.headers {
                bodies.push_str(&format!("{k}: {v:?}\n"));
            }
        }
    }
    sigterm(child.id());
    let status = tokio::task::spawn_blocking(move || guard.0.take().unwrap().wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let logs = out_log.join().unwrap() + &err_log.join().unwrap();
    assert!(logs.contains("\"key\":\"good\""), "key names are logged");
    assert!(bodies.contains("invalid_api_key") && bodies.contains("rate_limit_exceeded"));
    for secret in [GOOD, LIMITED, WRONG] {
        assert!(!logs.contains(secret), "{secret} in the logs");
        assert!(!bodies.contains(secret), "{secret} in a response");
        let hash = sha(secret);
        assert!(!logs.contains(&hash), "a key hash in the logs");
    }
}

/// Starts the binary under `ulimit -n limit`: its "data listener ready" log line, and all its
/// JSON log lines as they come.
fn start_with_open_file_limit(
    limit: u32,
    config: &std::path::Path,
) -> (ChildGuard, serde_json::Value, Log) {
    let child = Command::new("sh")
        .args([
            "-c",
            &format!("ulimit -n {limit} && exec \"$0\" serve --config \"$1\""),
            BIN,
            config.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(Some(child));
    let (ready, log) = follow_log(guard.0.as_mut().unwrap());
    (guard, ready, log)
}

/// `n` streaming chat completions at once on one HTTP/2 connection: each one's status and body.
async fn h2_streams(addr: SocketAddr, n: usize) -> Vec<(u16, bytes::Bytes)> {
    let (sender, _conn) = h2c(addr).await;
    let streams: Vec<_> = (0..n)
        .map(|_| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let req = http::Request::builder()
                    .method("POST")
                    .uri(format!("http://{addr}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(
                        chat(true).to_string(),
                    )))
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status().as_u16();
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                (status, body)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for s in streams {
        answers.push(s.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_its_open_file_limit_the_gateway_queues_clients_and_never_blames_a_replica() {
    // Streams of about half a second; any failure blamed on the replica ejects it at once.
    let m = mock(MockConfig {
        tokens: 10,
        inter_token: Duration::from_millis(50),
        ..fast()
    })
    .await;
    let cfg = config(
        &[m.url()],
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [health]\nmax_fails = 1\nmax_ejection_percent = 100\n",
    );
    let path = temp_file("fd-limit.toml", &cfg);
    // 64 descriptors: about 10 open at start and 8 kept back leave room for 23 clients, each
    // with its replica connection.
    let (mut guard, ready, log) = start_with_open_file_limit(64, &path);
    let addr: SocketAddr = ready["addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(ready["open_file_limit"], 64, "{ready}");
    let cap = ready["max_connections"].as_u64().unwrap();
    assert!((10..=27).contains(&cap), "{ready}");

    // HTTP/1.1: 60 streams at once, more than twice the cap. Those past it wait to be
    // accepted; every one is answered in full.
    let streams: Vec<_> = (0..60)
        .map(|_| {
            tokio::spawn(async move {
                let resp = open_stream(addr).await;
                let status = resp.status();
                (status, read_all(resp.into_body()).await)
            })
        })
        .collect();
    for s in streams {
        let (status, (body, clean)) = s.await.unwrap();
        assert_eq!(status, 200);
        assert!(clean && body.ends_with(b"data: [DONE]\n\n"));
    }

    // HTTP/2: one client connection, 60 streams at once, each wanting a replica connection.
    // Those that find no descriptor get the gateway's own 503; the replica is not blamed.
    let answers = h2_streams(addr, 60).await;
    let mut refused = 0;
    for (status, body) in answers {
        if status == 503 {
            refused += 1;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["code"], "gateway_out_of_connections", "{v}");
            assert_eq!(v["error"]["type"], "overloaded_error", "{v}");
        } else {
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            assert!(body.ends_with(b"data: [DONE]\n\n"));
        }
    }
    assert!(refused > 0, "60 replica connections fit in 64 descriptors?");

    // The replica is still in service, and nothing was put on it.
    let resp = open_stream(addr).await;
    assert_eq!(resp.status(), 200);
    assert!(read_all(resp.into_body()).await.1);
    let log = log.lock().unwrap().join("\n");
    for blame in ["replica unreachable", "ejected", "replica unhealthy"] {
        assert!(!log.contains(blame), "{blame}: {log}");
    }
    assert!(
        log.contains("no descriptor for a replica connection"),
        "{log}"
    );
    let mut child = guard.0.take().unwrap();
    sigterm(child.id());
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_a_connect_first_closes_the_idle_pool_of_every_replica() {
    let stream_mock = || {
        mock(MockConfig {
            tokens: 10,
            inter_token: Duration::from_millis(50),
            ..fast()
        })
    };
    let (a, b) = (stream_mock().await, stream_mock().await);
    let cfg = format!(
        "{}\n[[models]]\nname = \"other-model\"\n[[models.versions]]\nname = \"1\"\n\
         replicas = [{{ url = \"{}\" }}]\n",
        config(
            &[a.url()],
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [health]\nactive = false\n",
        ),
        b.url()
    );
    let path = temp_file("fd-pool.toml", &cfg);
    let (mut guard, ready, log) = start_with_open_file_limit(64, &path);
    let addr: SocketAddr = ready["addr"].as_str().unwrap().parse().unwrap();
    // 20 streams at once to the other model leave 20 idle connections in its replica's pool.
    let mut other = chat(true);
    other["model"] = "other-model".into();
    let streams: Vec<_> = (0..20)
        .map(|_| {
            let body = other.to_string();
            tokio::spawn(async move {
                let resp = send(addr, "POST", "/v1/chat/completions", &[], body).await;
                assert_eq!(resp.status(), 200);
                assert!(read_all(resp.into_body()).await.1);
            })
        })
        .collect();
    for s in streams {
        s.await.unwrap();
    }
    // The clients' connections close; the pooled ones stay (younger than pool_idle_timeout).
    let admin: SocketAddr = {
        let log = log.lock().unwrap();
        let line = log
            .iter()
            .find(|l| l.contains("admin listener ready"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["addr"].as_str().unwrap().parse().unwrap()
    };
    let mut open = String::new();
    for _ in 0..100 {
        let metrics = request(admin, "GET", "/metrics", &[], "").await;
        open = String::from_utf8_lossy(&metrics.body).into_owned();
        if open.contains("\ngateway_client_connections 0\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(open.contains("\ngateway_client_connections 0\n"), "{open}");
    // 40 streams at once to the first model on one HTTP/2 connection: 40 replica connections
    // fit only once the other replica's idle ones are closed.
    let answers = h2_streams(addr, 40).await;
    for (status, body) in answers {
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(body.ends_with(b"data: [DONE]\n\n"));
    }
    let log = log.lock().unwrap().join("\n");
    assert!(!log.contains("replica unreachable"), "{log}");
    let mut child = guard.0.take().unwrap();
    sigterm(child.id());
    assert!(child.wait().unwrap().success());
}

/// A log pipe that stops draining (a stuck log shipper) must not stop the data plane: with
/// nobody reading the gateway's stdout, 600 requests (about four times what the pipe holds in
/// access-log lines) are all answered, and once the pipe is read again every line comes
/// through whole. The access-log line (built by hand) carries the documented fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_does_not_stop_the_gateway() {
    let m = mock(fast()).await;
    let cfg = config(
        &[m.url()],
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
    );
    let path = temp_file("stuck-stdout.toml", &cfg);
    let mut guard = serve(&path, |c| c.stderr(Stdio::null()));
    let child = guard.0.as_mut().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut data, mut admin) = (None, None);
    let mut line = String::new();
    while data.is_none() || admin.is_none() {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "gateway did not start"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let addr = || v["addr"].as_str().unwrap().parse::<SocketAddr>().unwrap();
        if line.contains("data listener ready") {
            data = Some(addr());
        } else if line.contains("admin listener ready") {
            admin = Some(addr());
        }
    }
    let (data, admin) = (data.unwrap(), admin.unwrap());
    // Nobody reads stdout from here on.
    let served = tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..600 {
            let r = post_json(data, "/v1/chat/completions", chat(false)).await;
            assert_eq!(r.status, 200);
        }
    })
    .await;
    assert!(served.is_ok(), "requests stalled behind the log pipe");
    // Two answers the gateway makes itself: its access lines count their bytes too.
    let models = request(data, "GET", "/v1/models", &[], "").await;
    assert_eq!(models.status, 200);
    let mut unknown = chat(false);
    unknown["model"] = "no-such-model".into();
    let not_found = post_json(data, "/v1/chat/completions", unknown).await;
    assert_eq!(not_found.status, 404);
    let metrics = request(admin, "GET", "/metrics", &[], "").await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        metrics.contains("gateway_log_lines_dropped_total 0"),
        "{metrics}"
    );
    // Read again: every line whole, 600 access lines among them (the last batch written at
    // exit).
    let reader =
        std::thread::spawn(move || stdout.lines().map(|l| l.unwrap()).collect::<Vec<String>>());
    sigterm(child.id());
    let status = tokio::task::spawn_blocking(move || guard.0.take().unwrap().wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let lines = reader.join().unwrap();
    for l in &lines {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|_| panic!("split: {l}"));
    }
    let access: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\"target\":\"access\""))
        .collect();
    assert_eq!(access.len(), 602);
    for (line, reply) in [(access[600], &models), (access[601], &not_found)] {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["status"], reply.status.as_str(), "{line}");
        assert_eq!(v["bytes_out"], reply.body.len(), "{line}");
    }
    // Each line as documented, its fields in the formatter's order.
    let first: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(access[0]).unwrap();
    let order = [
        "timestamp",
        "level",
        "request_id",
        "peer",
        "key",
        "op",
        "model",
        "version",
        "arm",
        "replica",
        "status",
        "stream",
        "duration_ms",
        "tokens_in",
        "tokens_out",
        "retries",
        "bytes_in",
        "bytes_out",
        "target",
    ];
    assert_eq!(first.len(), order.len(), "{}", access[0]);
    let at: Vec<usize> = order
        .iter()
        .map(|k| access[0].find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{}", access[0]);
    let ts = first["timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 27 && ts.starts_with("20") && ts.ends_with('Z'),
        "{ts}"
    );
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["request_id"].as_str().unwrap().len(), 36);
    assert!(first["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(first["key"], "-");
    assert_eq!(first["op"], "chat");
    assert_eq!(first["model"], MODEL);
    assert_eq!(first["arm"], "stable");
    assert_eq!(first["replica"], m.addr.to_string());
    assert_eq!(first["status"], "200");
    assert_eq!(first["stream"], false);
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(first["tokens_in"].as_u64().unwrap() > 0);
    assert!(first["tokens_out"].as_u64().unwrap() > 0);
    assert_eq!(first["retries"], 0);
    assert_eq!(first["bytes_in"], chat(false).to_string().len());
    assert!(first["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(first["target"], "access");
}
