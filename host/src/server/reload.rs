//! Hot reload: the config file is watched (its directory, since editors save by renaming over the
//! file), and SIGHUP or `POST /api/v1/reload` ask for a reload too.
//!
//! One task owns the running config. A reload parses and validates the whole new file first; an
//! invalid file leaves everything running as it was and its problems are kept for the API. A valid
//! one is applied as a diff by the router: unchanged routes are not touched.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::auth::Auth;
use crate::config::{self, Config, ServerConfig, WasmSource};
use crate::control::{ConfigStatus, ReloadHandle, ReloadOutcome, ReloadRequest};
use crate::listen::Rebind;
use crate::plugins::{Loader, Plugins};
use crate::router::RouterHandle;

/// Quiet time after the last file event before reloading: editors write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The listeners a reload may move when `[server]` names other addresses.
pub struct Listeners {
    pub rtsp: Rebind,
    pub http: Rebind,
}

/// Starts the reload task for `path`, whose routes `running` the router already serves, and the
/// file watcher and SIGHUP listener that feed it.
pub fn start(
    path: &Path,
    running: Config,
    (loader, plugins): (Loader, Plugins),
    (router, auth): (RouterHandle, Auth),
    listeners: Listeners,
) -> ReloadHandle {
    let (handle, inbox, status) = ReloadHandle::new(ConfigStatus {
        path: path.to_owned(),
        version: 1,
        loaded_at: SystemTime::now(),
        routes: running.routes.keys().cloned().collect(),
        patterns: running.patterns.keys().cloned().collect(),
        last_error: None,
        reloads: 0,
    });
    let watch = watch_files(path, handle.requests());
    if let Some(watch) = &watch {
        watch.follow(plugin_files(&running));
    }
    let reloader = Reloader {
        path: path.to_owned(),
        running,
        loader,
        plugins,
        watch,
        router,
        auth,
        listeners,
        status,
    };
    tokio::spawn(reloader.run(inbox));
    listen_for_sighup(handle.requests());
    handle
}

struct Reloader {
    path: PathBuf,
    running: Config,
    loader: Loader,
    plugins: Plugins,
    watch: Option<Watch>,
    router: RouterHandle,
    auth: Auth,
    listeners: Listeners,
    status: Arc<RwLock<ConfigStatus>>,
}

