//! The router actor: the one owner of the running routes. It applies route sets, starts on-demand
//! sources when readers ask, stops them when nobody has read them for a while, and publishes the
//! snapshot lookups read.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    Changes, Command, Demand, MAX_PATTERN_ROUTES, PATTERN_ROUTES_PER_ADDRESS, RouterError, Snapshot,
};
use crate::auth::Policy;
use crate::config::{self, MemoryBudget, PatternConfig, RouteConfig, SourceConfig};
use crate::hub::{Revoked, Stream};
use crate::listen::AddressKey;
use crate::pipeline::Stage;
use crate::plugins::{LoadedPlugin, Plugins};
use crate::sources::{self, RunningSource};

/// How often on-demand routes are checked for readers.
const DEMAND_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// How long an on-demand source that never produced anything runs after the last reader asked:
/// a little longer than readers wait for a source to start.
const NEVER_LIVE_CLOSE: Duration = Duration::from_secs(6);
/// How long a shutdown waits for the pipelines to publish what they hold.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

struct RunningRoute {
    config: RouteConfig,
    /// The plugins its chain runs, in order.
    chain: Vec<Arc<LoadedPlugin>>,
    stream: Arc<Stream>,
    /// From the first time the route has plugins or re-encodes.
    stage: Option<Stage>,
    /// Dropping it stops the source; `None` while an on-demand route has no reader.
    source: Option<RunningSource>,
    /// For on-demand routes.
    demand: Option<Arc<Demand>>,
    /// The client address a route made from a pattern was made for: it counts against that
    /// address while nobody reads it.
    asked_by: Option<AddressKey>,
}

impl RunningRoute {
    /// A route with its hub and pipeline; its source starts now unless it waits for demand.
    fn start(
        name: &str,
        config: RouteConfig,
        pattern: Option<&str>,
        plugins: &Plugins,
        budget: MemoryBudget,
    ) -> RunningRoute {
        let stream = Stream::with_budget(name, budget);
        let chain = chain_of(&config, plugins);
        // The pipeline comes first, so that the source's first unit goes through it.
        let stage = (!chain.is_empty() || config.transcode.is_some()).then(|| {
            let stage = Stage::attach(&stream);
            stage.set_processing(&chain, config.transcode.clone());
            stage
        });
        let demand = config
            .on_demand
            .map(|close_after| Arc::new(Demand::new(pattern.map(str::to_owned), close_after)));
        let mut route = RunningRoute {
            config,
            chain,
            stream,
            stage,
            source: None,
            demand,
            asked_by: None,
        };
        if route.demand.is_none() {
            route.start_source();
        }
        route
    }

    fn start_source(&mut self) {
        self.source = Some(sources::start(
            &self.config.source,
            Arc::clone(&self.stream),
        ));
        if let Some(demand) = &self.demand {
            demand.ask();
            demand.set_running(true);
        }
    }

    /// Whether an on-demand route's source has run without a reader for its close-after time.
    fn idle(&self, now: Instant) -> bool {
        let Some(demand) = &self.demand else {
            return false;
        };
        if self.has_readers() {
            // Readers that stay are demand too: the clock starts when the last one leaves.
            demand.ask();
            return false;
        }
        if self.source.is_none() {
            return false;
        }
        // A source that never produced anything (the origin has no such stream) serves nobody:
        // it stops once the readers who asked have stopped waiting, not after the whole
        // close-after time, so names asked for at random cannot hold routes for long.
        let never_live = self
            .stream
            .stats
            .publishers
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0;
        demand.idle(now) || (never_live && demand.unasked_for(now, NEVER_LIVE_CLOSE))
    }

    fn pattern(&self) -> Option<&str> {
        self.demand.as_ref()?.pattern.as_deref()
    }

    fn has_readers(&self) -> bool {
        self.stream
            .stats
            .readers
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    }
}

pub(super) struct Actor {
    routes: BTreeMap<String, RunningRoute>,
    patterns: BTreeMap<String, PatternConfig>,
    /// The plugins of the last route set, for the routes patterns make later.
    plugins: Plugins,
    snapshot: Arc<RwLock<Snapshot>>,
    budget: MemoryBudget,
}

impl Actor {
    pub(super) fn new(snapshot: Arc<RwLock<Snapshot>>, budget: MemoryBudget) -> Actor {
        Actor {
            routes: BTreeMap::new(),
            patterns: BTreeMap::new(),
            plugins: Plugins::new(),
            snapshot,
            budget,
        }
    }

