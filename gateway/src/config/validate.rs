//! Turns the file types into the runtime types, applying defaults and collecting EVERY error,
//! each prefixed with the path of its field (`models[1].versions[0].replicas[2].url: ...`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use http::uri::Authority;
use http::Uri;

use super::file::*;
use super::runtime::*;

/// Defaults, named once. The example config documents the same values.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
    pub const ADMIN_TOKEN_ENV: &str = "GATEWAY_ADMIN_TOKEN";
    pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
    pub const DRAIN_TIMEOUT: &str = "30s";
    pub const HEADER_READ_TIMEOUT: &str = "30s";
    pub const BODY_READ_TIMEOUT: &str = "30s";
    /// nginx's `send_timeout` default.
    pub const SEND_TIMEOUT: &str = "60s";
    pub const MAX_HEADER_BYTES: u64 = 32 * 1024;
    /// With the parser's margin of 10, hyper (TLS connections) keeps its header index array
    /// on the stack (100).
    pub const MAX_HEADERS: u64 = 90;
    pub const CONNECT_TIMEOUT: &str = "5s";
    pub const RESPONSE_HEAD_TIMEOUT: &str = "300s";
    pub const IDLE_CHUNK_TIMEOUT: &str = "60s";
    pub const POOL_IDLE_TIMEOUT: &str = "4s";
    pub const RETRIES: u64 = 2;
    pub const EWMA_DECAY: &str = "10s";
    pub const HEALTH_PATH: &str = "/health";
    pub const HEALTH_INTERVAL: &str = "5s";
    pub const HEALTH_TIMEOUT: &str = "2s";
    pub const UNHEALTHY_THRESHOLD: u64 = 3;
    pub const HEALTHY_THRESHOLD: u64 = 2;
    pub const MAX_FAILS: u64 = 3;
    pub const FAIL_TIMEOUT: &str = "30s";
    pub const MAX_EJECTION_PERCENT: f64 = 50.0;
    pub const MAX_EJECTION_TIME: &str = "300s";
    pub const BALANCER: &str = "p2c_ewma";
    pub const QUEUE_MAX_SIZE: u64 = 256;
    pub const QUEUE_TIMEOUT: &str = "30s";
}

/// Hard ceilings: the gateway's HTTP/1 parser is configured just above these, so that our own
/// check (with an OpenAI-shaped 431) always fires first.
pub const MAX_HEADER_BYTES_CEILING: u64 = 256 * 1024;
pub const MAX_HEADERS_CEILING: u64 = 400;

