//! Hot reload: the config file is watched (its directory, since editors save by renaming over the
//! file), and SIGHUP or `POST /api/v1/reload` ask for a reload too.
//!
//! One task owns the running config. A reload parses and validates the whole new file first; an
//! invalid file leaves everything running as it was and its problems are kept for the API. A valid
//! one is applied as a diff by the router: unchanged routes are not touched.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};

use super::Config;
use crate::listen::Rebind;
use crate::router::{Changes, RouterHandle};

/// Quiet time after the last file event before reloading: editors write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The listeners a reload may move when `[server]` names other addresses.
pub struct Listeners {
    pub rtsp: Rebind,
    pub http: Rebind,
}

/// What the API shows of the running config.
#[derive(Clone, Debug)]
pub struct ConfigStatus {
    pub path: PathBuf,
    /// Counts applied configs, starting at 1 for the one the server started with.
    pub version: u64,
    pub loaded_at: SystemTime,
    pub routes: Vec<String>,
    /// Why the last reload was refused, if it was.
    pub last_error: Option<String>,
    pub reloads: u64,
}

/// How one reload went.
#[derive(Debug)]
pub enum ReloadOutcome {
    Applied(Changes),
    /// The file says what is already running.
    Unchanged,
    Refused(String),
}

struct Request {
    trigger: &'static str,
    done: Option<oneshot::Sender<ReloadOutcome>>,
}

/// The way to ask for reloads and to read the running config's status.
#[derive(Clone)]
pub struct ReloadHandle {
    requests: mpsc::Sender<Request>,
    status: Arc<RwLock<ConfigStatus>>,
}

impl ReloadHandle {
    /// Starts the reload task for `path`, whose routes `running` the router already serves, and
    /// the file watcher and SIGHUP listener that feed it.
    pub fn start(
        path: &Path,
        running: Config,
        router: RouterHandle,
        listeners: Listeners,
    ) -> ReloadHandle {
        let status = Arc::new(RwLock::new(ConfigStatus {
            path: path.to_owned(),
            version: 1,
            loaded_at: SystemTime::now(),
            routes: running.routes.keys().cloned().collect(),
            last_error: None,
            reloads: 0,
        }));
        let (requests, inbox) = mpsc::channel(16);
        let reloader = Reloader {
            path: path.to_owned(),
            running,
            router,
            listeners,
            status: Arc::clone(&status),
        };
        tokio::spawn(reloader.run(inbox));
        watch_file(path, requests.clone());
        listen_for_sighup(requests.clone());
        ReloadHandle { requests, status }
    }

    /// Reloads now and says how it went.
    pub async fn reload(&self, trigger: &'static str) -> ReloadOutcome {
        let (done, outcome) = oneshot::channel();
        let request = Request {
            trigger,
            done: Some(done),
        };
        if self.requests.send(request).await.is_err() {
            return ReloadOutcome::Refused("the server is shutting down".into());
        }
        outcome
            .await
            .unwrap_or_else(|_| ReloadOutcome::Refused("the server is shutting down".into()))
    }

