//! `mock-replica`: a vLLM-like OpenAI server with fault injection, for load tests and demos.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use loadtest::{ErrorBody, MockConfig, MockReplica};

#[derive(Parser, Debug)]
#[command(
    name = "mock-replica",
    about = "vLLM-like mock OpenAI server with fault injection"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Model name served (the `id` in /v1/models).
    #[arg(long, default_value = "mock-model")]
    model: String,
    /// Model path reported as `root` in /v1/models (e.g. the version directory).
    #[arg(long)]
    root: Option<String>,
    /// Time to first token, in milliseconds.
    #[arg(long, default_value_t = 20)]
    ttft_ms: u64,
    /// Gap between tokens, in milliseconds.
    #[arg(long, default_value_t = 5)]
    itl_ms: u64,
    /// Tokens per reply (capped by the request's max_tokens).
    #[arg(long, default_value_t = 16)]
    tokens: usize,
    /// Keep-alive of idle client connections, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    keep_alive_ms: u64,
    /// Fraction of requests answered with --error-status (0..1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Status of injected errors.
    #[arg(long, default_value_t = 500)]
    error_status: u16,
    /// Injected errors have a plain-text body instead of vLLM's JSON.
    #[arg(long)]
    error_text: bool,
    /// Accept requests and never answer.
    #[arg(long)]
    hang: bool,
    /// Break every stream after this many tokens.
    #[arg(long)]
    reset_after: Option<usize>,
    /// Extra delay before each response head, in milliseconds.
    #[arg(long, default_value_t = 0)]
    slow_start_ms: u64,
    /// Require `Authorization: Bearer <key>` on /v1/* like vLLM's --api-key (/health stays open).
    #[arg(long, env = "MOCK_API_KEY")]
    api_key: Option<String>,
    /// Mark each stream's first token with the replica's own time to first token (an SSE
    /// comment, `: replica-ttft-us=N`), so `loadgen` can tell the time spent outside it.
    #[arg(long)]
    stamp_ttft: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let cfg = MockConfig {
        root: a.root.unwrap_or_else(|| format!("/models/{}", a.model)),
        model: a.model,
        ttft: Duration::from_millis(a.ttft_ms),
        inter_token: Duration::from_millis(a.itl_ms),
        tokens: a.tokens,
        keep_alive: Duration::from_millis(a.keep_alive_ms),
        error_rate: a.error_rate,
        error_status: a.error_status,
        error_body: if a.error_text {
            ErrorBody::Text
        } else {
            ErrorBody::Vllm
        },
        hang: a.hang,
        reset_after: a.reset_after,
        slow_start: Duration::from_millis(a.slow_start_ms),
        api_key: a.api_key.clone(),
        stamp_ttft: a.stamp_ttft,
        ..MockConfig::default()
    };
    let replica = MockReplica::start(a.listen, cfg).await?;
    eprintln!("mock-replica listening on {}", replica.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
