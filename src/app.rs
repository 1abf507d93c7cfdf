//! Wiring: [`Application::build`] opens the store, binds the listener and assembles the router;
//! [`Application::run_until`] serves until a shutdown signal, lets in-flight requests finish,
//! then waits for the log writer to commit what it holds and the projector to drain it. Tests bind `127.0.0.1:0` and use `port()`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use secrecy::SecretString;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::graph::GraphClient;
use crate::store::{Store, StoreError, WriterTask};
use crate::webhook::verify::SignatureVerifier;

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    verifier: SignatureVerifier,
    verify_token: SecretString,
    api_token: SecretString,
    store: Store,
    graph: GraphClient,
    max_body_bytes: usize,
    admission: crate::webhook::admission::Admission,
    request_timeout: std::time::Duration,
    ceiling_mode: bool,
    links: crate::http::links::Links,
    min_body_rate: usize,
    keep_raw: crate::config::KeepRaw,
    max_projection_lag: u64,
    hold_back: Option<crate::config::HoldBack>,
    forwarding: Arc<crate::forward::Forwarding>,
    capi: crate::config::CapiSettings,
    erasures: crate::leads::eraser::Erasures,
}

impl AppState {
    pub fn verifier(&self) -> &SignatureVerifier {
        &self.0.verifier
    }
    pub fn verify_token(&self) -> &SecretString {
        &self.0.verify_token
    }
    pub fn api_token(&self) -> &SecretString {
        &self.0.api_token
    }
    pub fn store(&self) -> &Store {
        &self.0.store
    }
    pub fn graph(&self) -> &GraphClient {
        &self.0.graph
    }
    pub fn max_body_bytes(&self) -> usize {
        self.0.max_body_bytes
    }
    pub fn admission(&self) -> &crate::webhook::admission::Admission {
        &self.0.admission
    }
    pub fn request_timeout(&self) -> std::time::Duration {
        self.0.request_timeout
    }
    pub fn ceiling_mode(&self) -> bool {
        self.0.ceiling_mode
    }
    pub fn links(&self) -> &crate::http::links::Links {
        &self.0.links
    }
    pub fn min_body_rate(&self) -> usize {
        self.0.min_body_rate
    }
    pub fn keep_raw(&self) -> crate::config::KeepRaw {
        self.0.keep_raw
    }
    pub fn max_projection_lag(&self) -> u64 {
        self.0.max_projection_lag
    }
    pub fn hold_back(&self) -> Option<crate::config::HoldBack> {
        self.0.hold_back
    }
    pub fn forwarding(&self) -> &crate::forward::Forwarding {
        &self.0.forwarding
    }
    pub fn capi(&self) -> &crate::config::CapiSettings {
        &self.0.capi
    }
    pub fn erasures(&self) -> &crate::leads::eraser::Erasures {
        &self.0.erasures
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("graph client: {0}")]
    Graph(#[from] reqwest::Error),
    #[error(transparent)]
    Forward(#[from] crate::forward::DispatchError),
}

pub struct Application {
    listener: TcpListener,
    /// `GET /metrics`, on its own address.
    metrics: Option<(TcpListener, metrics_exporter_prometheus::PrometheusHandle)>,
    router: axum::Router,
    store: Store,
    writer: WriterTask,
    dispatcher: crate::forward::Dispatcher,
    conversions: crate::capi::Sender,
    eraser: crate::leads::eraser::Eraser,
    header_read_timeout: Duration,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let (store, writer) = crate::store::open(
            &settings.database,
            &settings.ingest,
            &settings.retention,
            crate::store::outbox::Routes::new(
                &settings.forwarding,
                settings.capi.auto_lead_submitted,
            ),
        )
        .await?;
        let graph = GraphClient::new(&settings.graph)?;
        let forwarding = Arc::new(crate::forward::Forwarding::new(&settings.forwarding));
        let dispatcher = crate::forward::Dispatcher::start(&forwarding, store.clone())?;
        let conversions = crate::capi::Sender::start(
            &settings.capi,
            &settings.graph,
            &settings.forwarding.retry_schedule,
            store.clone(),
        )?;
        let erasures = crate::leads::eraser::Erasures::default();
        let eraser = crate::leads::eraser::Eraser::start(store.clone(), erasures.clone());
        let state = AppState(Arc::new(Inner {
            verifier: SignatureVerifier::new(&settings.webhook.app_secrets),
            verify_token: settings.webhook.verify_token.clone(),
            api_token: settings.api.token.clone(),
            store,
            graph,
            max_body_bytes: settings.server.max_body_bytes,
            admission: crate::webhook::admission::Admission::new(
                settings.ingest.max_in_flight,
                settings.ingest.max_in_flight_bytes,
                settings.server.max_body_bytes,
                settings.server.min_body_rate,
            ),
            request_timeout: std::time::Duration::from_secs(settings.server.request_timeout_secs),
            ceiling_mode: settings.ingest.ceiling_mode,
            links: crate::http::links::Links::new(&settings.server),
            min_body_rate: settings.server.min_body_rate,
            keep_raw: settings.retention.keep_raw,
            max_projection_lag: settings.ingest.max_projection_lag,
            hold_back: settings.ingest.hold_back(),
            forwarding,
            capi: settings.capi.clone(),
            erasures,
        }));
        let addr = settings.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let metrics = match settings.metrics.listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::Bind { addr, source })?;
                let handle = crate::monitor::handle();
                if handle.is_none() {
                    tracing::warn!("another metrics recorder is installed: /metrics is not served");
                }
                handle.map(|handle| (listener, handle))
            }
            None => None,
        };
        Ok(Self {
            listener,
            metrics,
            store: state.store().clone(),
            router: crate::http::router(state),
            writer,
            dispatcher,
            conversions,
            eraser,
            header_read_timeout: Duration::from_secs(settings.server.header_read_timeout_secs),
        })
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Where `/metrics` is served, if `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then drains: in-flight requests finish (up to
    /// [`crate::http::SHUTDOWN_GRACE`]), the log writer commits what was queued, and the projector drains it.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Application {
            listener,
            metrics,
            router,
            store,
            writer,
            dispatcher,
            conversions,
            eraser,
            header_read_timeout,
        } = self;
        let stop = tokio_util::sync::CancellationToken::new();
        let metrics_task = metrics.map(|(listener, handle)| {
            tokio::spawn(crate::monitor::serve(
                listener,
                handle,
                stop.clone().cancelled_owned(),
            ))
        });
        let result = serve(listener, router, header_read_timeout, shutdown).await;
        stop.cancel();
        if let Some(task) = metrics_task {
            if let Ok(Err(err)) = task.await {
                tracing::warn!(%err, "the metrics listener failed");
            }
        }
        // Forwarding and conversions stop first (what they sent is recorded); the log writer
        // and the projector then drain, and what they enqueue is sent after the next start.
        dispatcher.shutdown().await;
        conversions.shutdown().await;
        // An erasure under way stops between two pages of its search and resumes after the
        // next start.
        eraser.shutdown().await;
        writer.shutdown().await;
        store.close().await;
        tracing::info!("stopped");
        result
    }
}

/// The accept loop. Like `axum::serve`, plus what it lacks: a deadline for a request's headers
/// (a client that trickles them is cut off) and a bounded drain on shutdown.
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => {}
        // A client that keeps its connection busy must not hold the exit hostage.
        _ = tokio::time::sleep(crate::http::SHUTDOWN_GRACE) => {
            tracing::warn!("grace period over: closing remaining connections");
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
