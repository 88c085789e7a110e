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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::validate::MAX_HEADER_BYTES_CEILING;
use crate::config::Config;
use crate::error::{error_body, GatewayError};
use crate::framing::{write_and_close, ConnFlags, ScanIo, SharedTcp};
use crate::proxy::{self, ConnCtx};
use crate::state::AppState;

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
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        tracing::info!(addr = %addrs.data, workers, "data listener ready");
        tracing::info!(addr = %addrs.admin, "admin listener ready");
        let graceful = Arc::new(GracefulShutdown::new());
        let builder = data_builder(&app);
        let data_task = {
            let (app, shutdown) = (app.clone(), shutdown.clone());
            let watcher = graceful.clone();
            tokio::spawn(async move {
                accept_data(data, builder, app, watcher, shutdown).await;
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
                // Idle per-IP limiter state goes, so memory follows the active clients only.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => app.limits.sweep(),
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
        let open = graceful.count();
        tracing::info!(connections = open, timeout = ?drain_timeout, "draining");
        // Both accept loops have ended, so this is the last handle.
        let Ok(graceful) = Arc::try_unwrap(graceful) else {
            anyhow::bail!("graceful shutdown handle still shared");
        };
        match tokio::time::timeout(drain_timeout, graceful.shutdown()).await {
            Ok(()) => tracing::info!("drained; all requests finished"),
            Err(_) => tracing::warn!("drain timeout reached; closing remaining connections"),
        }
        Ok(())
    }
}

fn data_builder(app: &AppState) -> auto::Builder<TokioExecutor> {
    let server = app.snapshot().config.server.clone();
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        // Just above our own cap, so that our check (with an OpenAI-shaped 431) fires first.
        // hyper sizes a per-request index array by this; up to 100 it lives on the stack.
        .max_headers(server.max_headers + 10)
        .max_buf_size((MAX_HEADER_BYTES_CEILING as usize + 16 * 1024).max(8192 + 4096 * 100));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .max_header_list_size((MAX_HEADER_BYTES_CEILING + 16 * 1024) as u32);
    b
}

async fn accept_data(
    listener: TcpListener,
    builder: auto::Builder<TokioExecutor>,
    app: Arc<AppState>,
    graceful: Arc<GracefulShutdown>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let flags = Arc::new(ConnFlags::default());
        let ctx = Arc::new(ConnCtx {
            peer,
            flags: flags.clone(),
        });
        let first_byte_timeout = app.snapshot().config.server.header_read_timeout;
        let svc = {
            let app = app.clone();
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let (app, ctx) = (app.clone(), ctx.clone());
                async move { Ok::<_, Infallible>(proxy::handle(app, ctx, req).await) }
            })
        };
        if let Some(tls) = &app.tls {
            let acceptor = tls.acceptor();
            let (builder, graceful) = (builder.clone(), graceful.clone());
            tokio::spawn(async move {
                // The handshake has the header deadline too: a silent client is not kept.
                let Ok(Ok(tls_stream)) =
                    tokio::time::timeout(first_byte_timeout, acceptor.accept(stream)).await
                else {
                    return;
                };
                let io = TokioIo::new(ScanIo::new(tls_stream, flags.clone()));
                let conn = graceful.watch(builder.serve_connection(io, svc).into_owned());
                let _ = conn.await;
            });
            continue;
        }
        let stream = Arc::new(stream);
        let io = TokioIo::new(ScanIo::new(SharedTcp(stream.clone()), flags.clone()));
        let conn = graceful.watch(builder.serve_connection(io, svc).into_owned());
        tokio::spawn(async move {
            tokio::pin!(conn);
            // hyper-util reads the protocol preface (h1 or h2?) without any timeout, so a
            // connection that never sends a byte would be held forever.
            let result = tokio::select! {
                r = &mut conn => Some(r),
                _ = tokio::time::sleep(first_byte_timeout) => None,
            };
            let result = match result {
                Some(r) => r,
                None if !flags.any_read() => return,
                None => conn.await,
            };
            if let Err(e) = result {
                let timed_out = e
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(|e| e.is_timeout());
                if timed_out && flags.partial_request_pending() {
                    write_and_close(&stream, &request_timeout_response()).await;
                }
            }
        });
    }
}

fn request_timeout_response() -> Vec<u8> {
    let e = GatewayError::RequestTimeout;
    let body = error_body(&e.message(), e.error_type(), Some(e.code()));
    let mut out = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
         x-content-type-options: nosniff\r\nx-frame-options: DENY\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
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
