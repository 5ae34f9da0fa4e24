//! Events plugins emit ("motion at 12:03"), and where they go: live subscribers (`GET
//! /api/v1/events`, the status page), a short history, and webhooks.
//!
//! In: events from plugin instances, on the routes' plugin threads. Out: a broadcast that
//! subscribers read at their own pace (one that falls behind loses the oldest events and is told
//! how many), and a bounded queue per webhook, delivered by a task that retries. Publishing never
//! blocks: a plugin thread only ever takes a short lock and sends on non-blocking queues.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::{broadcast, mpsc};

use crate::config::{Config, best_pattern};

/// Events a subscriber may fall behind by before it loses the oldest.
const LIVE_CAPACITY: usize = 1024;
/// Events kept for subscribers that come back (`Last-Event-ID`) and for the status page.
const HISTORY: usize = 256;
/// Events waiting for one webhook at most; past that they are dropped and counted.
const WEBHOOK_QUEUE: usize = 256;
/// Tries per event and webhook, and the pause before each retry.
const WEBHOOK_RETRIES: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];
/// How long one delivery may take, connection included.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one failure log line per webhook in this time.
const WEBHOOK_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One event of one plugin on one route.
#[derive(Debug, serde::Serialize)]
pub struct Event {
    /// Grows by one per event since the server started.
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub route: String,
    pub plugin: String,
    pub name: String,
    pub payload: serde_json::Value,
}

/// The server's events: publish from anywhere, subscribe from the HTTP side.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    next_id: AtomicU64,
    live: broadcast::Sender<Arc<Event>>,
    history: Mutex<VecDeque<Arc<Event>>>,
    webhooks: RwLock<Webhooks>,
    stats: EventStats,
}

/// Counters of the events and their deliveries, for `/metrics`.
#[derive(Debug, Default)]
pub struct EventStats {
    pub published: AtomicU64,
    pub webhook_delivered: AtomicU64,
    pub webhook_failed: AtomicU64,
    /// Events a full webhook queue had no room for.
    pub webhook_dropped: AtomicU64,
}

/// Which webhook hears which events, by the URL each names.
#[derive(Default)]
struct Webhooks {
    by_plugin: BTreeMap<String, Arc<Webhook>>,
    /// By route name or pattern (`cam-*`).
    by_route: BTreeMap<String, Arc<Webhook>>,
}

impl Default for Events {
    fn default() -> Events {
        Events {
            inner: Arc::new(Inner {
                next_id: AtomicU64::new(1),
                live: broadcast::channel(LIVE_CAPACITY).0,
                history: Mutex::new(VecDeque::with_capacity(HISTORY)),
                webhooks: RwLock::default(),
                stats: EventStats::default(),
            }),
        }
    }
}

