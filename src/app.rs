//! Wiring: binds the listeners, builds the config generation, serves until SIGTERM/SIGINT,
//! reloads on SIGHUP, and drains.
//!
//! Shutdown order (Kubernetes sends SIGTERM to a native sidecar after the app containers have
//! exited): `/readyz` turns 503, the app listener stops accepting, in-flight requests finish
//! (bounded by `drain_timeout`), then the admin listener closes and the process exits 0.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{serve_admin, Readiness};
use crate::capture::CaptureRing;
use crate::client::Clients;
use crate::config::Limits;
use crate::config::{self, Config};
use crate::error::ProxyError;
pub use crate::error::StartError;
use crate::metrics::Metrics;
use crate::proxy::{Generation, Proxy, RequestIds};
use crate::server::{serve_checked, ListenerLimits, Refusals};
use crate::webhook::receiver::WebhookServer;

/// A running Outpost: its bound addresses and the handles to reload and stop it.
pub struct App {
    pub app_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Metrics,
    pub ready: Readiness,
    config_path: PathBuf,
    state: Arc<ArcSwap<Generation>>,
    clients: Arc<Clients>,
    stop: watch::Sender<bool>,
    app_task: JoinHandle<()>,
    admin_stop: watch::Sender<bool>,
    admin_task: JoinHandle<()>,
    /// Bound when the config has `webhooks` (at start, or by the reload that adds the first).
    webhooks: Mutex<Option<WebhookServer>>,
    /// The capture ring and the inspector's address, when the config had `capture:` at start.
    capture: Option<Arc<CaptureRing>>,
    pub inspect_addr: Option<SocketAddr>,
    replayer: Arc<Replayer>,
}

/// The inspector's Replay button: sends through the webhook receiver of the moment (bound at
/// start, or by the reload that adds the first webhook).
#[derive(Default)]
struct Replayer(Mutex<Option<Arc<crate::webhook::receiver::Receiver>>>);

impl Replayer {
    fn set(&self, server: Option<&WebhookServer>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = server.map(|s| s.receiver.clone());
    }
}