/// Parses `"250ms"`, `"5s"`, `"1.5s"`, `"2m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {s:?} has no unit (use ms, s, m or h)"))?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (expected e.g. \"250ms\", \"5s\", \"2m\")"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "duration {s:?} has unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs > 7.0 * 24.0 * 3600.0 {
        return Err(format!("duration {s:?} is out of range (at most 7 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The replicas' key from the environment variable `upstream.api_key_env` names, as a
/// sensitive `Authorization: Bearer` value (never printed, never logged).
fn upstream_authorization(e: &mut Errors, var: Option<&str>) -> Option<http::HeaderValue> {
    let var = var.filter(|v| !v.is_empty())?;
    let key = match std::env::var(var) {
        Ok(k) if !k.trim().is_empty() => k,
        _ => {
            e.push(
                "upstream.api_key_env",
                format!("names the environment variable {var}, which is not set"),
            );
            return None;
        }
    };
    match http::HeaderValue::from_str(&format!("Bearer {}", key.trim())) {
        Ok(mut v) => {
            v.set_sensitive(true);
            Some(v)
        }
        Err(_) => {
            e.push(
                "upstream.api_key_env",
                format!("the key in {var} has characters a header cannot carry"),
            );
            None
        }
    }
}

struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, field: impl AsRef<str>, msg: impl AsRef<str>) {
        self.0.push(format!("{}: {}", field.as_ref(), msg.as_ref()));
    }
    /// A duration, positive, defaulted.
    fn duration(&mut self, field: &str, v: &Option<String>, default: &str) -> Duration {
        let raw = v.as_deref().unwrap_or(default);
        match parse_duration(raw) {
            Ok(d) if d.is_zero() => {
                self.push(field, "must be greater than zero");
                Duration::from_secs(1)
            }
            Ok(d) => d,
            Err(e) => {
                self.push(field, e);
                Duration::from_secs(1)
            }
        }
    }
    fn addr(&mut self, field: &str, v: &Option<String>, default: &str) -> SocketAddr {
        let raw = v.as_deref().unwrap_or(default);
        raw.parse().unwrap_or_else(|_| {
            self.push(
                field,
                format!("invalid address {raw:?} (expected ip:port, e.g. \"127.0.0.1:8080\")"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }
    fn range(&mut self, field: &str, v: Option<u64>, default: u64, lo: u64, hi: u64) -> u64 {
        let n = v.unwrap_or(default);
        if n < lo || n > hi {
            self.push(field, format!("{n} is out of range ({lo}..={hi})"));
            return default;
        }
        n
    }
}

/// Validates a parsed file. On failure returns every problem found, in file order.
pub fn validate(f: &FileConfig) -> Result<Config, Vec<String>> {
    let mut e = Errors(Vec::new());
    let s = &f.server;
    let listen = e.addr("server.listen", &s.listen, defaults::LISTEN);
    let admin_listen = e.addr(
        "server.admin_listen",
        &s.admin_listen,
        defaults::ADMIN_LISTEN,
    );
    if listen == admin_listen && listen.port() != 0 {
        e.push(
            "server.admin_listen",
            "must differ from server.listen: admin paths are never served on the data port",
        );
    }
    let admin_token_env = s
        .admin_token_env
        .clone()
        .unwrap_or_else(|| defaults::ADMIN_TOKEN_ENV.into());
    if admin_token_env.is_empty() {
        e.push(
            "server.admin_token_env",
            "must name an environment variable",
        );
    }
    let server = ServerConfig {
        tls: None,
        listen,
        admin_listen,
        admin_token_env,
        max_body_bytes: e.range(
            "server.max_body_bytes",
            s.max_body_bytes,
            defaults::MAX_BODY_BYTES,
            1,
            1 << 30,
        ) as usize,
        drain_timeout: e.duration(
            "server.drain_timeout",
            &s.drain_timeout,
            defaults::DRAIN_TIMEOUT,
        ),
        header_read_timeout: e.duration(
            "server.header_read_timeout",
            &s.header_read_timeout,
            defaults::HEADER_READ_TIMEOUT,
        ),
        body_read_timeout: e.duration(
            "server.body_read_timeout",
            &s.body_read_timeout,
            defaults::BODY_READ_TIMEOUT,
        ),
        send_timeout: e.duration(
            "server.send_timeout",
            &s.send_timeout,
            defaults::SEND_TIMEOUT,
        ),
        max_header_bytes: e.range(
            "server.max_header_bytes",
            s.max_header_bytes,
            defaults::MAX_HEADER_BYTES,
            1024,
            MAX_HEADER_BYTES_CEILING,
        ) as usize,
        audit_log: s
            .audit_log
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from),
        max_headers: e.range(
            "server.max_headers",
            s.max_headers,
            defaults::MAX_HEADERS,
            8,
            MAX_HEADERS_CEILING,
        ) as usize,
        max_connections: s
            .max_connections
            .map(|n| e.range("server.max_connections", Some(n), 1, 1, 1 << 24) as usize),
    };
    let tls = s.tls.as_ref().and_then(|t| {
        let (Some(cert), Some(key)) = (t.cert.as_deref(), t.key.as_deref()) else {
            e.push("server.tls", "needs both `cert` and `key` (PEM files)");
            return None;
        };
        let paths = crate::tls::paths(cert, key);
        match crate::tls::check(&paths) {
            Ok(()) => Some(paths),
            Err(why) => {
                e.push("server.tls", why);
                None
            }
        }
    });
    let server = ServerConfig { tls, ..server };
    let u = &f.upstream;
    let upstream = UpstreamConfig {
        connect_timeout: e.duration(
            "upstream.connect_timeout",
            &u.connect_timeout,
            defaults::CONNECT_TIMEOUT,
        ),
        response_head_timeout: e.duration(
            "upstream.response_head_timeout",
            &u.response_head_timeout,
            defaults::RESPONSE_HEAD_TIMEOUT,
        ),
        idle_chunk_timeout: e.duration(
            "upstream.idle_chunk_timeout",
            &u.idle_chunk_timeout,
            defaults::IDLE_CHUNK_TIMEOUT,
        ),
        pool_idle_timeout: e.duration(
            "upstream.pool_idle_timeout",
            &u.pool_idle_timeout,
            defaults::POOL_IDLE_TIMEOUT,
        ),
        retries: e.range("upstream.retries", u.retries, defaults::RETRIES, 0, 10) as u32,
        ewma_decay: e.duration("upstream.ewma_decay", &u.ewma_decay, defaults::EWMA_DECAY),
        authorization: upstream_authorization(&mut e, u.api_key_env.as_deref()),
    };
    let health = check_health(&mut e, &f.health);
    let auth = AuthConfig {
        enabled: f.auth.as_ref().and_then(|a| a.enabled).unwrap_or(true),
        hide_unlisted_models: f
            .auth
            .as_ref()
            .and_then(|a| a.hide_unlisted_models)
            .unwrap_or(false),
    };
    if auth.enabled && f.api_keys.is_empty() {
        e.push(
            "auth.enabled",
            "is true (the default) but no [[api_keys]] are configured: every request would be \
             refused; add keys, or set enabled = false for local use",
        );
    }
    let limits = check_limits(&mut e, f.limits.as_ref());
    let mut models = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    if f.models.is_empty() {
        e.push("models", "at least one [[models]] entry is required");
    }
    for (mi, m) in f.models.iter().enumerate() {
        let at = format!("models[{mi}]");
        let name = m.name.clone().unwrap_or_default();
        check_model_name(&mut e, &format!("{at}.name"), &name, &mut names);
        for (ai, a) in m.aliases.iter().enumerate() {
            check_model_name(&mut e, &format!("{at}.aliases[{ai}]"), a, &mut names);
        }
        let raw_balancer = m.balancer.as_deref().unwrap_or(defaults::BALANCER);
        let balancer = match BalancerKind::ALL
            .into_iter()
            .find(|b| b.as_str() == raw_balancer)
        {
            Some(b) => b,
            None => {
                let other = raw_balancer;
                e.push(
                    format!("{at}.balancer"),
                    format!(
                        "unknown balancer {other:?} (expected round_robin, \
                         weighted_round_robin, p2c_ewma or least_inflight)"
                    ),
                );
                BalancerKind::RoundRobin
            }
        };
        let deploy_dir = m
            .deploy_dir
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from);
        let q = m.queue.as_ref();
        let queue = QueueConfig {
            max_size: e.range(
                &format!("{at}.queue.max_size"),
                q.and_then(|q| q.max_size),
                defaults::QUEUE_MAX_SIZE,
                0,
                1_000_000,
            ) as usize,
            timeout: e.duration(
                &format!("{at}.queue.timeout"),
                &q.and_then(|q| q.timeout.clone()),
                defaults::QUEUE_TIMEOUT,
            ),
        };

        let rate = check_rate(&mut e, &at, m.requests_per_second, m.burst);
        let mut versions = Vec::new();
        let mut version_names = HashSet::new();
        if m.versions.is_empty() {
            e.push(
                format!("{at}.versions"),
                "at least one [[models.versions]] entry is required",
            );
        }
        let mut seen_urls = HashSet::new();
        for (vi, v) in m.versions.iter().enumerate() {
            let vat = format!("{at}.versions[{vi}]");
            let vname = v.name.clone().unwrap_or_default();
            if vname.is_empty() {
                e.push(format!("{vat}.name"), "is required");
            } else if !is_token(&vname) {
                e.push(
                    format!("{vat}.name"),
                    format!("{vname:?} may only contain letters, digits, '.', '_' and '-'"),
                );
            } else if !version_names.insert(vname.clone()) {
                e.push(
                    format!("{vat}.name"),
                    format!("version {vname:?} is declared twice"),
                );
            }
            if v.replicas.is_empty() {
                e.push(
                    format!("{vat}.replicas"),
                    "at least one replica is required",
                );
            }
            let mut replicas = Vec::new();
            for (ri, r) in v.replicas.iter().enumerate() {
                let rat = format!("{vat}.replicas[{ri}]");
                let Some(replica) = check_replica(&mut e, &rat, r, balancer) else {
                    continue;
                };
                if !seen_urls.insert(replica.key.clone()) {
                    e.push(
                        format!("{rat}.url"),
                        format!("{} appears twice in this model", replica.key),
                    );
                }
                replicas.push(replica);
            }
            versions.push(VersionConfig {
                name: vname,
                replicas,
            });
        }
        // With a deployment directory, `current` names the stable version.
        let current = match &deploy_dir {
            Some(dir) => match crate::canary::versions::current(dir) {
                Ok(v) => Some(v),
                Err(why) => {
                    e.push(format!("{at}.deploy_dir"), why);
                    None
                }
            },
            None => None,
        };
        let stable = match current.as_deref().or(m.stable.as_deref()) {
            Some(s) => match versions.iter().position(|v| v.name == s) {
                Some(i) => i,
                None => {
                    let field = if current.is_some() {
                        "deploy_dir"
                    } else {
                        "stable"
                    };
                    e.push(
                        format!("{at}.{field}"),
                        format!("names version {s:?}, which is not among this model's versions"),
                    );
                    0
                }
            },
            None if versions.len() <= 1 => 0,
            None if deploy_dir.is_some() => 0,
            None => {
                e.push(
                    format!("{at}.stable"),
                    "is required when a model has several versions (or set deploy_dir)",
                );
                0
            }
        };
        let canary = m
            .canary
            .as_ref()
            .and_then(|c| check_canary(&mut e, &at, c, &versions));
        models.push(ModelConfig {
            name,
            aliases: m.aliases.clone(),
            balancer,
            queue,
            rate,
            deploy_dir,
            canary,
            stable,
            versions,
        });
    }
    let api_keys = check_api_keys(&mut e, &f.api_keys, &models);
    if !e.0.is_empty() {
        return Err(e.0);
    }
    Ok(Config {
        server,
        upstream,
        health,
        auth,
        api_keys,
        limits,
        models,
    })
}

/// A `requests_per_second` + `burst` pair under `at`; absent or 0 = no limit.
fn check_rate(e: &mut Errors, at: &str, rps: Option<f64>, burst: Option<u64>) -> Option<Rate> {
    // `limits.per_ip` names its keys `per_ip_requests_per_second` and `per_ip_burst`.
    let (at, sep) = match at.strip_suffix(".per_ip") {
        Some(base) => (format!("{base}.per_ip"), "_"),
        None => (at.to_owned(), if at.is_empty() { "" } else { "." }),
    };
    let rps = rps.unwrap_or(0.0);
    if !rps.is_finite() || !(0.0..=1e6).contains(&rps) {
        e.push(
            format!("{at}{sep}requests_per_second"),
            format!("{rps} is out of range (0 = off, up to 1000000)"),
        );
        return None;
    }
    if burst == Some(0) || burst.is_some_and(|b| b > 1_000_000) {
        e.push(format!("{at}{sep}burst"), "is out of range (1..=1000000)");
        return None;
    }
    if rps == 0.0 {
        return None;
    }
    let burst = burst.unwrap_or_else(|| rps.ceil().max(1.0) as u64) as u32;
    Some(Rate {
        per_second: rps,
        burst,
    })
}

fn check_api_keys(
    e: &mut Errors,
    keys: &[ApiKeyFile],
    models: &[ModelConfig],
) -> Vec<ApiKeyConfig> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        let at = format!("api_keys[{i}]");
        let name = k.name.clone().unwrap_or_default();
        if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
            e.push(
                format!("{at}.name"),
                "is required (at most 128 printable characters)",
            );
        } else if !names.insert(name.clone()) {
            e.push(
                format!("{at}.name"),
                format!("{name:?} is used by another key"),
            );
        }
        let sha256 = match k.sha256.as_deref().map(parse_sha256) {
            Some(Some(h)) => {
                if !hashes.insert(h) {
                    e.push(format!("{at}.sha256"), "the same key hash appears twice");
                }
                h
            }
            Some(None) => {
                e.push(
                    format!("{at}.sha256"),
                    "must be 64 hex digits: the SHA-256 of the key (see `gateway hash-key`)",
                );
                [0; 32]
            }
            None => {
                e.push(
                    format!("{at}.sha256"),
                    "is required (see `gateway hash-key`)",
                );
                [0; 32]
            }
        };
        let allowed = match &k.models {
            None => None,
            Some(list) if list.is_empty() => None,
            Some(list) => {
                let mut canon = Vec::new();
                for (j, m) in list.iter().enumerate() {
                    match models
                        .iter()
                        .find(|c| &c.name == m || c.aliases.contains(m))
                    {
                        Some(c) => canon.push(c.name.clone()),
                        None => e.push(
                            format!("{at}.models[{j}]"),
                            format!("{m:?} is not a configured model or alias"),
                        ),
                    }
                }
                Some(canon)
            }
        };
        let rate = check_rate(e, &at, k.requests_per_second, k.burst);
        let tpm = k.tokens_per_minute.filter(|&t| t > 0);
        if tpm.is_some_and(|t| t > 1_000_000_000_000) {
            e.push(format!("{at}.tokens_per_minute"), "is out of range");
        }
        out.push(ApiKeyConfig {
            name,
            sha256,
            models: allowed,
            rate,
            tokens_per_minute: tpm,
            pin_versions: k.pin_versions.unwrap_or(false),
        });
    }
    out
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let b = hex.trim().as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

