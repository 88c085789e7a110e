//! Limits shared by every gateway instance through Redis: one atomic Lua script per check (one
//! round trip), run on Redis's own clock so instances need not agree on time.
//!
//! A deliberately small RESP client (connect, AUTH, SELECT, EVAL) instead of the `redis` crate:
//! we need three commands, a short per-call timeout and a pool of a few connections, and it
//! keeps the dependency tree lean.

use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::RedisConfig;

/// GCRA over one key. ARGV: emission interval (µs), burst. Returns
/// {allowed 0|1, remaining, µs (time to full when allowed; retry-after when not)}.
const GCRA: &str = r#"
local T = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + T
local limit = T * burst
local diff = new_tat - now
if diff > limit then
  return {0, 0, diff - limit}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(diff / 1000) + 1)
return {1, math.floor((limit - diff) / T), diff}
"#;

/// Token bucket with refunds. ARGV: capacity, refill per µs, cost (negative = refund).
/// A cost above the capacity is admitted when the bucket is full (it runs into debt), so a
/// request larger than the whole budget is slow, not impossible. Returns
/// {allowed 0|1, tokens left, retry-after µs}.
const BUCKET: &str = r#"
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1]) or cap
local ts = tonumber(v[2]) or now
tokens = math.min(cap, tokens + (now - ts) * rate)
local ok = 1
local wait = 0
if cost < 0 then
  tokens = math.min(cap, tokens - cost)
elseif tokens >= math.min(cost, cap) then
  tokens = tokens - cost
else
  ok = 0
  wait = (math.min(cost, cap) - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((cap - tokens) / rate / 1000) + 1000)
return {ok, math.floor(tokens), math.ceil(wait)}
"#;

/// One RESP value (only what the scripts and setup commands return).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Value>),
}

#[derive(Debug)]
pub struct RedisError(pub String);

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for RedisError {
    fn from(e: std::io::Error) -> Self {
        Self(e.to_string())
    }
}

struct Conn {
    io: BufReader<TcpStream>,
}

impl Conn {
    async fn open(cfg: &RedisConfig) -> Result<Self, RedisError> {
        let stream = TcpStream::connect((cfg.host.as_str(), cfg.port)).await?;
        let _ = stream.set_nodelay(true);
        let mut c = Self {
            io: BufReader::new(stream),
        };
        if let Some(pw) = &cfg.password {
            c.call(&[b"AUTH", pw.as_bytes()]).await?;
        }
        if cfg.db != 0 {
            c.call(&[b"SELECT", cfg.db.to_string().as_bytes()]).await?;
        }
        Ok(c)
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Value, RedisError> {
        let mut out = Vec::with_capacity(64 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.io.get_mut().write_all(&out).await?;
        match read_value(&mut self.io).await? {
            Value::Error(e) => Err(RedisError(e)),
            v => Ok(v),
        }
    }
}

async fn read_line(r: &mut BufReader<TcpStream>) -> Result<String, RedisError> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(RedisError("connection closed".into()));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn read_value(
    r: &mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, RedisError>> + Send + '_>> {
    Box::pin(async move {
        let line = read_line(r).await?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let int = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| RedisError(format!("bad reply {s:?}")))
        };
        Ok(match kind {
            "+" => Value::Simple(rest.to_owned()),
            "-" => Value::Error(rest.to_owned()),
            ":" => Value::Int(int(rest)?),
            "$" => {
                let n = int(rest)?;
                if n < 0 {
                    Value::Bulk(None)
                } else {
                    let mut buf = vec![0u8; n as usize + 2];
                    r.read_exact(&mut buf).await?;
                    buf.truncate(n as usize);
                    Value::Bulk(Some(buf))
                }
            }
            "*" => {
                let n = int(rest)?;
                let mut items = Vec::with_capacity(n.max(0) as usize);
                for _ in 0..n.max(0) {
                    items.push(read_value(r).await?);
                }
                Value::Array(items)
            }
            _ => return Err(RedisError(format!("unexpected reply {line:?}"))),
        })
    })
}

/// Outcome of one script run: (allowed, remaining or tokens left, µs).
pub type Verdict = (bool, i64, i64);

/// A small pool of Redis connections with a timeout per call.
pub struct RedisClient {
    cfg: RedisConfig,
    idle: Mutex<Vec<Conn>>,
}

impl RedisClient {
    pub fn new(cfg: RedisConfig) -> Self {
        Self {
            cfg,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    /// GCRA check of one request against `key`.
    pub async fn gcra(
        &self,
        key: &str,
        interval_us: u64,
        burst: u32,
    ) -> Result<Verdict, RedisError> {
        self.eval(GCRA, key, &[interval_us.to_string(), burst.to_string()])
            .await
    }

    /// Takes `cost` tokens from (or, negative, returns them to) the bucket at `key`.
    pub async fn bucket(
        &self,
        key: &str,
        capacity: u64,
        per_us: f64,
        cost: i64,
    ) -> Result<Verdict, RedisError> {
        self.eval(
            BUCKET,
            key,
            &[
                capacity.to_string(),
                format!("{per_us:.12}"),
                cost.to_string(),
            ],
        )
        .await
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        self.call(vec![b"PING".to_vec()]).await.map(|_| ())
    }

    async fn eval(&self, script: &str, key: &str, args: &[String]) -> Result<Verdict, RedisError> {
        let mut argv = vec![
            b"EVAL".to_vec(),
            script.as_bytes().to_vec(),
            b"1".to_vec(),
            key.as_bytes().to_vec(),
        ];
        argv.extend(args.iter().map(|a| a.as_bytes().to_vec()));
        match self.call(argv).await? {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(ok), Value::Int(n), Value::Int(us)] => Ok((*ok == 1, *n, *us)),
                _ => Err(RedisError(format!("unexpected script reply {items:?}"))),
            },
            other => Err(RedisError(format!("unexpected script reply {other:?}"))),
        }
    }

    /// One command on a pooled connection, within the configured timeout. A connection that
    /// failed or timed out is dropped, never reused mid-reply.
    async fn call(&self, argv: Vec<Vec<u8>>) -> Result<Value, RedisError> {
        let pooled = self.idle.lock().ok().and_then(|mut v| v.pop());
        let work = async {
            let mut conn = match pooled {
                Some(c) => c,
                None => Conn::open(&self.cfg).await?,
            };
            let refs: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
            let v = conn.call(&refs).await?;
            Ok::<_, RedisError>((v, conn))
        };
        match tokio::time::timeout(self.cfg.timeout, work).await {
            Err(_) => Err(RedisError(format!(
                "no answer within {:?}",
                self.cfg.timeout
            ))),
            Ok(Err(e)) => Err(e),
            Ok(Ok((v, conn))) => {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < 32 {
                        idle.push(conn);
                    }
                }
                Ok(v)
            }
        }
    }
}