impl crate::capture::inspector::WebhookReplayer for Replayer {
    fn replay<'a>(
        &'a self,
        exchange: &'a crate::capture::Exchange,
    ) -> futures_util::future::BoxFuture<'a, Result<u16, String>> {
        let receiver = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(async move {
            match receiver {
                Some(receiver) => receiver.replay(exchange).await,
                None => Err("no webhook receiver is running".into()),
            }
        })
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Longest a reload may spend reading the config and its secret files.
pub const RELOAD_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Tell the metrics which upstreams and webhooks are configured now.
fn retain_metrics(metrics: &Metrics, config: &Config) {
    metrics.retain(
        config.upstreams.iter().map(|u| u.name.as_str()),
        config.webhooks.iter().map(|w| w.name.as_str()),
    );
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

impl App {
    /// Bind every listener and start serving. Ready once this returns.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let metrics = Metrics::new();
        let clients = Arc::new(Clients::default());
        let config = Arc::new(config);
        let generation = Generation::build(config.clone(), &clients, &metrics, None)
            .map_err(StartError::Build)?;
        let state = Arc::new(ArcSwap::from_pointee(generation));
        let ready = Readiness::default();

        let app_listener = bind("listen", config.listen).await?;
        let admin_listener = bind("admin_listen", config.admin_listen).await?;
        let app_addr = app_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: "listen",
                addr: config.listen,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: "admin_listen",
                addr: config.admin_listen,
                source,
            })?;

        let (stop, stop_rx) = watch::channel(false);
        let replayer = Arc::new(Replayer::default());
        // Capture: off unless `capture:` is set; the inspector only on its loopback listener.
        let (capture, inspect_addr) = match &config.capture {
            Some(settings) => {
                let ring = CaptureRing::new(settings.clone());
                let secrets = config.secret_values();
                ring.set_secrets(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
                let listener = bind("inspect_listen", config.inspect_listen).await?;
                let addr = listener.local_addr().map_err(|source| StartError::Bind {
                    what: "inspect_listen",
                    addr: config.inspect_listen,
                    source,
                })?;
                let inspector = Arc::new(
                    crate::capture::inspector::Inspector::new(ring.clone())
                        .with_replayer(replayer.clone()),
                );
                tokio::spawn(crate::capture::inspector::serve(
                    listener,
                    inspector,
                    stopped(stop.subscribe()),
                ));
                tracing::info!(inspect = %addr, "capture on: the inspector is served");
                (Some(ring), Some(addr))
            }
            None => (None, None),
        };
        // Bound before anything is spawned, so a bind failure leaves nothing running.
        let webhooks = WebhookServer::start(
            &config,
            &metrics,
            capture.clone(),
            stopped(stop.subscribe()),
        )
        .await?;
        replayer.set(webhooks.as_ref());
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let proxy = Proxy::new(state.clone(), Arc::new(RequestIds::default()))
            .with_capture(capture.clone());
        let app_task = tokio::spawn(serve_app(
            app_listener,
            proxy,
            config.limits.clone(),
            config.drain_timeout,
            stopped(stop_rx),
        ));
        let admin_task = tokio::spawn(serve_admin(
            admin_listener,
            metrics.clone(),
            ready.clone(),
            stopped(admin_stop_rx),
        ));
        retain_metrics(&metrics, &config);
        let upkeep = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
                crate::telemetry::warn_if_dropped();
            }
        });

        ready.set(true);
        tracing::info!(listen = %app_addr, admin = %admin_addr, upstreams = config.upstreams.len(), "outpost ready");
        Ok(App {
            app_addr,
            admin_addr,
            metrics,
            ready,
            config_path: config.path.clone(),
            state,
            clients,
            stop,
            app_task,
            admin_stop,
            admin_task,
            webhooks: Mutex::new(webhooks),
            capture,
            inspect_addr,
            replayer,
        })
    }

    /// The webhook listener's address, once bound.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhooks().as_ref().map(|w| w.addr)
    }

    fn webhooks(&self) -> std::sync::MutexGuard<'_, Option<WebhookServer>> {
        self.webhooks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The config now serving.
    pub fn config(&self) -> Arc<Config> {
        self.state.load().config.clone()
    }

    /// Swap in a new config atomically; requests in flight finish on the old one.
    pub fn apply(&self, config: Config) -> Result<(), String> {
        let previous = self.state.load();
        let generation = Generation::build(
            Arc::new(config),
            &self.clients,
            &self.metrics,
            Some(&previous),
        )?;
        let mut webhooks = self.webhooks();
        match &*webhooks {
            Some(server) => server.apply(&generation.config)?,
            None if !generation.config.webhooks.is_empty() => {
                // The first webhook: bind `webhook_listen` now (a failure fails the reload).
                let server = WebhookServer::start_now(
                    &generation.config,
                    &self.metrics,
                    self.capture.clone(),
                    stopped(self.stop.subscribe()),
                )
                .map_err(|e| e.to_string())?;
                self.replayer.set(Some(&server));
                *webhooks = Some(server);
            }
            None => {}
        }
        drop(webhooks);
        retain_metrics(&self.metrics, &generation.config);
        if let Some(ring) = &self.capture {
            // Rotated secrets are scrubbed from captures too.
            let secrets = generation.config.secret_values();
            ring.set_secrets(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
        }
        // The previous generation (and the state of upstreams this one dropped) is freed once
        // the last request still running on it finishes.
        self.state.store(Arc::new(generation));
        Ok(())
    }

    /// Re-read the config file (and its secrets). An invalid file keeps the old config serving.
    /// Reads on the calling thread; the signal loop uses [`App::reload_off_runtime`].
    pub fn reload(&self) -> bool {
        let result = config::load(&self.config_path)
            .map_err(|e| e.to_string())
            .and_then(|config| self.apply(config));
        self.reloaded(result)
    }

    /// [`App::reload`] with the file reads on a blocking thread and bounded by
    /// [`RELOAD_READ_TIMEOUT`]: a config or secret file that cannot be read in time (a stuck
    /// network filesystem) fails this reload and never wedges the runtime or the next reload.
    pub async fn reload_off_runtime(&self) -> bool {
        let path = self.config_path.clone();
        let read = tokio::task::spawn_blocking(move || config::load(&path));
        let result = match tokio::time::timeout(RELOAD_READ_TIMEOUT, read).await {
            Ok(Ok(loaded)) => loaded
                .map_err(|e| e.to_string())
                .and_then(|config| self.apply(config)),
            Ok(Err(_)) => Err("config reader failed".to_string()),
            Err(_) => Err(format!(
                "config and secret files were not read within {}",
                crate::config::units::format_duration(RELOAD_READ_TIMEOUT)
            )),
        };
        self.reloaded(result)
    }

    fn reloaded(&self, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => {
                self.metrics.config_reload(true);
                tracing::info!(file = %self.config_path.display(), "config reloaded");
                true
            }
            Err(error) => {
                self.metrics.config_reload(false);
                tracing::error!(file = %self.config_path.display(), %error, "config reload failed; keeping the previous config");
                false
            }
        }
    }

    /// Turn readiness off, stop accepting, drain in-flight requests, close the admin listener.
    pub async fn shutdown(self) {
        self.ready.set(false);
        let _ = self.stop.send(true);
        let _ = self.app_task.await;
        let webhooks = self
            .webhooks
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(webhooks) = webhooks {
            let _ = webhooks.task.await;
        }
        let _ = self.admin_stop.send(true);
        let _ = self.admin_task.await;
    }
}

