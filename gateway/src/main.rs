//! The `gateway` command line: serve | check-config | demo (and the later subcommands, which
//! answer "not supported yet"). Nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use gateway::{config, demo, Gateway};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "OpenAI-compatible LLM inference gateway"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Runtime worker threads (default: one per core).
    #[arg(long, global = true, env = "GATEWAY_WORKERS")]
    workers: Option<usize>,
    /// Config file for `serve` (also the default when no subcommand is given).
    #[arg(long, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Copy, Clone, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the data plane and the admin listener from a config file.
    Serve {
        #[arg(long, env = "GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file: prints every error and exits 1, or exits 0.
    CheckConfig { path: PathBuf },
    /// Start mock replicas in-process behind the gateway (config/demo.toml).
    Demo {
        /// Run without API keys (the default demo requires the demo key it prints).
        #[arg(long)]
        no_auth: bool,
        /// Data-plane address (default from demo.toml: 127.0.0.1:8080; port 0 = any free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin address (default 127.0.0.1:9090).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Print the SHA-256 of an API key read on stdin, for `[[api_keys]] sha256`.
    HashKey,
    /// Manage a model's deployment tree (`<dir>/<version>/`, `current -> <version>`).
    Versions {
        /// The deployment directory.
        #[arg(long, conflicts_with = "config")]
        dir: Option<PathBuf>,
        /// Take the directory (and the canary, and the expected versions) from a model's
        /// `deploy_dir` in this config file; needs --model.
        #[arg(long, requires = "model")]
        config: Option<PathBuf>,
        #[arg(long)]
        model: Option<String>,
        #[command(subcommand)]
        action: VersionsAction,
    },
    /// Change a model's canary through a running gateway's admin API.
    Canary {
        /// The admin listener, e.g. http://127.0.0.1:9090. The token is read from
        /// GATEWAY_ADMIN_TOKEN (or the variable named by --token-env).
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        admin: String,
        #[arg(long, default_value = "GATEWAY_ADMIN_TOKEN")]
        token_env: String,
        #[command(subcommand)]
        action: CanaryAction,
    },
}

#[derive(Subcommand)]
enum VersionsAction {
    /// Versions, which is current, previous and canary, sizes and ages.
    List,
    /// Point `current` at VERSION (atomic); refuses missing or empty versions.
    Switch { version: String },
    /// Point `current` back at the previous version.
    Rollback,
    /// Delete old versions; never current, previous, the canary or a pinned one.
    Cleanup {
        #[arg(long)]
        keep: usize,
        /// A version to keep whatever its age (repeatable).
        #[arg(long)]
        pin: Vec<String>,
        /// The canary version (taken from --config when given).
        #[arg(long)]
        canary: Option<String>,
    },
    /// Check the tree: exit 1 with a report on dangling or wrong links and missing versions.
    Verify,
}

#[derive(Subcommand)]
enum CanaryAction {
    /// Every model's versions, canary and figures.
    Status,
    /// Set MODEL's canary version and weight.
    Set {
        model: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        weight: f64,
    },
    /// The canary becomes stable.
    Promote { model: String },
    /// Canary weight 0 at once.
    Rollback { model: String },
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GATEWAY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Lines go through a buffer written by a thread of its own: a log pipe that stops
    // draining must not stop the data plane (`gateway::logs`).
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(gateway::logs::stdout());
    match format {
        LogFormat::Json => {
            b.json().flatten_event(true).with_current_span(false).init();
            // Access-log lines in the same shape, built by hand (`gateway::logs::JsonLine`).
            gateway::logs::hand_write_json_lines();
        }
        LogFormat::Text => b.init(),
    }
}

/// Cancels the token on SIGTERM or SIGINT.
fn on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
}

/// The runtime: one worker thread per core unless `--workers` says otherwise. One worker (the
/// flag, or a machine or container with one core) is tokio's single-threaded scheduler: the
/// multi-threaded one with one worker still pays for work stealing it cannot do: about 750
/// instructions per request (callgrind), and 15-17 % more CPU per request by the medians of
/// two sets of alternating rounds on the test host, 9 % by their means (benches/RESULTS.md).
fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let cores = || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let n = workers.unwrap_or_else(cores).max(1);
    if n == 1 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(n)
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let code = run();
    // What the log writer has not written yet (at most its last batch).
    gateway::logs::flush();
    code
}