impl Reloader {
    async fn run(mut self, mut inbox: mpsc::Receiver<ReloadRequest>) {
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
        let (loader, running) = (self.loader.clone(), self.plugins.clone());
        // Compiling plugins is CPU work: off the async runtime.
        let loaded = tokio::task::spawn_blocking(move || {
            let config = Config::load(&path).map_err(|err| err.to_string())?;
            let plugins = loader
                .load_all(&config, &running)
                .map_err(|problems| config::display_problems(&problems))?;
            Ok::<_, String>((config, plugins))
        })
        .await;
        let (mut config, plugins) = match loaded {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(why)) => return self.refuse(trigger, why),
            Err(err) => return self.refuse(trigger, format!("the config loader failed: {err}")),
        };
        if let Some(watch) = &self.watch {
            watch.follow(plugin_files(&config));
        }
        let same_plugins = plugins.len() == self.plugins.len()
            && plugins
                .iter()
                .zip(&self.plugins)
                .all(|((a, pa), (b, pb))| a == b && pa.same_as(pb));
        if config == self.running && same_plugins {
            return ReloadOutcome::Unchanged;
        }
        self.move_listeners(&mut config).await;
        self.auth.update(
            config.server.access.clone(),
            config.users.clone(),
            config.server.admins.clone(),
        );
        self.loader.events().set_webhooks(&config);
        let changes = self
            .router
            .apply(
                config.routes.clone(),
                config.patterns.clone(),
                plugins.clone(),
            )
            .await;
        let swapped: Vec<&str> = plugins
            .iter()
            .filter(|(name, plugin)| {
                self.plugins
                    .get(*name)
                    .is_some_and(|old| !old.same_as(plugin))
            })
            .map(|(name, _)| name.as_str())
            .collect();
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        status.version += 1;
        status.reloads += 1;
        status.loaded_at = SystemTime::now();
        status.routes = config.routes.keys().cloned().collect();
        status.patterns = config.patterns.keys().cloned().collect();
        status.last_error = None;
        drop(status);
        tracing::info!(
            trigger,
            added = ?changes.added,
            changed = ?changes.changed,
            removed = ?changes.removed,
            plugins_replaced = ?swapped,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "config reloaded"
        );
        self.running = config;
        self.plugins = plugins;
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
        let restart_only = |s: &ServerConfig| {
            (
                s.rtp_ports,
                s.webrtc_udp,
                s.webrtc_tcp,
                s.webrtc_public_ip,
                s.max_clients,
                s.max_bandwidth_kbps,
                s.max_connections,
                s.max_connections_per_address,
                s.connection_rate_per_address,
                s.tcp_send_buffer,
                s.budget,
                s.state_dir.clone(),
            )
        };
        if restart_only(old) != restart_only(new) {
            tracing::warn!(
                "[server] rtp_ports, webrtc_udp, webrtc_tcp, webrtc_public_ip, state_dir and limits apply at the next restart"
            );
            // The running config says what really runs.
            new.rtp_ports = old.rtp_ports;
            new.webrtc_udp = old.webrtc_udp;
            new.webrtc_tcp = old.webrtc_tcp;
            new.webrtc_public_ip = old.webrtc_public_ip;
            new.max_clients = old.max_clients;
            new.max_bandwidth_kbps = old.max_bandwidth_kbps;
            new.max_connections = old.max_connections;
            new.max_connections_per_address = old.max_connections_per_address;
            new.connection_rate_per_address = old.connection_rate_per_address;
            new.tcp_send_buffer = old.tcp_send_buffer;
            new.budget = old.budget;
            new.state_dir = old.state_dir.clone();
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

/// The component files of the plugins `config` loads from files.
fn plugin_files(config: &Config) -> Vec<PathBuf> {
    config
        .plugins
        .values()
        .filter_map(|plugin| match &plugin.wasm {
            WasmSource::File(path) => Some(path.clone()),
            WasmSource::Builtin(_) => None,
        })
        .collect()
}

/// The file watcher: the config file and the plugins' component files, each through its
/// directory (editors and build tools replace files by renaming over them).
struct Watch {
    watcher: Mutex<notify::RecommendedWatcher>,
    directories: Mutex<HashSet<PathBuf>>,
    /// File names whose events ask for a reload.
    names: Arc<RwLock<HashSet<OsString>>>,
}

impl Watch {
    /// Also follows `files` (already followed ones are skipped).
    fn follow(&self, files: Vec<PathBuf>) {
        for file in files {
            let Some(name) = file.file_name() else {
                continue;
            };
            let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
            names.insert(name.to_owned());
            // A file reached through a link in its own directory changes when that link is
            // swapped, not the file: a Kubernetes ConfigMap mounts `NAME -> ..data/NAME`, and
            // updates it by renaming a new `..data` link over the old one.
            if let Ok(target) = std::fs::read_link(&file)
                && target.is_relative()
                && let Some(std::path::Component::Normal(first)) = target.components().next()
            {
                names.insert(first.to_owned());
            }
            drop(names);
            self.watch_directory(&directory_of(&file));
        }
    }

    fn watch_directory(&self, directory: &Path) {
        let mut directories = self.directories.lock().unwrap_or_else(|p| p.into_inner());
        if directories.contains(directory) {
            return;
        }
        let mut watcher = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
        match watcher.watch(directory, RecursiveMode::NonRecursive) {
            Ok(()) => {
                directories.insert(directory.to_owned());
            }
            Err(err) => tracing::warn!(
                "cannot watch {}: {err}; use SIGHUP or POST /api/v1/reload",
                directory.display()
            ),
        }
    }
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Starts watching the config file; a reload is asked for once events about a followed file stop.
fn watch_files(path: &Path, requests: mpsc::Sender<ReloadRequest>) -> Option<Watch> {
    let names: Arc<RwLock<HashSet<OsString>>> = Arc::default();
    let (events, mut inbox) = mpsc::unbounded_channel();
    let followed = Arc::clone(&names);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let names = followed.read().unwrap_or_else(|p| p.into_inner());
        // Reading a file is an event too (notify watches opens): the reload's own reading of the
        // config and the plugins must not ask for the next reload.
        let about_followed = event.is_ok_and(|e| {
            !e.kind.is_access()
                && e.paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| names.contains(n)))
        });
        if about_followed {
            let _ = events.send(());
        }
    });
    let watcher = match watcher {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!("cannot watch files: {err}; use SIGHUP or POST /api/v1/reload");
            return None;
        }
    };
    let watch = Watch {
        watcher: Mutex::new(watcher),
        directories: Mutex::default(),
        names,
    };
    watch.follow(vec![path.to_owned()]);
    tokio::spawn(async move {
        while inbox.recv().await.is_some() {
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, inbox.recv()).await {}
            let request = ReloadRequest {
                trigger: "file",
                done: None,
            };
            if requests.send(request).await.is_err() {
                return;
            }
        }
    });
    Some(watch)
}

fn listen_for_sighup(requests: mpsc::Sender<ReloadRequest>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let request = ReloadRequest {
                trigger: "SIGHUP",
                done: None,
            };
            if requests.send(request).await.is_err() {
                return;
            }
        }
    });
}