fn check_limits(e: &mut Errors, l: Option<&LimitsFile>) -> LimitsConfig {
    let empty = LimitsFile::default();
    let l = l.unwrap_or(&empty);
    let per_ip = check_rate(
        e,
        "limits.per_ip",
        l.per_ip_requests_per_second,
        l.per_ip_burst.or(Some(20)),
    );
    let mut trusted = Vec::new();
    for (i, t) in l.trusted_proxies.iter().flatten().enumerate() {
        match parse_net(t) {
            Some(n) => trusted.push(n),
            None => e.push(
                format!("limits.trusted_proxies[{i}]"),
                format!("{t:?} is not an IP address or CIDR range (e.g. \"10.0.0.0/8\")"),
            ),
        }
    }
    // `env:NAME` reads the URL (which may hold a password) from the environment, e.g. from a
    // Kubernetes Secret, instead of the config file.
    let from_env = l
        .redis_url
        .as_deref()
        .and_then(|u| u.strip_prefix("env:"))
        .map(|var| match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                e.push(
                    "limits.redis_url",
                    format!("names the environment variable {var}, which is not set"),
                );
                None
            }
        });
    let url = match from_env {
        Some(v) => v,
        None => l.redis_url.clone(),
    };
    let redis = match url.as_deref().filter(|u| !u.is_empty()) {
        None => None,
        Some(url) => {
            let fallback = match l.redis_fallback.as_deref().unwrap_or("local") {
                "local" => RedisFallback::Local,
                "open" => RedisFallback::Open,
                "closed" => RedisFallback::Closed,
                other => {
                    e.push(
                        "limits.redis_fallback",
                        format!("unknown fallback {other:?} (expected local, open or closed)"),
                    );
                    RedisFallback::Local
                }
            };
            let timeout = e.duration("limits.redis_timeout", &l.redis_timeout, "100ms");
            let instances = e.range("limits.instances", l.instances, 1, 1, 10_000) as u32;
            match parse_redis_url(url) {
                Ok((host, port, db, password)) => Some(RedisConfig {
                    host,
                    port,
                    db,
                    password,
                    timeout,
                    fallback,
                    instances,
                }),
                Err(why) => {
                    e.push("limits.redis_url", why);
                    None
                }
            }
        }
    };
    LimitsConfig {
        per_ip,
        trusted_proxies: trusted,
        redis,
        default_max_tokens: e.range(
            "limits.default_max_tokens",
            l.default_max_tokens,
            1024,
            1,
            10_000_000,
        ),
        per_ip_max_tracked: e.range(
            "limits.per_ip_max_tracked",
            l.per_ip_max_tracked,
            100_000,
            100,
            100_000_000,
        ) as usize,
    }
}