fn run() -> ExitCode {
    let cli = Cli::parse();
    // The soft open-file limit up to the hard one (as Go's runtime does): a proxied request
    // holds two descriptors, and a default soft limit of 1,024 would cap the gateway at about
    // 480 clients (`gateway::descriptors`). The hard limit is the operator's to set.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = match runtime(cli.workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::CheckConfig { path }) => match config::load(&path) {
            Ok(c) => {
                let replicas: usize = c
                    .models
                    .iter()
                    .flat_map(|m| &m.versions)
                    .map(|v| v.replicas.len())
                    .sum();
                eprintln!(
                    "{}: OK ({} model(s), {} replica(s))",
                    path.display(),
                    c.models.len(),
                    replicas
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        Some(Command::Demo {
            no_auth,
            listen,
            admin_listen,
        }) => {
            init_logs(cli.log_format);
            runtime.block_on(run_demo(listen, admin_listen, no_auth))
        }
        Some(Command::Serve { config }) => {
            init_logs(cli.log_format);
            runtime.block_on(serve(config.or(cli.config)))
        }
        None => {
            init_logs(cli.log_format);
            runtime.block_on(serve(cli.config))
        }
        Some(Command::HashKey) => hash_key(),
        Some(Command::Versions {
            dir,
            config,
            model,
            action,
        }) => versions(dir, config, model, action),
        Some(Command::Canary {
            admin,
            token_env,
            action,
        }) => runtime.block_on(canary(&admin, &token_env, action)),
    }
}

fn versions(
    dir: Option<PathBuf>,
    config_path: Option<PathBuf>,
    model: Option<String>,
    action: VersionsAction,
) -> ExitCode {
    use gateway::canary::versions as v;
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::FAILURE
    };
    // From the config: the directory, the canary, and the versions the model declares.
    let (dir, canary, expected) = match (dir, config_path) {
        (Some(d), _) => (d, None, Vec::new()),
        (None, Some(path)) => {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
            };
            let file = match config::parse_file(&text) {
                Ok(f) => f,
                Err(e) => return fail(e.to_string()),
            };
            let name = model.unwrap_or_default();
            let Some(m) = file
                .models
                .iter()
                .find(|m| m.name.as_deref() == Some(name.as_str()))
            else {
                return fail(format!("no model {name:?} in {}", path.display()));
            };
            let Some(d) = m.deploy_dir.clone().filter(|d| !d.is_empty()) else {
                return fail(format!("model {name:?} has no deploy_dir"));
            };
            let canary = m
                .canary
                .as_ref()
                .filter(|c| c.weight_percent.unwrap_or(0.0) > 0.0)
                .and_then(|c| c.version.clone());
            let expected = m.versions.iter().filter_map(|v| v.name.clone()).collect();
            (PathBuf::from(d), canary, expected)
        }
        (None, None) => return fail("give --dir DIR, or --config PATH --model NAME".into()),
    };
    let mut out = std::io::stdout();
    use std::io::Write;
    match action {
        VersionsAction::List => match v::list(&dir) {
            Ok(list) => {
                let now = std::time::SystemTime::now();
                let _ = writeln!(out, "{:<20} {:>12} {:>10}  ROLE", "VERSION", "SIZE", "AGE");
                for x in list {
                    let age = x
                        .modified
                        .and_then(|m| now.duration_since(m).ok())
                        .map(|d| human_age(d.as_secs()))
                        .unwrap_or_else(|| "-".into());
                    let mut roles = Vec::new();
                    if x.current {
                        roles.push("current");
                    }
                    if x.previous {
                        roles.push("previous");
                    }
                    if canary.as_deref() == Some(x.name.as_str()) {
                        roles.push("canary");
                    }
                    let _ = writeln!(
                        out,
                        "{:<20} {:>12} {:>10}  {}",
                        x.name,
                        x.bytes,
                        age,
                        roles.join(",")
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        VersionsAction::Switch { version } => match v::switch(&dir, &version) {
            Ok(prev) => {
                let _ = writeln!(
                    out,
                    "current -> {version} (previous: {})",
                    prev.as_deref().unwrap_or("none")
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        VersionsAction::Rollback => match v::rollback(&dir) {
            Ok(to) => {
                let _ = writeln!(out, "current -> {to}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        VersionsAction::Cleanup {
            keep,
            pin,
            canary: canary_arg,
        } => match v::cleanup(&dir, keep, canary_arg.or(canary).as_deref(), &pin) {
            Ok(removed) => {
                for r in &removed {
                    let _ = writeln!(out, "deleted {r}");
                }
                let _ = writeln!(out, "{} version(s) deleted", removed.len());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        VersionsAction::Verify => {
            let problems = v::verify(&dir, &expected);
            if problems.is_empty() {
                let _ = writeln!(out, "{}: OK", dir.display());
                ExitCode::SUCCESS
            } else {
                eprintln!("{}: {} problem(s):", dir.display(), problems.len());
                for p in problems {
                    eprintln!("  {p}");
                }
                ExitCode::FAILURE
            }
        }
    }
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A tiny client for the admin API (`gateway canary ...`).
async fn canary(admin: &str, token_env: &str, action: CanaryAction) -> ExitCode {
    let token = std::env::var(token_env).unwrap_or_default();
    let token = token.split_once(':').map_or(token.as_str(), |(_, t)| t);
    let (method, path, body) = match &action {
        CanaryAction::Status => ("GET", "/admin/models".to_owned(), String::new()),
        CanaryAction::Set {
            model,
            version,
            weight,
        } => (
            "PUT",
            format!("/admin/models/{model}/canary"),
            serde_json::json!({"version": version, "weight_percent": weight}).to_string(),
        ),
        CanaryAction::Promote { model } => (
            "POST",
            format!("/admin/models/{model}/promote"),
            String::new(),
        ),
        CanaryAction::Rollback { model } => (
            "POST",
            format!("/admin/models/{model}/rollback"),
            String::new(),
        ),
    };
    match admin_call(admin, token, method, &path, body).await {
        Ok((status, text)) => {
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "{text}");
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: the gateway answered {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn admin_call(
    admin: &str,
    token: &str,
    method: &str,
    path: &str,
    body: String,
) -> Result<(http::StatusCode, String), String> {
    use http_body_util::BodyExt;
    let authority = admin
        .strip_prefix("http://")
        .ok_or("--admin must be an http:// URL")?
        .trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Reads a key on stdin (one line; the line break is not part of it) and prints its hash.
fn hash_key() -> ExitCode {
    use std::io::{Read, Write};
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("error: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let key = input
        .strip_suffix(b"\n")
        .map(|k| k.strip_suffix(b"\r").unwrap_or(k))
        .unwrap_or(&input);
    if key.is_empty() || key.iter().any(|b| b.is_ascii_whitespace()) {
        eprintln!("error: expected one API key on stdin (no spaces), e.g. `echo -n \"$KEY\" | gateway hash-key`");
        return ExitCode::from(2);
    }
    let mut out = std::io::stdout();
    match writeln!(out, "{}", gateway::auth::hash_key(key)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

async fn serve(path: Option<PathBuf>) -> ExitCode {
    let Some(path) = path else {
        eprintln!("error: no config file: pass --config PATH or set GATEWAY_CONFIG");
        return ExitCode::from(2);
    };
    match Gateway::from_file(&path) {
        Ok(gw) => serve_bound(gw).await,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP reloads the configuration (an invalid file changes nothing).
fn on_sighup(app: std::sync::Arc<gateway::state::AppState>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let _ = gateway::control::reload(&app, "sighup");
        }
    });
}

async fn serve_bound(gw: Gateway) -> ExitCode {
    let token = CancellationToken::new();
    on_signals(token.clone());
    on_sighup(gw.state());
    match gw.serve(token).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_gateway(cfg: config::Config, on_ready: impl FnOnce(&Gateway)) -> ExitCode {
    let gw = match Gateway::bind(cfg) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    on_ready(&gw);
    serve_bound(gw).await
}

async fn run_demo(
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    no_auth: bool,
) -> ExitCode {
    let (mut cfg, _mocks) = match demo::prepare(listen, admin_listen, !no_auth).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // A taken default port should not stop a first try: fall back to any free port.
    if listen.is_none() && std::net::TcpListener::bind(cfg.server.listen).is_err() {
        cfg.server.listen.set_port(0);
    }
    if admin_listen.is_none() && std::net::TcpListener::bind(cfg.server.admin_listen).is_err() {
        cfg.server.admin_listen.set_port(0);
    }
    let model = cfg
        .models
        .first()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let (auth, mode) = if cfg.auth.enabled {
        (
            format!(" -H 'Authorization: Bearer {}'", demo::DEMO_KEY),
            format!(
                "API keys are required; the demo key is {} (`gateway demo --no-auth` runs without)",
                demo::DEMO_KEY
            ),
        )
    } else {
        (String::new(), "No API key needed (--no-auth)".to_owned())
    };
    run_gateway(cfg, |gw| {
        let a = gw.addrs.data;
        eprintln!(
            "\ngateway demo: 2 mock replicas behind http://{a} (admin http://{admin})\n\
             {mode}.\nTry a streaming chat completion:\n\n\
             curl -N http://{a}/v1/chat/completions -H 'Content-Type: application/json'{auth} \
             -d '{{\"model\":\"{model}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n\n\
             Press Ctrl-C to stop.\n",
            admin = gw.addrs.admin,
        );
    })
    .await
}