    pub fn status(&self) -> ConfigStatus {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct Reloader {
    path: PathBuf,
    running: Config,
    router: RouterHandle,
    listeners: Listeners,
    status: Arc<RwLock<ConfigStatus>>,
}

impl Reloader {
    async fn run(mut self, mut inbox: mpsc::Receiver<Request>) {
        while let Some(request) = inbox.recv().await {
            let outcome = self.reload(request.trigger).await;
            if let Some(done) = request.done {
                let _ = done.send(outcome);
            }
        }
    }

    async fn reload(&mut self, trigger: &'static str) -> ReloadOutcome {
        let started = Instant::now();
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
        let mut config = match loaded {
            Ok(Ok(config)) => config,
            Ok(Err(err)) => return self.refuse(trigger, err.to_string()),
            Err(err) => return self.refuse(trigger, format!("the config loader failed: {err}")),
        };
        if config == self.running {
            return ReloadOutcome::Unchanged;
        }
        self.move_listeners(&mut config).await;
        self.router.set_server_access(config.server.access.clone());
        self.router.set_users(config.users.clone());
        let changes = self.router.apply(config.routes.clone()).await;
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        status.version += 1;
        status.reloads += 1;
        status.loaded_at = SystemTime::now();
        status.routes = config.routes.keys().cloned().collect();
        status.last_error = None;
        drop(status);
        tracing::info!(
            trigger,
            added = ?changes.added,
            changed = ?changes.changed,
            removed = ?changes.removed,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "config reloaded"
        );
        self.running = config;
        ReloadOutcome::Applied(changes)
    }

    /// Moves the RTSP and HTTP listeners to new addresses. One that cannot be bound stays where it
    /// is (and the running config keeps saying so); the UDP ports and limits wait for a restart.
    async fn move_listeners(&mut self, config: &mut Config) {
        let (old, new) = (&self.running.server, &mut config.server);
        for (what, rebind, old_addr, new_addr) in [
            ("RTSP", &self.listeners.rtsp, old.rtsp, &mut new.rtsp),
            ("HTTP", &self.listeners.http, old.http, &mut new.http),
        ] {
            if old_addr == *new_addr {
                continue;
            }
            match rebind.to(*new_addr).await {
                Ok(bound) => tracing::info!(
                    "{what} server listening on {}://{bound}/",
                    what.to_ascii_lowercase()
                ),
                Err(err) => {
                    tracing::error!(
                        "cannot move the {what} server to {new_addr}: {err}; it stays on {old_addr}"
                    );
                    *new_addr = old_addr;
                }
            }
        }
        let (old, new) = (&self.running.server, &mut config.server);
        let restart_only = |s: &super::ServerConfig| {
            (
                s.rtp_ports,
                s.webrtc_udp,
                s.max_clients,
                s.max_bandwidth_kbps,
            )
        };
        if restart_only(old) != restart_only(new) {
            tracing::warn!("[server] rtp_ports, webrtc_udp and limits apply at the next restart");
            // The running config says what really runs.
            new.rtp_ports = old.rtp_ports;
            new.webrtc_udp = old.webrtc_udp;
            new.max_clients = old.max_clients;
            new.max_bandwidth_kbps = old.max_bandwidth_kbps;
        }
    }

    fn refuse(&mut self, trigger: &'static str, why: String) -> ReloadOutcome {
        tracing::error!(
            trigger,
            "config reload refused; the running config stays:\n{why}"
        );
        self.status
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(why.clone());
        ReloadOutcome::Refused(why)
    }
}

/// Watches the config file's directory and asks for a reload once events about the file stop.
fn watch_file(path: &Path, requests: mpsc::Sender<Request>) {
    let directory = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name().map(ToOwned::to_owned) else {
        return;
    };
    let (events, mut inbox) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let about_config =
            event.is_ok_and(|e| e.paths.iter().any(|p| p.file_name() == Some(&name)));
        if about_config {
            let _ = events.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!(
                "cannot watch {}: {err}; use SIGHUP or POST /api/v1/reload",
                directory.display()
            );
            return;
        }
    };
    if let Err(err) = watcher.watch(&directory, RecursiveMode::NonRecursive) {
        tracing::warn!(
            "cannot watch {}: {err}; use SIGHUP or POST /api/v1/reload",
            directory.display()
        );
        return;
    }
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        while inbox.recv().await.is_some() {
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, inbox.recv()).await {}
            let request = Request {
                trigger: "file",
                done: None,
            };
            if requests.send(request).await.is_err() {
                return;
            }
        }
    });
}

fn listen_for_sighup(requests: mpsc::Sender<Request>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let request = Request {
                trigger: "SIGHUP",
                done: None,
            };
            if requests.send(request).await.is_err() {
                return;
            }
        }
    });
}