impl Refusals for Proxy {
    fn refused(&self, error: &ProxyError) -> String {
        let status = error.status().as_u16();
        let request_id = Proxy::refused(self, status);
        tracing::info!(target: "outpost::access", request_id, upstream = crate::metrics::NO_UPSTREAM, status, error = %error, "connection refused before routing");
        request_id
    }
}

/// Serve the app listener until `shutdown` resolves, then let in-flight requests finish for
/// up to `drain_timeout`.
pub async fn serve_app(
    listener: TcpListener,
    proxy: Proxy,
    limits: Limits,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let handler = proxy.clone();
    serve_checked(
        listener,
        ListenerLimits::app(&limits),
        drain_timeout,
        "app",
        shutdown,
        Arc::new(proxy),
        // Called inside the service's future, so `serve`'s future is built in place.
        move |req| handler.clone().serve(req),
    )
    .await;
}

/// `outpost run`: serve until SIGTERM or SIGINT. Returns the process exit code.
pub async fn run(config_path: &Path) -> i32 {
    let path = config_path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
    let Ok(loaded) = loaded else {
        eprintln!("outpost: the config reader failed");
        return 1;
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            tracing::error!(file = %config_path.display(), "invalid config");
            return 1;
        }
    };
    let app = match App::start(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("outpost: {e}");
            return 1;
        }
    };
    wait_for_signals(&app).await;
    tracing::info!("shutting down: draining in-flight requests");
    app.shutdown().await;
    tracing::info!("stopped");
    0
}

#[cfg(unix)]
async fn wait_for_signals(app: &App) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    let watched = |app: &App| {
        let config = app.config();
        std::iter::once(app.config_path.clone())
            .chain(config.watched_files.clone())
            .collect::<Vec<_>>()
    };
    let mut watcher = crate::reload::Watcher::new(watched(app));
    let mut tick = tokio::time::interval(crate::reload::POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                app.reload_off_runtime().await;
                watcher.reset(watched(app));
            }
            _ = tick.tick() => {
                if watcher.changed() {
                    tracing::info!("config or secret file changed; reloading");
                    if app.reload_off_runtime().await {
                        watcher.reset(watched(app));
                    }
                }
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_app: &App) {
    let _ = tokio::signal::ctrl_c().await;
}