impl Events {
    /// Publishes an event of `plugin` on `route`; never blocks.
    pub fn publish(&self, route: &str, plugin: &str, name: &str, payload: serde_json::Value) {
        let event = Arc::new(Event {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            time_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            route: route.to_owned(),
            plugin: plugin.to_owned(),
            name: name.to_owned(),
            payload,
        });
        self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
        {
            let mut history = self.inner.history.lock().unwrap_or_else(|p| p.into_inner());
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(Arc::clone(&event));
        }
        // No subscriber is no error: the event is in the history.
        let _ = self.inner.live.send(Arc::clone(&event));
        let webhooks = self
            .inner
            .webhooks
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let by_route = webhooks.by_route.get(route).or_else(|| {
            best_pattern(
                webhooks
                    .by_route
                    .iter()
                    .filter(|(pattern, _)| pattern.contains('*')),
                route,
            )
            .map(|(_, hook)| hook)
        });
        let by_plugin = webhooks.by_plugin.get(plugin);
        // The same URL for the route and the plugin hears the event once.
        let same = matches!((by_route, by_plugin), (Some(r), Some(p)) if Arc::ptr_eq(r, p));
        for hook in by_route.into_iter().chain(by_plugin.filter(|_| !same)) {
            if hook.queue.try_send(Arc::clone(&event)).is_err() {
                self.inner
                    .stats
                    .webhook_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The kept events after `after` (all with `None`), and a receiver of those to come.
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        // The receiver first, so that nothing published in between is missed (an event may then
        // come twice; subscribers skip ids they have seen).
        let live = self.inner.live.subscribe();
        let history = self.inner.history.lock().unwrap_or_else(|p| p.into_inner());
        let kept = history
            .iter()
            .filter(|event| after.is_some_and(|after| event.id > after))
            .cloned()
            .collect();
        (kept, live)
    }

    pub fn stats(&self) -> &EventStats {
        &self.inner.stats
    }

    /// Follows the webhooks of `config`: a URL named before keeps its queue and task; one no
    /// longer named has its task finish what is queued and end. Call it within the runtime.
    pub fn set_webhooks(&self, config: &Config) {
        let mut webhooks = self
            .inner
            .webhooks
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut by_url: HashMap<String, Arc<Webhook>> = webhooks
            .by_plugin
            .values()
            .chain(webhooks.by_route.values())
            .map(|hook| (hook.url.to_string(), Arc::clone(hook)))
            .collect();
        let mut hook = |url: &url::Url| {
            Arc::clone(
                by_url
                    .entry(url.to_string())
                    .or_insert_with(|| Webhook::start(url.clone(), self.clone())),
            )
        };
        let by_plugin = config
            .webhooks
            .plugins
            .iter()
            .map(|(name, url)| (name.clone(), hook(url)))
            .collect();
        let by_route = config
            .webhooks
            .routes
            .iter()
            .map(|(name, url)| (name.clone(), hook(url)))
            .collect();
        *webhooks = Webhooks {
            by_plugin,
            by_route,
        };
    }
}

/// One webhook URL: its queue, drained by a task that POSTs each event as JSON.
struct Webhook {
    url: url::Url,
    queue: mpsc::Sender<Arc<Event>>,
}

impl Webhook {
    fn start(url: url::Url, events: Events) -> Arc<Webhook> {
        let (queue, pending) = mpsc::channel(WEBHOOK_QUEUE);
        tokio::spawn(deliver_all(url.clone(), pending, events));
        Arc::new(Webhook { url, queue })
    }
}

/// Delivers the events of one webhook in order, each with its retries, until its queue closes.
async fn deliver_all(url: url::Url, mut pending: mpsc::Receiver<Arc<Event>>, events: Events) {
    let stats = &events.inner.stats;
    let mut last_log: Option<tokio::time::Instant> = None;
    while let Some(event) = pending.recv().await {
        let body = match serde_json::to_vec(event.as_ref()) {
            Ok(body) => Bytes::from(body),
            Err(_) => continue,
        };
        let mut outcome = deliver(&url, body.clone()).await;
        for pause in WEBHOOK_RETRIES {
            if outcome.is_ok() {
                break;
            }
            tokio::time::sleep(pause).await;
            outcome = deliver(&url, body.clone()).await;
        }
        match outcome {
            Ok(()) => {
                stats.webhook_delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                stats.webhook_failed.fetch_add(1, Ordering::Relaxed);
                let now = tokio::time::Instant::now();
                if last_log.is_none_or(|at| now - at >= WEBHOOK_LOG_INTERVAL) {
                    last_log = Some(now);
                    tracing::warn!(webhook = %url, event = event.id, "webhook delivery failed after {} tries: {why}", WEBHOOK_RETRIES.len() + 1);
                }
            }
        }
    }
}

/// Why one delivery failed.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("answered {0}")]
    Status(hyper::StatusCode),
    #[error("no answer within {WEBHOOK_TIMEOUT:?}")]
    Timeout,
}

/// POSTs `body` to `url` (plain HTTP/1.1, a connection per delivery: webhooks carry a few events
/// a second at most).
async fn deliver(url: &url::Url, body: Bytes) -> Result<(), DeliveryError> {
    let attempt = async {
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(DeliveryError::Connect)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "wasmcast")
            .body(Full::new(body))?;
        let status = sender.send_request(request).await?.status();
        // The status is all a delivery needs. The answer's body is left unread, as the connection
        // is closed here anyway: a receiver could send one without end.
        connection.abort();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status))
        }
    };
    tokio::time::timeout(WEBHOOK_TIMEOUT, attempt)
        .await
        .unwrap_or(Err(DeliveryError::Timeout))
}
