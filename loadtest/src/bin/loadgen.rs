//! `loadgen`: OpenAI chat-completion load against a base URL (open or closed loop, streaming
//! aware), with a summary table, `--json`, `--report report.html` and `--samples samples.csv`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::Parser;
use loadtest::loadgen::{html, run, samples_csv, table, Plan};

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for OpenAI-compatible endpoints"
)]
struct Args {
    /// Base URL, e.g. http://127.0.0.1:8080 (requests go to <url>/v1/chat/completions).
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "mock-model")]
    model: String,
    /// API key, sent as a bearer token.
    #[arg(long, env = "LOADGEN_API_KEY")]
    api_key: Option<String>,
    /// Streaming requests (TTFT, inter-token latency; success needs [DONE]).
    #[arg(long)]
    stream: bool,
    /// Open loop at this many requests per second (else closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: concurrent clients. Open loop: most requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds at the start whose requests run but are not measured (connections being
    /// opened, caches warming); their failures still count.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Prompt sizes in bytes, comma separated; each request draws one.
    #[arg(long, default_value = "200", value_delimiter = ',')]
    prompt_bytes: Vec<usize>,
    /// max_tokens values, comma separated; each request draws one.
    #[arg(long, default_value = "16", value_delimiter = ',')]
    max_tokens: Vec<u32>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report with charts.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Also write every measured request to this file as CSV (start, outcome, latency, time
    /// to first token, time outside the replica, tokens), to see when the slow ones happened.
    #[arg(long)]
    samples: Option<std::path::PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Allow a target that is not on this machine.
    #[arg(long)]
    allow_remote: bool,
    /// HTTP/2 without TLS (prior knowledge) over this many connections, shared by the clients
    /// (default: HTTP/1.1, a connection per client).
    #[arg(long, value_name = "CONNECTIONS")]
    http2: Option<usize>,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        std::process::ExitCode::from(2)
    };
    let Some(rest) = a.url.strip_prefix("http://") else {
        return fail("--url must be http://host:port".into());
    };
    let host = rest.trim_end_matches('/').to_owned();
    let target: SocketAddr = match host.to_socket_addrs().ok().and_then(|mut i| i.next()) {
        Some(t) => t,
        None => return fail(format!("cannot resolve {host}")),
    };
    if !target.ip().is_loopback() && !a.allow_remote {
        return fail(format!(
            "{target} is not a loopback address; pass --allow-remote to load another machine"
        ));
    }
    if a.http2 == Some(0) {
        return fail("--http2 needs at least one connection".into());
    }
    if a.prompt_bytes.is_empty() || a.max_tokens.is_empty() || a.concurrency == 0 {
        return fail("--prompt-bytes, --max-tokens and --concurrency need values".into());
    }
    // The files are written after the run: one that cannot be must fail the command before the
    // load starts, not after minutes of it.
    for path in [&a.report, &a.samples].into_iter().flatten() {
        if let Err(e) = std::fs::File::create(path) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
    }
    let plan = Plan {
        target,
        host,
        path: "/v1/chat/completions".into(),
        model: a.model.clone(),
        api_key: a.api_key.clone(),
        stream: a.stream,
        rate: a.rate,
        concurrency: a.concurrency,
        duration: Duration::from_secs_f64(a.duration.clamp(0.1, 3600.0)),
        warmup: Duration::from_secs_f64(a.warmup.clamp(0.0, a.duration.clamp(0.1, 3600.0))),
        max_requests: a.requests,
        prompt_bytes: a.prompt_bytes.clone(),
        max_tokens: a.max_tokens.clone(),
        http2_connections: a.http2,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let bar = if a.quiet || a.json {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new((a.duration * 10.0) as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {msg}")
        {
            b.set_style(style.progress_chars("=> "));
        }
        b
    };
    let progress = {
        let bar = bar.clone();
        move |done: u64, ok: u64| {
            bar.inc(1);
            bar.set_message(format!("{done} done, {ok} ok"));
        }
    };
    let report = rt.block_on(run(plan, progress));
    bar.finish_and_clear();
    use std::io::Write;
    let mut out = std::io::stdout();
    if a.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let _ = write!(out, "{}", table(&report));
    }
    if let Some(path) = &a.report {
        let title = format!(
            "loadgen: {} ({})",
            a.url,
            if a.stream {
                "streaming"
            } else {
                "non-streaming"
            }
        );
        if let Err(e) = std::fs::write(path, html(&report, &title)) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
    }
    if let Some(path) = &a.samples {
        if let Err(e) = std::fs::write(path, samples_csv(&report)) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
    }
    if report.ok == 0 {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