    pub(super) async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        let mut demand_check = tokio::time::interval(DEMAND_CHECK_PERIOD);
        loop {
            let command = tokio::select! {
                command = inbox.recv() => command,
                _ = demand_check.tick() => {
                    self.close_idle(Instant::now());
                    continue;
                }
            };
            let Some(command) = command else {
                return;
            };
            match command {
                Command::Apply {
                    routes,
                    patterns,
                    plugins,
                    done,
                } => {
                    let changes = self.apply(routes, patterns, plugins);
                    let _ = done.send(changes);
                }
                Command::Open { name, asker, done } => {
                    let _ = done.send(self.open(&name, asker));
                }
                Command::Shutdown { done } => {
                    // What publishers sent goes through the pipelines before the routes close.
                    let flushes = self
                        .routes
                        .values()
                        .filter_map(|route| route.stage.as_ref())
                        .map(Stage::flush);
                    let _ = tokio::time::timeout(FLUSH_TIMEOUT, futures::future::join_all(flushes))
                        .await;
                    self.apply(BTreeMap::new(), BTreeMap::new(), Plugins::new());
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    fn apply(
        &mut self,
        mut wanted: BTreeMap<String, RouteConfig>,
        patterns: BTreeMap<String, PatternConfig>,
        plugins: Plugins,
    ) -> Changes {
        let mut changes = Changes::default();
        let names: Vec<String> = self.routes.keys().cloned().collect();
        for name in names {
            let Some(route) = self.routes.get_mut(&name) else {
                continue;
            };
            if let Some(pattern) = route.pattern() {
                // A route a pattern made stays while nothing about it changed; its readers then
                // ask again and get the new settings.
                let unchanged = !wanted.contains_key(&name)
                    && patterns.get(pattern) == self.patterns.get(pattern)
                    && same_chain(&route.chain, &chain_of(&route.config, &plugins));
                if !unchanged && let Some(route) = self.routes.remove(&name) {
                    route.stream.close();
                }
                continue;
            }
            match wanted.remove(&name) {
                None => {
                    if let Some(route) = self.routes.remove(&name) {
                        route.stream.close();
                    }
                    changes.removed.push(name);
                }
                Some(config) => {
                    if update(route, config, &plugins) {
                        changes.changed.push(name);
                    }
                }
            }
        }
        for (name, config) in wanted {
            let route = RunningRoute::start(&name, config, None, &plugins, self.budget);
            self.routes.insert(name.clone(), route);
            changes.added.push(name);
        }
        self.patterns = patterns;
        self.plugins = plugins;
        self.publish();
        changes
    }

    /// Starts route `name`'s source if it waits for demand, or makes the route for `asker` from
    /// the pattern that matches it best.
    fn open(&mut self, name: &str, asker: AddressKey) -> Result<Arc<Stream>, RouterError> {
        if let Some(route) = self.routes.get_mut(name) {
            if route.source.is_none() {
                tracing::info!(route = name, "on-demand source started for a reader");
                route.start_source();
            }
            if let Some(demand) = &route.demand {
                demand.ask();
            }
            return Ok(Arc::clone(&route.stream));
        }
        let no_route = || RouterError::NoRoute(name.to_owned());
        config::check_route_name(name).map_err(|_| no_route())?;
        let (pattern, settings) =
            config::best_pattern(&self.patterns, name).ok_or_else(no_route)?;
        let made = self.routes.values().filter(|r| r.pattern().is_some());
        let (mut in_all, mut unread_for_asker) = (0, 0);
        for route in made {
            in_all += 1;
            if route.asked_by == Some(asker) && !route.has_readers() {
                unread_for_asker += 1;
            }
        }
        // Refusals are logged once per connection by its access log line, not here: they come
        // as fast as a client can ask.
        if in_all >= MAX_PATTERN_ROUTES {
            return Err(RouterError::PatternRoutesInAll);
        }
        if unread_for_asker >= PATTERN_ROUTES_PER_ADDRESS {
            return Err(RouterError::PatternRoutesFromAddress);
        }
        let config = match settings.route(name) {
            Ok(config) => config,
            Err(why) => {
                tracing::info!(route = name, pattern = pattern.as_str(), "refused: {why}");
                return Err(no_route());
            }
        };
        tracing::info!(
            route = name,
            pattern = pattern.as_str(),
            "route made from a pattern for a reader"
        );
        let mut route =
            RunningRoute::start(name, config, Some(pattern), &self.plugins, self.budget);
        route.asked_by = Some(asker);
        route.start_source();
        let stream = Arc::clone(&route.stream);
        self.routes.insert(name.to_owned(), route);
        self.publish();
        Ok(stream)
    }

    /// Stops the sources of on-demand routes nobody has read for their close-after time, and
    /// removes the routes patterns made.
    fn close_idle(&mut self, now: Instant) {
        let idle: Vec<String> = self
            .routes
            .iter()
            .filter(|(_, route)| route.idle(now))
            .map(|(name, _)| name.clone())
            .collect();
        if idle.is_empty() {
            return;
        }
        for name in idle {
            let Some(route) = self.routes.get_mut(&name) else {
                continue;
            };
            tracing::info!(route = name, "on-demand source stopped: no reader");
            route.source = None;
            if let Some(demand) = &route.demand {
                demand.set_running(false);
            }
            if route.pattern().is_some()
                && let Some(route) = self.routes.remove(&name)
            {
                route.stream.close();
            }
        }
        self.publish();
    }

    /// Publishes what lookups read.
    fn publish(&self) {
        let mut snapshot = Snapshot::default();
        let mut routes = BTreeMap::new();
        for (name, route) in &self.routes {
            routes.insert(name.clone(), Arc::clone(&route.stream));
            if let Some(stage) = &route.stage {
                snapshot.stages.insert(name.clone(), stage.clone());
            }
            if let Some(demand) = &route.demand {
                snapshot.demands.insert(name.clone(), Arc::clone(demand));
            }
            snapshot
                .policies
                .insert(name.clone(), Arc::new(Policy::of(&route.config)));
            if let SourceConfig::Push { feed } = &route.config.source {
                snapshot
                    .feeds
                    .insert(feed.clone(), Arc::clone(&route.stream));
            }
        }
        snapshot.routes = Arc::new(routes);
        snapshot.patterns = self
            .patterns
            .iter()
            .map(|(pattern, config)| (pattern.clone(), Arc::new(Policy::of(config))))
            .collect();
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snapshot;
    }
}

/// Brings a configured route to `config`; whether anything changed.
fn update(route: &mut RunningRoute, config: RouteConfig, plugins: &Plugins) -> bool {
    let chain = chain_of(&config, plugins);
    let chain_changed =
        !same_chain(&route.chain, &chain) || route.config.transcode != config.transcode;
    if chain_changed {
        // Swapped between two units: readers stay, no unit is lost.
        set_processing(route, &chain, config.transcode.clone());
        route.chain = chain;
    }
    if route.config.publish != config.publish {
        route.stream.revoke_publisher_unless(&config.publish);
    }
    if route.config == config && !chain_changed {
        return false;
    }
    let source_changed = route.config.source != config.source;
    if source_changed && matches!(route.config.source, SourceConfig::Push { .. }) {
        // A publisher of the old feed does not publish to this route any more, and the new
        // source waits for the stream to be free.
        route.stream.revoke_publisher(Revoked::SourceChanged);
    }
    let on_demand_changed = route.config.on_demand != config.on_demand;
    route.config = config;
    if on_demand_changed {
        let demand = route
            .config
            .on_demand
            .map(|close_after| Arc::new(Demand::new(None, close_after)));
        if let Some(demand) = &demand {
            // A source that runs keeps running until it has had no reader for a while.
            demand.ask();
            demand.set_running(route.source.is_some());
        }
        route.demand = demand;
    }
    if source_changed && route.source.is_some() {
        // The hub stays, so readers stay connected; the new source publishes into it.
        route.start_source();
    } else if route.source.is_none() && route.demand.is_none() {
        route.start_source();
    }
    true
}

/// Gives `route` its `chain` and `transcode` settings, attaching a pipeline the first time it has
/// something to do.
fn set_processing(
    route: &mut RunningRoute,
    chain: &[Arc<LoadedPlugin>],
    transcode: Option<config::TranscodeConfig>,
) {
    if chain.is_empty() && transcode.is_none() && route.stage.is_none() {
        return;
    }
    route
        .stage
        .get_or_insert_with(|| Stage::attach(&route.stream))
        .set_processing(chain, transcode);
}

/// The plugins `config`'s chain names, in order (a name not in `plugins` was refused by validation).
fn chain_of(config: &RouteConfig, plugins: &Plugins) -> Vec<Arc<LoadedPlugin>> {
    config
        .plugins
        .iter()
        .filter_map(|name| plugins.get(name).cloned())
        .collect()
}

fn same_chain(a: &[Arc<LoadedPlugin>], b: &[Arc<LoadedPlugin>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.same_as(b))
}
