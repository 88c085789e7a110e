//! Listeners and their lifecycle: the data plane (HTTP/1.1 and h2c on one port), the admin
//! listener, and graceful drain — stop accepting, let every in-flight request and stream end
//! (up to `server.drain_timeout`), then return.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::proxy::read::ClientBody;
use crate::proxy::{self, ConnCtx};
use crate::state::AppState;
use crate::transport::{ConnFlags, HyperTcp, Tls};

/// Where a started gateway listens.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub data: SocketAddr,
    pub admin: SocketAddr,
}

/// Binds with a deep accept queue: when hundreds of clients open streams at once, a short
/// backlog drops SYNs and those clients wait a full second to retry.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into())?)
}

/// A gateway bound to its ports, ready to serve.
pub struct Gateway {
    pub addrs: BoundAddrs,
    app: Arc<AppState>,
    data: TcpListener,
    admin: TcpListener,
}

impl Gateway {
    /// Loads a config file (kept as the source for reloads and write-backs) and binds.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_source(&text, Some(path.to_path_buf()))
    }

    /// Binds from config text; `path` is the file it came from, if any.
    pub fn from_source(text: &str, path: Option<std::path::PathBuf>) -> anyhow::Result<Self> {
        let config = crate::config::parse(text).map_err(|e| match &path {
            Some(p) => anyhow::anyhow!("{}: {e}", p.display()),
            None => anyhow::anyhow!("{e}"),
        })?;
        let gw = Self::bind(config)?;
        *gw.app
            .control
            .source
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = crate::control::Source {
            path,
            text: text.to_owned(),
        };
        Ok(gw)
    }

    /// Binds both listeners. Fails before serving anything if a port is taken.
    pub fn bind(config: Config) -> anyhow::Result<Self> {
        let data = bind(config.server.listen)?;
        let admin = bind(config.server.admin_listen)?;
        let addrs = BoundAddrs {
            data: data.local_addr()?,
            admin: admin.local_addr()?,
        };
        Ok(Self {
            addrs,
            app: Arc::new(AppState::new(config)),
            data,
            admin,
        })
    }

    pub fn state(&self) -> Arc<AppState> {
        self.app.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains and returns.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            addrs,
            app,
            data,
            admin,
        } = self;
        let runtime = tokio::runtime::Handle::current();
        let workers = runtime.metrics().num_workers();
        let scheduler = match runtime.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
            _ => "multi_thread",
        };
        let max_connections = app.client_cap();
        tracing::info!(
            addr = %addrs.data,
            workers,
            scheduler,
            open_file_limit = app.descriptors.limit(),
            max_connections,
            "data listener ready"
        );
        tracing::info!(addr = %addrs.admin, "admin listener ready");
        let graceful = Arc::new(GracefulShutdown::new());
        // Every data connection's task. Each drains on `shutdown` itself (HTTP/1.1 in our own
        // server, HTTP/2 in `crate::h2`); `graceful` is the admin connections'.
        let conns = TaskTracker::new();
        let data_task = {
            let (app, shutdown) = (app.clone(), shutdown.clone());
            let tracker = conns.clone();
            tokio::spawn(async move {
                accept_data(data, app, tracker, shutdown).await;
            })
        };
        let admin_task = {
            let (app, shutdown) = (app.clone(), shutdown.clone());
            let watcher = graceful.clone();
            tokio::spawn(async move { accept_admin(admin, app, watcher, shutdown).await })
        };
        let health_task = tokio::spawn(crate::health::supervise(app.clone(), shutdown.clone()));
        let sweeper = {
            let (app, stop) = (app.clone(), shutdown.clone());
            tokio::spawn(async move {
                // Idle per-IP limiter state goes, so memory follows the active clients only;
                // stale pooled replica connections close.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {
                            app.limits.sweep();
                            // Pooled replica connections past their use-by time hold
                            // descriptors for nothing.
                            let idle = app.snapshot().config.upstream.pool_idle_timeout;
                            app.endpoints.close_idle(Some(idle));
                        }
                    }
                }
            })
        };
        if let Some(shared) = app.shared.clone() {
            tokio::spawn(shared.watch(shutdown.clone()));
        }
        tokio::spawn(crate::control::watch(app.clone(), shutdown.clone()));
        tokio::spawn(crate::canary::guard::run(app.clone(), shutdown.clone()));
        shutdown.cancelled().await;
        app.start_draining();
        let _ = health_task.await;
        let _ = sweeper.await;
        let _ = data_task.await;
        let _ = admin_task.await;
        let drain_timeout = app.snapshot().config.server.drain_timeout;
        let open = graceful.count() + conns.len();
        tracing::info!(connections = open, timeout = ?drain_timeout, "draining");
        // Both accept loops have ended, so this is the last handle.
        let Ok(graceful) = Arc::try_unwrap(graceful) else {
            anyhow::bail!("graceful shutdown handle still shared");
        };
        conns.close();
        let all_done = async {
            tokio::join!(graceful.shutdown(), conns.wait());
        };
        match tokio::time::timeout(drain_timeout, all_done).await {
            Ok(()) => tracing::info!("drained; all requests finished"),
            Err(_) => tracing::warn!("drain timeout reached; closing remaining connections"),
        }
        Ok(())
    }
}

