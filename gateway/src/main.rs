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
    /// Manage a model's version directory (not supported yet).
    Versions {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Change canary weights (not supported yet).
    Canary {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GATEWAY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => b.json().flatten_event(true).with_current_span(false).init(),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        Some(Command::Versions { .. } | Command::Canary { .. }) => {
            eprintln!("error: this subcommand is not supported yet in this version of the gateway");
            ExitCode::from(2)
        }
    }
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
    if let Err(e) = config::load(&path) {
        eprintln!("{}: {e}", path.display());
        return ExitCode::FAILURE;
    }
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
