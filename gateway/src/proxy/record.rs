//! Stage 8: what the stages left behind, written once per request when its answer is complete
//! — at the end of the body for a stream, including when the client went away
//! (`status="client_closed"`) or the replica broke it (`status="stream_error"`): the request
//! metrics and one JSON access-log line. Key names appear; keys, prompts and completions never.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use super::canary::Arm;
use crate::canary::stats::VersionStats;
use crate::json_key;
use crate::metrics::{Metrics, Observed, VersionHandles};
use crate::sse::Usage;

/// Facts about one request, filled in by the stages as they run.
pub struct Record {
    pub started: Instant,
    pub request_id: super::request_id::RequestId,
    pub peer: std::net::SocketAddr,
    pub op: &'static str,
    pub key: Option<std::sync::Arc<crate::auth::KeyEntry>>,
    /// The configured model name (an unknown model stays `None` and counts as "unknown").
    pub model: Option<Arc<str>>,
    pub version: Option<Arc<str>>,
    pub replica: Option<HeaderValue>,
    pub arm: Option<Arm>,
    pub stream: bool,
    pub retries: u32,
    pub bytes_in: usize,
    /// The key's request limit after this request: (limit, remaining, reset).
    pub requests_left: Option<(u32, u32, Duration)>,
    /// The key's token budget after the reservation: (per minute, left).
    pub tokens_left: Option<(u64, u64)>,
    pub stats: Option<Arc<VersionStats>>,
    /// Time spent waiting for replicas before the response head (for the overhead metric).
    pub upstream_wait: Duration,
    metrics: Arc<Metrics>,
    /// Written already (by `finish`, or when dropped unanswered).
    written: bool,
}

/// What the body saw, for the record.
#[derive(Debug, Default, Clone, Copy)]
pub struct BodyFacts {
    pub ttft: Option<Duration>,
    pub usage: Option<Usage>,
    pub content_events: u64,
    pub bytes_out: u64,
}

impl Record {
    pub fn new(
        started: Instant,
        request_id: super::request_id::RequestId,
        peer: std::net::SocketAddr,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            started,
            request_id,
            peer,
            op: "unknown",
            key: None,
            model: None,
            version: None,
            replica: None,
            arm: None,
            stream: false,
            retries: 0,
            bytes_in: 0,
            requests_left: None,
            tokens_left: None,
            stats: None,
            upstream_wait: Duration::ZERO,
            metrics,
            written: false,
        }
    }

    /// The response head is going out: the gateway's own share of the time so far.
    pub fn head_sent(&self) {
        let own = (crate::clock::fresh() - self.started).saturating_sub(self.upstream_wait);
        self.metrics.overhead.observe(own.as_secs_f64());
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Writes the metrics and the access-log line. `status` is the HTTP code, or
    /// `client_closed` / `stream_error`.
    pub fn finish(&mut self, status: &str, facts: BodyFacts) {
        if !self.written {
            self.write(status, facts);
        }
    }

    fn write(&mut self, status: &str, facts: BodyFacts) {
        self.written = true;
        let model = self.model.as_deref().unwrap_or("unknown");
        let version = self.version.as_deref().unwrap_or("none");
        let m = &self.metrics;
        let duration = crate::clock::now() - self.started;
        let (prompt, completion) = match facts.usage {
            Some(u) => (Some(u.prompt_tokens), Some(u.completion_tokens)),
            // A stream without a usage event: one content event is (about) one token.
            None if self.stream && facts.content_events > 0 => (None, Some(facts.content_events)),
            None => (None, None),
        };
        let observed = Observed {
            status,
            op: self.op,
            duration: duration.as_secs_f64(),
            ttft: facts.ttft.map(|t| t.as_secs_f64()),
            // Tokens only for configured models: an unknown name must not add series.
            prompt: prompt.filter(|_| self.model.is_some()),
            completion: completion.filter(|_| self.model.is_some()),
        };
        match &self.stats {
            Some(stats) => stats.metrics.observe(m, model, version, &observed),
            None => VersionHandles::default().observe(m, model, version, &observed),
        }
        if let Some(stats) = &self.stats {
            let error = status.starts_with('5') || status == "stream_error";
            stats.record(error);
        }
        self.log(status, facts, duration, prompt, completion);
    }

    /// The access-log line, where the filter lets it through: its values are worked out only
    /// then (the replica's name alone is a UTF-8 check).
    fn log(
        &self,
        status: &str,
        facts: BodyFacts,
        duration: Duration,
        prompt: Option<u64>,
        completion: Option<u64>,
    ) {
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let arm = self.arm.map_or("-", |a| match a {
            Arm::Stable => "stable",
            Arm::Canary => "canary",
            Arm::Pinned => "pinned",
        });
        let replica = self
            .replica
            .as_ref()
            .and_then(|r| r.to_str().ok())
            .unwrap_or("-");
        let key = self.key.as_ref().map_or("-", |k| k.name.as_str());
        let (model, version) = (
            self.model.as_deref().unwrap_or("-"),
            self.version.as_deref().unwrap_or("-"),
        );
        if !crate::logs::hand_written() {
            tracing::info!(
                target: "access",
                request_id = self.request_id.as_str(),
                peer = %self.peer,
                key,
                op = self.op,
                model,
                version,
                arm,
                replica,
                status,
                stream = self.stream,
                ttft_ms = facts.ttft.map(|t| t.as_secs_f64() * 1000.0),
                duration_ms = duration.as_secs_f64() * 1000.0,
                tokens_in = prompt,
                tokens_out = completion,
                retries = self.retries,
                bytes_in = self.bytes_in,
                bytes_out = facts.bytes_out,
            );
            return;
        }
        // The same line, built by hand (`crate::logs::JsonLine`).
        crate::logs::info_line("access", |l| {
            l.str(json_key!("request_id"), self.request_id.as_str())
                .addr(json_key!("peer"), self.peer)
                .str(json_key!("key"), key)
                .str(json_key!("op"), self.op)
                .str(json_key!("model"), model)
                .str(json_key!("version"), version)
                .str(json_key!("arm"), arm)
                .str(json_key!("replica"), replica)
                .str(json_key!("status"), status)
                .bool(json_key!("stream"), self.stream);
            if let Some(t) = facts.ttft {
                l.ms(json_key!("ttft_ms"), t);
            }
            l.ms(json_key!("duration_ms"), duration);
            if let Some(n) = prompt {
                l.u64(json_key!("tokens_in"), n);
            }
            if let Some(n) = completion {
                l.u64(json_key!("tokens_out"), n);
            }
            l.u64(json_key!("retries"), u64::from(self.retries))
                .u64(json_key!("bytes_in"), self.bytes_in as u64)
                .u64(json_key!("bytes_out"), facts.bytes_out);
        });
    }
}

impl Drop for Record {
    /// A request dropped before its answer was ready: the client left while it was served
    /// (its connection closed), which cancelled the upstream too.
    fn drop(&mut self) {
        if !self.written {
            self.write("client_closed", BodyFacts::default());
        }
    }
}