/// The HTTP/2 connection preface (prior knowledge, h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection speaks HTTP/2 (prior knowledge) — read without consuming: the
/// bytes stay in the socket for hyper. `PRI ` decides: RFC 9113 §3.4 reserves that method for
/// the preface, and hyper's HTTP/2 server checks the rest. `None` if the client closed first.
async fn is_h2_preface(stream: &TcpStream) -> Option<bool> {
    const DECIDES: usize = 4;
    let mut buf = [0u8; DECIDES];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == DECIDES {
            return Some(true);
        }
        // "P", "PR" or "PRI" and then a pause: peeking again at once would spin (the bytes
        // keep the socket readable), so back off, bounded by the caller's deadline.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

async fn accept_data(
    listener: TcpListener,
    app: Arc<AppState>,
    conns: TaskTracker,
    shutdown: CancellationToken,
) {
    let descriptors = app.descriptors.clone();
    let cap = || app.client_cap();
    loop {
        // A client is accepted only with room for it and its replica connection
        // (`crate::descriptors`); until then it waits in the listen queue.
        if !descriptors.has_room(cap()) {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = descriptors.room(cap) => {}
            }
        }
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors: idle pooled replica connections hold some. Closed,
                    // the client can be taken at once; with none, back off instead of spinning.
                    if crate::descriptors::is_local_exhaustion(&e)
                        && app.endpoints.close_idle(None) > 0
                    {
                        continue;
                    }
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let slot = descriptors.admit();
        let _ = stream.set_nodelay(true);
        let ctx = Arc::new(ConnCtx {
            peer,
            flags: Arc::new(ConnFlags::default()),
            key: crate::auth::KeyMemo::default(),
        });
        let first_byte_timeout = app.snapshot().config.server.header_read_timeout;
        let stop = shutdown.clone();
        let app = app.clone();
        if let Some(tls) = &app.tls {
            let acceptor = tls.acceptor();
            conns.spawn(crate::clock::per_poll(async move {
                let _slot = slot;
                // The handshake has the header deadline too: a silent client is not kept, and
                // one still shaking hands when draining starts does not hold the drain up.
                let handshake = tokio::time::timeout(first_byte_timeout, acceptor.accept(stream));
                let tls_stream = tokio::select! {
                    r = handshake => match r {
                        Ok(Ok(s)) => s,
                        _ => return,
                    },
                    _ = stop.cancelled() => return,
                };
                if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    crate::h2::serve(TokioIo::new(tls_stream), app, ctx, stop).await;
                } else {
                    crate::h1::serve(Tls::new(tls_stream), app, ctx, stop).await;
                }
            }));
            continue;
        }
        conns.spawn(crate::clock::per_poll(async move {
            // Its place under the cap is given back when the connection ends.
            let _slot = slot;
            // A connection that sends nothing before the header deadline is closed unanswered
            // (and one still silent when draining starts does not hold the drain up).
            let sniff = tokio::time::timeout(first_byte_timeout, is_h2_preface(&stream));
            let sniffed = tokio::select! {
                r = sniff => r,
                _ = stop.cancelled() => return,
            };
            match sniffed {
                Ok(Some(true)) => {
                    crate::h2::serve(TokioIo::new(HyperTcp(stream)), app, ctx, stop).await;
                }
                Ok(Some(false)) => crate::h1::serve(stream, app, ctx, stop).await,
                _ => {}
            }
        }));
    }
}

/// The request path as a hyper service, for the connections hyper serves (HTTP/2, with or
/// without TLS); HTTP/1.1 calls `proxy::handle` from `crate::h1` directly.
pub(crate) fn hyper_service(
    app: Arc<AppState>,
    ctx: Arc<ConnCtx>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = http::Response<proxy::body::ResponseBody>,
    Error = Infallible,
    Future = impl std::future::Future<
        Output = Result<http::Response<proxy::body::ResponseBody>, Infallible>,
    > + Send,
> + Clone
       + Send {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let (app, ctx) = (app.clone(), ctx.clone());
        let req = proxy::ClientRequest::from(req.map(ClientBody::Hyper));
        async move { Ok::<_, Infallible>(proxy::handle(app, ctx, req).await.into_response()) }
    })
}

async fn accept_admin(
    listener: TcpListener,
    app: Arc<AppState>,
    graceful: Arc<GracefulShutdown>,
    shutdown: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let stream: TcpStream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(crate::admin::handle(&app, req).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_h2_preface_is_recognised_even_in_pieces_and_left_unread() {
        let (mut c, s) = pair().await;
        c.write_all(&H2_PREFACE[..2]).await.unwrap();
        let sniff = tokio::spawn(async move {
            let h2 = is_h2_preface(&s).await;
            (h2, s)
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        c.write_all(&H2_PREFACE[2..]).await.unwrap();
        let (h2, s) = sniff.await.unwrap();
        assert_eq!(h2, Some(true));
        // Still there for hyper.
        let mut buf = [0u8; 64];
        assert_eq!(s.peek(&mut buf).await.unwrap(), H2_PREFACE.len());

        let (mut c, s) = pair().await;
        c.write_all(b"PRIX / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(is_h2_preface(&s).await, Some(false));

        let (mut c, s) = pair().await;
        c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\n")
            .await
            .unwrap();
        assert_eq!(is_h2_preface(&s).await, Some(false));

        let (c, s) = pair().await;
        drop(c);
        assert_eq!(is_h2_preface(&s).await, None);
    }
}
