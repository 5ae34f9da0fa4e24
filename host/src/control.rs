//! The way the HTTP API reaches the running server's reloads: ask for one, read how the running
//! config stands. The task that carries reloads out is the server's (`server::reload`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use crate::router::Changes;

/// What the API shows of the running config.
#[derive(Clone, Debug)]
pub struct ConfigStatus {
    pub path: PathBuf,
    /// Counts applied configs, starting at 1 for the one the server started with.
    pub version: u64,
    pub loaded_at: SystemTime,
    pub routes: Vec<String>,
    /// The route patterns (`cam-*`), whose routes are made on demand.
    pub patterns: Vec<String>,
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

pub struct ReloadRequest {
    pub trigger: &'static str,
    pub done: Option<oneshot::Sender<ReloadOutcome>>,
}

/// The way to ask for reloads and to read the running config's status.
#[derive(Clone)]
pub struct ReloadHandle {
    requests: mpsc::Sender<ReloadRequest>,
    status: Arc<RwLock<ConfigStatus>>,
}

impl ReloadHandle {
    /// A handle, the inbox its requests arrive in, and the status the reload task keeps.
    pub fn new(
        status: ConfigStatus,
    ) -> (
        ReloadHandle,
        mpsc::Receiver<ReloadRequest>,
        Arc<RwLock<ConfigStatus>>,
    ) {
        let status = Arc::new(RwLock::new(status));
        let (requests, inbox) = mpsc::channel(16);
        let handle = ReloadHandle {
            requests,
            status: Arc::clone(&status),
        };
        (handle, inbox, status)
    }

    /// Where reload requests go, for those who ask without waiting (the file watcher, SIGHUP).
    pub fn requests(&self) -> mpsc::Sender<ReloadRequest> {
        self.requests.clone()
    }

    /// Reloads now and says how it went.
    pub async fn reload(&self, trigger: &'static str) -> ReloadOutcome {
        let (done, outcome) = oneshot::channel();
        let request = ReloadRequest {
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