fn check_canary(
    e: &mut Errors,
    at: &str,
    c: &CanaryFile,
    versions: &[VersionConfig],
) -> Option<CanaryConfig> {
    let at = format!("{at}.canary");
    let Some(name) = c.version.as_deref() else {
        e.push(format!("{at}.version"), "is required");
        return None;
    };
    let Some(version) = versions.iter().position(|v| v.name == name) else {
        e.push(
            format!("{at}.version"),
            format!("{name:?} is not among this model's versions"),
        );
        return None;
    };
    let weight_percent = c.weight_percent.unwrap_or(0.0);
    if !(0.0..=100.0).contains(&weight_percent) {
        e.push(
            format!("{at}.weight_percent"),
            format!("{weight_percent} is out of range (0..=100)"),
        );
    }
    let sticky = match c.sticky.as_deref().unwrap_or("api_key") {
        "none" => Sticky::None,
        "api_key" => Sticky::ApiKey,
        h => match h
            .strip_prefix("header:")
            .and_then(|n| http::header::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        {
            Some(name) => Sticky::Header(name),
            None => {
                e.push(
                    format!("{at}.sticky"),
                    format!("{h:?}: expected \"api_key\", \"header:<name>\" or \"none\""),
                );
                Sticky::None
            }
        },
    };
    let guard = c.guard.as_ref().map(|g| {
        let max_error_rate = g.max_error_rate.unwrap_or(0.05);
        if !(0.0..=1.0).contains(&max_error_rate) {
            e.push(
                format!("{at}.guard.max_error_rate"),
                "must be within 0..=1 (a fraction)",
            );
        }
        if g.max_ttft_p95_ms
            .is_some_and(|v| !(v > 0.0 && v.is_finite()))
        {
            e.push(
                format!("{at}.guard.max_ttft_p95_ms"),
                "must be a positive number of ms",
            );
        }
        GuardConfig {
            max_error_rate,
            max_ttft_p95_ms: g.max_ttft_p95_ms,
            min_requests: e.range(
                &format!("{at}.guard.min_requests"),
                g.min_requests,
                200,
                1,
                100_000_000,
            ),
            window: e.duration(&format!("{at}.guard.window"), &g.window, "60s"),
        }
    });
    let steps = c.steps.clone().unwrap_or_default();
    if steps.iter().any(|s| !(*s > 0.0 && *s <= 100.0)) || steps.windows(2).any(|w| w[0] >= w[1]) {
        e.push(
            format!("{at}.steps"),
            "must be increasing weights within (0, 100]",
        );
    }
    let step_interval = e.duration(&format!("{at}.step_interval"), &c.step_interval, "5m");
    Some(CanaryConfig {
        version,
        weight_percent: weight_percent.clamp(0.0, 100.0),
        sticky,
        guard,
        steps,
        step_interval,
    })
}

/// `10.0.0.0/8`, `fd00::/8`, or a bare address.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
        None => (s, None),
    };
    let addr: std::net::IpAddr = addr.trim().parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    (prefix <= max).then_some(IpNet { addr, prefix })
}

