//! Start-up and reload: the server as a whole, wiring the modules together.
//!
//! [`Server::start`] loads the plugins, starts the router with the config's routes, binds the RTSP
//! and HTTP listeners and, with a config file, starts the reload task (`reload`) that applies the
//! file's changes to the router, the access rules and the listeners.

mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::auth::Auth;
use crate::config::{self, Config};
use crate::http::HttpServer;
use crate::router::RouterHandle;
use crate::rtsp::RtspServer;
use crate::sessions::{self, EndedBy, Sessions};
use crate::{listen, plugins, rtsp, webrtc};

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Rtsp(#[from] rtsp::Error),
    #[error(transparent)]
    Http(#[from] crate::http::Error),
    #[error(transparent)]
    WebRtc(#[from] webrtc::BindError),
    #[error("{}", config::display_problems(.0))]
    Plugins(Vec<config::Problem>),
    #[error("server.state_dir: cannot use {}: {source}", dir.display())]
    StateDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// How often the bandwidth meter measures what the server sends.
const BANDWIDTH_METER_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Measures what the server sends to readers of every route, for `max_bandwidth_kbps`.
async fn meter_bandwidth(router: RouterHandle, clients: Arc<sessions::ClientLimit>) {
    let mut interval = tokio::time::interval(BANDWIDTH_METER_PERIOD);
    let mut previous: Option<u64> = None;
    loop {
        interval.tick().await;
        let total: u64 = router
            .streams()
            .values()
            .map(|s| s.stats.bytes_out.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        if let Some(previous) = previous {
            // A removed route takes its counter with it: never a negative rate.
            let bits = total.saturating_sub(previous) * 8;
            clients.set_sending_kbps(bits / 1000 / BANDWIDTH_METER_PERIOD.as_secs().max(1));
        }
        previous = Some(total);
    }
}

/// How long ending publishers, flushing pipelines and saying goodbye to readers may take, each,
/// once a drain's grace period is over.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits until `done` or for `limit`, whichever comes first.
async fn until(limit: std::time::Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A server with its listeners bound and its routes started, ready to run.
pub struct Server {
    router: RouterHandle,
    rtsp: RtspServer,
    http: HttpServer,
    sessions: Sessions,
    clients: Arc<sessions::ClientLimit>,
    drain_grace: std::time::Duration,
}

impl Server {
    /// Starts the routes of `config` and binds its listeners. With the path of the config file,
    /// the server follows the file as it changes (and reloads on SIGHUP and `POST /api/v1/reload`).
    pub async fn start(config: Config, path: Option<&Path>) -> Result<Server, StartError> {
        let events = crate::events::Events::default();
        events.set_webhooks(&config);
        let mut loader = plugins::Loader::new(events.clone());
        if let Some(dir) = &config.server.state_dir {
            let store = plugins::StateStore::open(dir).map_err(|source| StartError::StateDir {
                dir: dir.clone(),
                source,
            })?;
            loader = loader.keeping_state_in(store);
        }
        let plugins = {
            let (loader, config) = (loader.clone(), config.clone());
            tokio::task::spawn_blocking(move || loader.load_all(&config, &plugins::Plugins::new()))
                .await
                .unwrap_or_else(|err| {
                    Err(vec![config::Problem::general(format!(
                        "the plugin loader failed: {err}"
                    ))])
                })
                .map_err(StartError::Plugins)?
        };
        let router = RouterHandle::start_with(config.server.budget);
        let auth = Auth::new(
            config.server.access.clone(),
            config.users.clone(),
            config.server.admins.clone(),
        );
        let sessions = Sessions::default();
        let clients =
            sessions::ClientLimit::new(config.server.max_clients, config.server.max_bandwidth_kbps);
        tokio::spawn(meter_bandwidth(router.clone(), Arc::clone(&clients)));
        let gate = listen::ConnectionGate::new(
            config.server.max_connections,
            config.server.max_connections_per_address,
            config.server.connection_rate_per_address,
            config.server.tcp_send_buffer,
        );
        let rtsp = RtspServer::bind(
            &config.server,
            router.clone(),
            auth.clone(),
            sessions.clone(),
            Arc::clone(&clients),
            Arc::clone(&gate),
        )
        .await?;
        let changes = router
            .apply(
                config.routes.clone(),
                config.patterns.clone(),
                plugins.clone(),
            )
            .await;
        tracing::info!(routes = ?changes.added, "routes started");
        let reload = Arc::new(OnceLock::new());
        let webrtc = webrtc::WebRtc::bind(
            router.clone(),
            sessions.clone(),
            Arc::clone(&clients),
            &config.server,
            Arc::clone(&gate),
        )
        .await?;
        let http = HttpServer::bind(
            config.server.http,
            crate::http::State {
                router: router.clone(),
                auth: auth.clone(),
                sessions: sessions.clone(),
                clients: Arc::clone(&clients),
                rtsp: rtsp.rebind(),
                reload: Arc::clone(&reload),
                webrtc,
                gate,
                snapshots: Default::default(),
                events,
                event_streams: Default::default(),
            },
        )
        .await?;
        if let Some(path) = path {
            let listeners = reload::Listeners {
                rtsp: rtsp.rebind(),
                http: http.rebind(),
            };
            let handle = reload::start(
                path,
                config.clone(),
                (loader, plugins),
                (router.clone(), auth),
                listeners,
            );
            let _ = reload.set(handle);
        }
        Ok(Server {
            router,
            rtsp,
            http,
            sessions,
            clients,
            drain_grace: config.server.drain_grace,
        })
    }

    /// Where the RTSP server listens.
    pub fn rtsp_addr(&self) -> std::io::Result<SocketAddr> {
        self.rtsp.local_addr()
    }

    /// Where the HTTP server listens.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The server's RTP and RTCP ports for UDP transport.
    pub fn rtp_ports(&self) -> (u16, u16) {
        self.rtsp.udp_ports()
    }

    /// Serves until `shutdown` completes, then drains: the RTSP listener closes, `/readyz` says
    /// not ready and no new session is admitted; sessions have `drain_grace_s` to end on their
    /// own; then publishers are ended, what they sent is flushed through the pipelines, and every
    /// route closes, which ends its readers with an RTCP BYE (RTSP) or a closed peer connection
    /// (WebRTC).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let http_stopped = {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        // HTTP keeps answering while the server drains: probes, the API and metrics.
        let http = tokio::spawn(self.http.run(http_stopped));
        let rtsp_listener = self.rtsp.rebind();
        self.rtsp.run(shutdown).await;
        rtsp_listener.close();
        self.clients.drain();
        let open = self.sessions.list().len();
        tracing::info!(
            sessions = open,
            grace = ?self.drain_grace,
            "draining: no new sessions; waiting for the open ones to end"
        );
        let sessions = &self.sessions;
        until(self.drain_grace, || sessions.list().is_empty()).await;
        // Publishers go first, so that what they already sent reaches the readers.
        for session in sessions.list() {
            if session.kind.is_publisher() {
                sessions.end(&session.id, EndedBy::Shutdown);
            }
        }
        until(CLOSE_TIMEOUT, || {
            !sessions.list().iter().any(|s| s.kind.is_publisher())
        })
        .await;
        self.router.shutdown().await;
        // The readers of the closed routes say goodbye.
        until(CLOSE_TIMEOUT, || sessions.list().is_empty()).await;
        let _ = stop.send(true);
        let _ = http.await;
        drop(stopped);
    }
}