/// `redis://[:password@]host[:port][/db]`.
fn parse_redis_url(url: &str) -> Result<(String, u16, u32, Option<String>), String> {
    let bad = || {
        format!(
            "invalid Redis URL {:?} (expected redis://[:password@]host[:port][/db])",
            redact(url)
        )
    };
    let rest = url.strip_prefix("redis://").ok_or_else(bad)?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let password = auth
        .map(|a| a.split_once(':').map_or(a, |(_, p)| p).to_owned())
        .filter(|p| !p.is_empty());
    let (hostport, db) = match rest.split_once('/') {
        Some((h, "")) => (h, 0),
        Some((h, d)) => (h, d.parse().map_err(|_| bad())?),
        None => (rest, 0),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
            h.trim_matches(|c| c == '[' || c == ']'),
            p.parse().map_err(|_| bad())?,
        ),
        _ => (hostport, 6379),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port, db, password))
}

/// A Redis URL with its password hidden, for error messages.
fn redact(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((_, rest)) => format!("redis://***@{rest}"),
        None => url.to_owned(),
    }
}

fn check_health(e: &mut Errors, h: &HealthFile) -> HealthConfig {
    let path = h
        .path
        .clone()
        .unwrap_or_else(|| defaults::HEALTH_PATH.into());
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        e.push(
            "health.path",
            format!("{path:?} must be a path starting with '/'"),
        );
    }
    let interval = e.duration("health.interval", &h.interval, defaults::HEALTH_INTERVAL);
    let timeout = e.duration("health.timeout", &h.timeout, defaults::HEALTH_TIMEOUT);
    if timeout > interval {
        e.push("health.timeout", "must not be longer than health.interval");
    }
    let pct = h
        .max_ejection_percent
        .unwrap_or(defaults::MAX_EJECTION_PERCENT);
    if !(0.0..=100.0).contains(&pct) || pct.is_nan() {
        e.push(
            "health.max_ejection_percent",
            format!("{pct} is out of range (0..=100)"),
        );
    }
    HealthConfig {
        active: h.active.unwrap_or(true),
        path,
        interval,
        timeout,
        unhealthy_threshold: e.range(
            "health.unhealthy_threshold",
            h.unhealthy_threshold,
            defaults::UNHEALTHY_THRESHOLD,
            1,
            100,
        ) as u32,
        healthy_threshold: e.range(
            "health.healthy_threshold",
            h.healthy_threshold,
            defaults::HEALTHY_THRESHOLD,
            1,
            100,
        ) as u32,
        check_model: h.check_model.unwrap_or(false),
        max_fails: e.range(
            "health.max_fails",
            h.max_fails,
            defaults::MAX_FAILS,
            0,
            1000,
        ) as u32,
        fail_timeout: e.duration(
            "health.fail_timeout",
            &h.fail_timeout,
            defaults::FAIL_TIMEOUT,
        ),
        max_ejection_percent: pct.clamp(0.0, 100.0),
        max_ejection_time: e.duration(
            "health.max_ejection_time",
            &h.max_ejection_time,
            defaults::MAX_EJECTION_TIME,
        ),
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn check_model_name(e: &mut Errors, field: &str, name: &str, seen: &mut HashSet<String>) {
    if name.is_empty() {
        e.push(field, "is required");
    } else if name.len() > 256 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        e.push(
            field,
            format!("{name:?} must be at most 256 characters, without spaces"),
        );
    } else if name.contains('@') {
        e.push(
            field,
            format!("{name:?} must not contain '@' (reserved for version pins: name@version)"),
        );
    } else if !seen.insert(name.to_owned()) {
        e.push(
            field,
            format!("{name:?} is already used as a model name or alias"),
        );
    }
}

fn check_replica(
    e: &mut Errors,
    at: &str,
    r: &ReplicaFile,
    balancer: BalancerKind,
) -> Option<ReplicaConfig> {
    let weight = r.weight.unwrap_or(1);
    if !(1..=1000).contains(&weight) {
        e.push(
            format!("{at}.weight"),
            format!("{weight} is out of range (1..=1000)"),
        );
    } else if weight != 1 && !balancer.uses_weights() {
        e.push(
            format!("{at}.weight"),
            "has no effect with balancer \"round_robin\"; use \"weighted_round_robin\"",
        );
    }
    let max_inflight = r.max_inflight.unwrap_or(0);
    if max_inflight > 1_000_000 {
        e.push(
            format!("{at}.max_inflight"),
            format!("{max_inflight} is out of range (0..=1000000)"),
        );
    }
    let Some(raw) = r.url.as_deref() else {
        e.push(format!("{at}.url"), "is required");
        return None;
    };
    let invalid = |e: &mut Errors, why: &str| {
        e.push(format!("{at}.url"), format!("invalid URL {raw:?}: {why}"));
    };
    let Ok(uri) = raw.parse::<Uri>() else {
        invalid(e, "expected http://host:port");
        return None;
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            invalid(e, "https replicas are not supported yet");
            return None;
        }
        _ => {
            invalid(e, "expected http://host:port");
            return None;
        }
    }
    let Some(auth) = uri.authority() else {
        invalid(e, "no host");
        return None;
    };
    if auth.host().is_empty() || auth.as_str().contains('@') {
        invalid(e, "expected http://host:port");
        return None;
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        invalid(e, "a replica URL must not have a path or query");
        return None;
    }
    let port = auth.port_u16().unwrap_or(80);
    let authority: Authority = match format!("{}:{port}", auth.host()).parse() {
        Ok(a) => a,
        Err(_) => {
            invalid(e, "bad host");
            return None;
        }
    };
    Some(ReplicaConfig {
        key: format!("http://{authority}"),
        authority,
        weight: weight.clamp(1, 1000) as u32,
        max_inflight: max_inflight.min(1_000_000) as u32,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, Vec<String>> {
        let f: FileConfig = toml::from_str(s).map_err(|e| vec![e.to_string()])?;
        validate(&f)
    }

    /// The smallest valid config (one model, one replica, auth off), for tests elsewhere too.
    pub(crate) const MIN: &str = r#"
        [[models]]
        name = "m"
        [[models.versions]]
        name = "v1"
        replicas = [{ url = "http://127.0.0.1:8000" }]
        [auth]
        enabled = false
    "#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.upstream.response_head_timeout, Duration::from_secs(300));
        assert_eq!(c.upstream.pool_idle_timeout, Duration::from_secs(4));
        assert_eq!(c.upstream.retries, 2);
        let m = &c.models[0];
        assert_eq!(m.versions[0].replicas[0].key, "http://127.0.0.1:8000");
        assert_eq!(
            m.versions[0].replicas[0].authority.as_str(),
            "127.0.0.1:8000"
        );
        assert_eq!(m.versions[0].replicas[0].weight, 1);
        assert_eq!(
            c.server.max_connections, None,
            "the open-file limit decides"
        );
    }

    #[test]
    fn max_connections_is_a_positive_count() {
        let with = |n: &str| parse(&format!("[server]\nmax_connections = {n}\n{MIN}"));
        assert_eq!(with("500").unwrap().server.max_connections, Some(500));
        for bad in ["0", "100000000"] {
            let errs = with(bad).unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].starts_with("server.max_connections: "), "{errs:?}");
        }
        // Refused by the parser, which points at the line.
        let errs = with("-1").unwrap_err();
        assert!(errs[0].contains("max_connections = -1"), "{errs:?}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1000h").is_err());
    }

    #[test]
    fn all_errors_are_collected_with_field_paths() {
        let errs = parse(
            r#"
            [auth]
            enabled = false
            [server]
            drain_timeout = "soon"
            [[models]]
            name = "a"
            [[models.versions]]
            name = "v"
            replicas = [{ url = "http://127.0.0.1:1" }]
            [[models]]
            name = "b"
            [[models.versions]]
            name = "v"
            replicas = [{ url = "http://127.0.0.1:1" }, { url = "http://127.0.0.1:2" },
                        { url = "htp:/x" }]
            [[models]]
            name = "a"
            [[models.versions]]
            name = "v"
            replicas = [{ url = "http://127.0.0.1:3" }]
        "#,
        )
        .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs[0].starts_with("server.drain_timeout: "));
        assert_eq!(
            errs[1],
            r#"models[1].versions[0].replicas[2].url: invalid URL "htp:/x": expected http://host:port"#
        );
        assert!(errs[2].starts_with("models[2].name: \"a\" is already used"));
    }

    #[test]
    fn tls_files_are_checked_when_the_config_is() {
        let errs = parse(&format!(
            "[server.tls]\ncert = \"/nonexistent.crt\"\nkey = \"b\"\n{MIN}"
        ))
        .unwrap_err();
        assert!(
            errs[0].starts_with("server.tls: cannot read /nonexistent.crt"),
            "{errs:?}"
        );
        let errs = parse(&format!("[server.tls]\ncert = \"/x\"\n{MIN}")).unwrap_err();
        assert!(errs[0].contains("needs both"), "{errs:?}");
    }

    #[test]
    fn harmless_off_values_of_later_features_are_accepted() {
        let cfg = format!(
            "[limits]\nper_ip_requests_per_second = 0.0\n\
             per_ip_burst = 20\ntrusted_proxies = []\nredis_url = \"\"\n{MIN}"
        );
        parse(&cfg).unwrap();
    }

    #[test]
    fn keys_and_limits_are_validated() {
        let keys = r#"
            [[api_keys]]
            name = "a"
            sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            models = ["m", "nope"]
            requests_per_second = 5.0
            [[api_keys]]
            name = "a"
            sha256 = "xyz"
            burst = 0
            [limits]
            per_ip_requests_per_second = -1.0
            trusted_proxies = ["10.0.0.0/8", "not-an-ip"]
            redis_url = "http://x"
        "#;
        let cfg = MIN.replace("[auth]\n        enabled = false", "");
        let errs = parse(&format!("{keys}{cfg}")).unwrap_err();
        for want in [
            "limits.per_ip_requests_per_second:",
            "limits.trusted_proxies[1]:",
            "limits.redis_url: invalid Redis URL",
            "api_keys[0].models[1]: \"nope\"",
            "api_keys[1].name: \"a\" is used",
            "api_keys[1].sha256: must be 64 hex",
            "api_keys[1].burst:",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{want}: {errs:#?}"
            );
        }
        // Auth on (the default) with no keys would refuse everything: an error.
        let errs = parse(&cfg).unwrap_err();
        assert!(errs[0].starts_with("auth.enabled:"), "{errs:?}");
    }

    #[test]
    fn good_keys_and_redis_urls_parse() {
        let keys = r#"
            [[api_keys]]
            name = "a"
            sha256 = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
            requests_per_second = 2.5
            tokens_per_minute = 1000
            [limits]
            redis_url = "redis://:s3cret@cache.internal:6380/2"
            redis_fallback = "closed"
            instances = 4
        "#;
        let cfg = MIN.replace("[auth]\n        enabled = false", "");
        let c = parse(&format!("{keys}{cfg}")).unwrap();
        let k = &c.api_keys[0];
        assert_eq!(
            k.rate,
            Some(Rate {
                per_second: 2.5,
                burst: 3
            })
        );
        assert_eq!(k.tokens_per_minute, Some(1000));
        assert_eq!(k.sha256[0], 0x9f);
        assert!(
            !format!("{k:?}").contains("9f86"),
            "the hash stays out of debug output"
        );
        let r = c.limits.redis.unwrap();
        assert_eq!((r.host.as_str(), r.port, r.db), ("cache.internal", 6380, 2));
        assert_eq!(r.password.as_deref(), Some("s3cret"));
        assert_eq!((r.fallback, r.instances), (RedisFallback::Closed, 4));
        let e = parse_redis_url("redis://:pw@").unwrap_err();
        assert!(!e.contains("pw"), "{e}");
        std::env::set_var("GW_TEST_REDIS_URL_FROM_ENV", "redis://10.1.2.3:7000");
        let from_env = format!("{keys}{cfg}").replace(
            "redis://:s3cret@cache.internal:6380/2",
            "env:GW_TEST_REDIS_URL_FROM_ENV",
        );
        let r = parse(&from_env).unwrap().limits.redis.unwrap();
        assert_eq!((r.host.as_str(), r.port), ("10.1.2.3", 7000));
        let unset = from_env.replace("GW_TEST_REDIS_URL_FROM_ENV", "GW_TEST_UNSET_VAR_XYZ");
        assert!(parse(&unset).unwrap_err()[0].contains("GW_TEST_UNSET_VAR_XYZ"));
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = parse(&format!("[server]\nlisten_port = 1\n{MIN}")).unwrap_err();
        assert!(err[0].contains("listen_port"), "{err:?}");
    }

    #[test]
    fn stable_is_required_with_several_versions_and_must_exist() {
        let two = r#"
            [auth]
            enabled = false
            [[models]]
            name = "m"
            [[models.versions]]
            name = "v1"
            replicas = [{ url = "http://127.0.0.1:1" }]
            [[models.versions]]
            name = "v2"
            replicas = [{ url = "http://127.0.0.1:2" }]
        "#;
        assert!(parse(two).unwrap_err()[0].starts_with("models[0].stable: is required"));
        let ok = two.replace("name = \"m\"", "name = \"m\"\nstable = \"v2\"");
        assert_eq!(parse(&ok).unwrap().models[0].stable, 1);
        let bad = two.replace("name = \"m\"", "name = \"m\"\nstable = \"v3\"");
        assert!(parse(&bad).unwrap_err()[0].contains("\"v3\""));
    }

    #[test]
    fn replica_urls_are_checked() {
        for (url, why) in [
            ("https://a:1", "https"),
            ("http://a:1/v1", "path"),
            ("ftp://a", "expected"),
            ("http://user@a:1", "expected"),
            ("not a url", "expected"),
        ] {
            let cfg = MIN.replace("http://127.0.0.1:8000", url);
            let errs = parse(&cfg).unwrap_err();
            assert!(errs[0].contains(why), "{url}: {errs:?}");
        }
        let cfg = MIN.replace("http://127.0.0.1:8000", "http://replica.internal");
        let c = parse(&cfg).unwrap();
        assert_eq!(
            c.models[0].versions[0].replicas[0].authority.as_str(),
            "replica.internal:80"
        );
    }

    #[test]
    fn weights_need_a_weighted_balancer() {
        let cfg = MIN.replace("8000\" }", "8000\", weight = 3 }");
        let cfg = cfg.replace("name = \"m\"", "name = \"m\"\nbalancer = \"round_robin\"");
        assert!(parse(&cfg).unwrap_err()[0].contains("weighted_round_robin"));
        let cfg = cfg.replace("\"round_robin\"", "\"weighted_round_robin\"");
        assert_eq!(
            parse(&cfg).unwrap().models[0].versions[0].replicas[0].weight,
            3
        );
    }

    #[test]
    fn names_with_at_sign_or_duplicates_are_rejected() {
        let cfg = MIN.replace("name = \"m\"", "name = \"m@1\"");
        assert!(parse(&cfg).unwrap_err()[0].contains("'@'"));
        let cfg = MIN.replace("name = \"m\"", "name = \"m\"\naliases = [\"m\"]");
        assert!(parse(&cfg).unwrap_err()[0].contains("already used"));
    }
}
