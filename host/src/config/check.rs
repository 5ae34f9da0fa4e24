//! The checker: from the file as serde read it ([`raw`](super::raw)) to a typed [`Config`], with
//! every problem found in one pass.
//!
//! Longer than most files on purpose: it is one pass over one file, section by section, and each
//! section's checks read best next to the others they mirror (names, addresses, limits).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::{
    AccessList, Config, Credentials, DEFAULT_CPU_PERCENT, DEFAULT_MEMORY_LIMIT_MB,
    DEFAULT_ON_DEMAND_CLOSE_AFTER, DEFAULT_SNAPSHOT_EVERY_S, DEFAULT_TIME_LIMIT_MS,
    DEFAULT_TRANSCODE_KBPS, IpNet, MemoryBudget, OnError, Origin, PasswordHash, PluginConfig,
    Problem, RESERVED_NAMES, RouteConfig, ServerConfig, SourceConfig, SourceTemplate, SwapAt,
    TokenHash, TranscodeConfig, Users, WasmSource, Webhooks, raw,
};

/// Collects every problem in one pass, so a user fixes them all at once.
pub(super) struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    pub(super) problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    pub(super) fn new(file: &'a Path, text: &'a str) -> Checker<'a> {
        Checker {
            file,
            text,
            problems: Vec::new(),
        }
    }

    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    }

    fn problem<T>(&mut self, at: &Spanned<T>, key: String, message: String) {
        let position = Some(self.position(at.span().start));
        self.problems.push(Problem {
            file: self.file.to_owned(),
            position,
            key,
            message,
        });
    }

    pub(super) fn config(&mut self, raw: raw::File, base_dir: &Path) -> Config {
        let mut users = Users::new();
        for (name, user) in raw.users {
            let mut credentials = Credentials::default();
            if let Some(password) = &user.password {
                match PasswordHash::parse(password.get_ref()) {
                    Ok(hash) => credentials.password = Some(hash),
                    Err(why) => self.problem(password, format!("users.{name}.password"), why),
                }
            }
            if let Some(token) = &user.token {
                match TokenHash::parse(token.get_ref()) {
                    Ok(hash) => credentials.token = Some(hash),
                    Err(why) => self.problem(token, format!("users.{name}.token"), why),
                }
            }
            if user.password.is_none() && user.token.is_none() {
                self.problems.push(Problem {
                    file: self.file.to_owned(),
                    position: None,
                    key: format!("users.{name}"),
                    message:
                        "give a password (wasmcast hash-password) or a token (wasmcast new-token)"
                            .into(),
                });
            }
            users.insert(name, credentials);
        }
        let server = self.server(raw.server, &users, base_dir);
        // Names of every plugin table, valid or not: a route naming a broken one is not wrong too.
        let plugin_names: Vec<String> = raw.plugins.keys().map(|n| n.get_ref().clone()).collect();
        let mut plugins = BTreeMap::new();
        let mut webhooks = Webhooks::default();
        for (name, plugin) in raw.plugins {
            if let Some(url) = &plugin.webhook
                && let Some(url) = self.webhook(url, &format!("plugins.{}.webhook", name.get_ref()))
            {
                webhooks.plugins.insert(name.get_ref().clone(), url);
            }
            if let Some(plugin) = self.plugin(&name, plugin, base_dir) {
                plugins.insert(name.into_inner(), plugin);
            }
        }
        let mut routes = BTreeMap::new();
        let mut patterns = BTreeMap::new();
        let mut feeds = BTreeMap::new();
        for (name, route) in raw.routes {
            let key = format!("routes.{}", name.get_ref());
            let is_pattern = name.get_ref().contains('*');
            if let Some(url) = &route.webhook
                && let Some(url) = self.webhook(url, &format!("{key}.webhook"))
            {
                webhooks.routes.insert(name.get_ref().clone(), url);
            }
            // A pattern is checked as the names it matches would be.
            if let Err(why) = check_path_segment(&name.get_ref().replace('*', "x")) {
                self.problem(&name, key.clone(), why);
            }
            for plugin in &route.plugins {
                if !plugins.contains_key(plugin.get_ref())
                    && !plugin_names.contains(plugin.get_ref())
                {
                    self.problem(
                        plugin,
                        format!("{key}.plugins"),
                        format!(
                            "no plugin named `{}`; define it in a [plugins.{}] table",
                            plugin.get_ref(),
                            plugin.get_ref()
                        ),
                    );
                }
            }
            let transcode = route
                .transcode
                .as_ref()
                .map(|t| self.transcode(t.get_ref(), t, &format!("{key}.transcode")));
            let looping = route.looping.as_ref().is_none_or(|l| *l.get_ref());
            let on_demand = self.on_demand(&route, is_pattern, &key);
            let settings = RouteConfig {
                source: (),
                plugins: route.plugins.iter().map(|p| p.get_ref().clone()).collect(),
                access: self.access(&route.allow, &route.deny, &key),
                read: self.user_list(&route.read, &users, &format!("{key}.read")),
                publish: self.user_list(&route.publish, &users, &format!("{key}.publish")),
                transcode,
                on_demand,
            };
            if is_pattern {
                let template = SourceTemplate {
                    text: route.source.get_ref().clone(),
                    looping,
                    base_dir: base_dir.to_owned(),
                };
                // Each name the pattern matches must make a source; a sample name shows whether it
                // does.
                let problem = if !template.text.contains("{name}") {
                    Some("a pattern's source names each route with `{name}`, e.g. \"rtsp://origin:8554/{name}\"".to_owned())
                } else {
                    match template.for_route("name") {
                        Ok(SourceConfig::Push { .. }) => Some(
                            "a pattern's source is pulled on demand: use \"rtsp://HOST/{name}\" or \"file:PATH\"".to_owned(),
                        ),
                        Ok(_) => None,
                        Err(why) => Some(why),
                    }
                };
                match problem {
                    Some(why) => self.problem(&route.source, format!("{key}.source"), why),
                    None => {
                        patterns.insert(name.into_inner(), settings.with_source(template));
                    }
                }
                continue;
            }
            let source = match parse_source(
                name.get_ref(),
                &route.source.get_ref().replace("{name}", name.get_ref()),
                looping,
                base_dir,
            ) {
                Ok(source) => source,
                Err(why) => {
                    self.problem(&route.source, format!("{key}.source"), why);
                    continue;
                }
            };
            if on_demand.is_some() && matches!(source, SourceConfig::Push { .. }) {
                self.problem(
                    &route.source,
                    format!("{key}.on_demand"),
                    "a push route has no source to start on demand; remove `on_demand`".into(),
                );
            }
            if let SourceConfig::Push { feed } = &source {
                match feeds.insert(feed.clone(), name.get_ref().clone()) {
                    Some(other) => self.problem(
                        &route.source,
                        format!("{key}.source"),
                        format!("route `{other}` already takes the feed `{feed}`; give each push route its own feed"),
                    ),
                    None if route.looping.is_some() => self.problem(
                        &route.source,
                        format!("{key}.loop"),
                        "`loop` applies only to `file:` sources; remove it".into(),
                    ),
                    None => {}
                }
            }
            routes.insert(name.into_inner(), settings.with_source(source));
        }
        Config {
            server,
            routes,
            patterns,
            plugins,
            users,
            webhooks,
        }
    }

    /// A webhook's URL: plain `http://` (events are not secrets a plugin should send over the
    /// Internet without TLS, and TLS would take a stack of its own: point it at a local relay).
    fn webhook(&mut self, value: &Spanned<String>, key: &str) -> Option<url::Url> {
        match url::Url::parse(value.get_ref()) {
            Ok(url) if url.scheme() == "http" && url.host_str().is_some() => Some(url),
            Ok(url) => {
                self.problem(
                    value,
                    key.to_owned(),
                    format!(
                        "`{}` is not an http:// URL; webhooks are posted over plain HTTP (point an https one at a local relay)",
                        url.scheme()
                    ),
                );
                None
            }
            Err(err) => {
                self.problem(value, key.to_owned(), format!("not a URL: {err}"));
                None
            }
        }
    }

    /// How long an on-demand route's source outlives its last reader; patterns are always on
    /// demand.
    fn on_demand(&mut self, route: &raw::Route, is_pattern: bool, key: &str) -> Option<Duration> {
        let on_demand = match &route.on_demand {
            Some(flag) if !flag.get_ref() && is_pattern => {
                self.problem(
                    flag,
                    format!("{key}.on_demand"),
                    "a pattern's routes are always pulled on demand; remove `on_demand = false`"
                        .into(),
                );
                true
            }
            Some(flag) => *flag.get_ref(),
            None => is_pattern,
        };
        let close_after = match &route.on_demand_close_after_s {
            Some(seconds) if !on_demand => {
                self.problem(
                    seconds,
                    format!("{key}.on_demand_close_after_s"),
                    "applies only to on-demand routes; add `on_demand = true` or remove it".into(),
                );
                return None;
            }
            Some(seconds) if !(1..=86_400).contains(seconds.get_ref()) => {
                self.problem(
                    seconds,
                    format!("{key}.on_demand_close_after_s"),
                    "must be between 1 and 86400 seconds".into(),
                );
                DEFAULT_ON_DEMAND_CLOSE_AFTER
            }
            Some(seconds) => Duration::from_secs(*seconds.get_ref()),
            None => DEFAULT_ON_DEMAND_CLOSE_AFTER,
        };
        on_demand.then_some(close_after)
    }

    fn plugin(
        &mut self,
        name: &Spanned<String>,
        raw: raw::Plugin,
        base_dir: &Path,
    ) -> Option<PluginConfig> {
        let key = format!("plugins.{}", name.get_ref());
        let problems = self.problems.len();
        if let Err(why) = check_path_segment(name.get_ref()) {
            self.problem(name, key.clone(), why.replace("route name", "plugin name"));
        }
        let wasm = match raw.wasm.get_ref().strip_prefix("builtin:") {
            // Whether such a built-in exists is the plugin loader's to say.
            Some(builtin) => WasmSource::Builtin(builtin.to_owned()),
            None if raw.wasm.get_ref().is_empty() => {
                self.problem(
                    &raw.wasm,
                    format!("{key}.wasm"),
                    "give a path to a .wasm component or \"builtin:NAME\"".into(),
                );
                WasmSource::File(PathBuf::new())
            }
            None => WasmSource::File(base_dir.join(raw.wasm.get_ref())),
        };
        let on_error = match raw.on_error.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("bypass") => OnError::Bypass,
            Some("drop") => OnError::Drop,
            Some(other) => {
                if let Some(value) = &raw.on_error {
                    self.problem(
                        value,
                        format!("{key}.on_error"),
                        format!("`{other}` is not a policy: use \"bypass\" or \"drop\""),
                    );
                }
                OnError::Bypass
            }
        };
        let limit = |value: &Option<Spanned<u64>>, default| {
            value.as_ref().map_or(default, |v| *v.get_ref())
        };
        let time_limit_ms = limit(&raw.time_limit_ms, DEFAULT_TIME_LIMIT_MS);
        self.within(
            &raw.time_limit_ms,
            1..=60_000,
            &key,
            "time_limit_ms",
            "give 1 to 60000 milliseconds",
        );
        let cpu_percent = limit(&raw.cpu_percent, DEFAULT_CPU_PERCENT);
        self.within(
            &raw.cpu_percent,
            1..=100,
            &key,
            "cpu_percent",
            "give 1 to 100 (percent of one core)",
        );
        let memory_limit_mb = limit(&raw.memory_limit_mb, DEFAULT_MEMORY_LIMIT_MB);
        self.within(
            &raw.memory_limit_mb,
            1..=4096,
            &key,
            "memory_limit_mb",
            "give 1 to 4096 MiB",
        );
        let snapshot_every = match &raw.snapshot_every_s {
            None => Some(Duration::from_secs(DEFAULT_SNAPSHOT_EVERY_S)),
            Some(value) if *value.get_ref() == 0 => None,
            Some(value) if *value.get_ref() > 86_400 => {
                self.problem(
                    value,
                    format!("{key}.snapshot_every_s"),
                    "give 0 (only when the instance is replaced) to 86400 seconds".into(),
                );
                None
            }
            Some(value) => Some(Duration::from_secs(*value.get_ref())),
        };
        let swap = match raw.swap.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("unit") => SwapAt::Unit,
            Some("keyframe") => SwapAt::Keyframe,
            Some(other) => {
                if let Some(value) = &raw.swap {
                    self.problem(
                        value,
                        format!("{key}.swap"),
                        format!("`{other}` is not a swap point: use \"unit\" or \"keyframe\""),
                    );
                }
                SwapAt::Unit
            }
        };
        let mut dirs = BTreeMap::new();
        for (guest, host) in raw.dirs {
            let path = base_dir.join(host.get_ref());
            if !path.is_dir() {
                self.problem(
                    &host,
                    format!("{key}.dirs"),
                    format!("`{}` is not a directory", path.display()),
                );
            }
            dirs.insert(guest, path);
        }
        let config = match serde_json::to_string(&raw.config) {
            Ok(json) => json,
            Err(err) => {
                self.problem(
                    name,
                    format!("{key}.config"),
                    format!("cannot hand this table to a plugin: {err}"),
                );
                String::from("{}")
            }
        };
        if self.problems.len() > problems {
            return None;
        }
        Some(PluginConfig {
            wasm,
            config,
            on_error,
            time_limit: Duration::from_millis(time_limit_ms),
            cpu_percent: u32::try_from(cpu_percent).unwrap_or(100),
            memory_limit: usize::try_from(memory_limit_mb << 20).unwrap_or(usize::MAX),
            env: raw.env,
            dirs,
            network: raw.network,
            snapshot_every,
            swap,
            origin: Origin {
                file: self.file.to_owned(),
                position: Some(self.position(name.span().start)),
            },
        })
    }

    /// A problem at `table.name` unless `value` (when given) is in `range`.
    fn within<T: PartialOrd>(
        &mut self,
        value: &Option<Spanned<T>>,
        range: RangeInclusive<T>,
        table: &str,
        name: &str,
        advice: &str,
    ) {
        if let Some(value) = value
            && !range.contains(value.get_ref())
        {
            self.problem(value, format!("{table}.{name}"), advice.into());
        }
    }

    fn transcode<T>(
        &mut self,
        raw: &raw::Transcode,
        at: &Spanned<T>,
        key: &str,
    ) -> TranscodeConfig {
        for (value, name) in [(&raw.width, "width"), (&raw.height, "height")] {
            if let Some(value) = value
                && (!(16..=4096).contains(value.get_ref()) || value.get_ref() % 2 != 0)
            {
                self.problem(
                    value,
                    format!("{key}.{name}"),
                    "give an even number of pixels from 16 to 4096".into(),
                );
            }
        }
        self.within(
            &raw.fps,
            1.0..=120.0,
            key,
            "fps",
            "give 1 to 120 frames per second",
        );
        self.within(
            &raw.bitrate_kbps,
            10..=100_000,
            key,
            "bitrate_kbps",
            "give 10 to 100000 kbit/s",
        );
        self.within(
            &raw.keyframe_interval,
            1..=1000,
            key,
            "keyframe_interval",
            "give 1 to 1000 pictures",
        );
        if raw.width.is_some() != raw.height.is_some() {
            self.problem(
                at,
                key.to_owned(),
                "give both width and height, or neither (to keep the source's size)".into(),
            );
        }
        TranscodeConfig {
            width: raw.width.as_ref().map(|v| *v.get_ref()),
            height: raw.height.as_ref().map(|v| *v.get_ref()),
            fps: raw.fps.as_ref().map(|v| *v.get_ref()),
            bitrate_kbps: raw
                .bitrate_kbps
                .as_ref()
                .map_or(DEFAULT_TRANSCODE_KBPS, |v| *v.get_ref()),
            keyframe_interval: raw.keyframe_interval.as_ref().map(|v| *v.get_ref()),
            audio: raw.audio.unwrap_or(true),
        }
    }

    fn server(&mut self, raw: raw::Server, users: &Users, base_dir: &Path) -> ServerConfig {
        let defaults = raw::Server::default();
        let rtsp = self.socket_addr(&raw.rtsp, "server.rtsp");
        let http = self.socket_addr(&raw.http, "server.http");
        let webrtc_udp = self.socket_addr(&raw.webrtc_udp, "server.webrtc_udp");
        let rtp_ports = match parse_port_range(raw.rtp_ports.get_ref()) {
            Ok(range) => range,
            Err(why) => {
                self.problem(&raw.rtp_ports, "server.rtp_ports".into(), why);
                (30000, 30999)
            }
        };
        let webrtc_tcp = match raw.webrtc_tcp.get_ref().as_str() {
            "off" => None,
            _ => self.socket_addr(&raw.webrtc_tcp, "server.webrtc_tcp"),
        };
        if let Some(ports) = &raw.webrtc_udp_ports {
            self.problem(
                ports,
                "server.webrtc_udp_ports".into(),
                "is no longer used: every WebRTC viewer shares the one UDP port of webrtc_udp \
                 (and the TCP port of webrtc_tcp); remove this line"
                    .into(),
            );
        }
        let webrtc_public_ip =
            raw.webrtc_public_ip
                .as_ref()
                .and_then(|ip| match ip.get_ref().parse::<IpAddr>() {
                    Ok(parsed) if !parsed.is_unspecified() => Some(parsed),
                    _ => {
                        self.problem(
                            ip,
                            "server.webrtc_public_ip".into(),
                            format!("`{}` is not an IP address browsers can reach", ip.get_ref()),
                        );
                        None
                    }
                });
        if *raw.max_clients.get_ref() == 0 {
            self.problem(
                &raw.max_clients,
                "server.max_clients".into(),
                "must be at least 1".into(),
            );
        }
        for (value, key) in [
            (&raw.max_connections, "server.max_connections"),
            (
                &raw.max_connections_per_address,
                "server.max_connections_per_address",
            ),
            (
                &raw.connection_rate_per_address,
                "server.connection_rate_per_address",
            ),
        ] {
            if *value.get_ref() == 0 {
                self.problem(value, key.into(), "must be at least 1".into());
            }
        }
        let mut megabytes =
            |value: &Spanned<usize>, key: &str, range: std::ops::RangeInclusive<usize>| {
                if range.contains(value.get_ref()) {
                    *value.get_ref() << 20
                } else {
                    self.problem(
                        value,
                        key.into(),
                        format!("must be from {} to {} (MiB)", range.start(), range.end()),
                    );
                    *range.start() << 20
                }
            };
        let max_unit_bytes = megabytes(&raw.max_unit_mb, "server.max_unit_mb", 1..=256);
        let route_buffer_bytes =
            megabytes(&raw.route_buffer_mb, "server.route_buffer_mb", 4..=4096);
        let tcp_send_kb = *raw.tcp_send_buffer_kb.get_ref();
        if !TCP_SEND_BUFFER_KB.contains(&tcp_send_kb) {
            self.problem(
                &raw.tcp_send_buffer_kb,
                "server.tcp_send_buffer_kb".into(),
                format!(
                    "must be from {} to {} (KiB)",
                    TCP_SEND_BUFFER_KB.start(),
                    TCP_SEND_BUFFER_KB.end()
                ),
            );
        }
        let tcp_send_buffer =
            tcp_send_kb.clamp(*TCP_SEND_BUFFER_KB.start(), *TCP_SEND_BUFFER_KB.end()) << 10;
        if *raw.drain_grace_s.get_ref() > MAX_DRAIN_GRACE_S {
            self.problem(
                &raw.drain_grace_s,
                "server.drain_grace_s".into(),
                format!("must be at most {MAX_DRAIN_GRACE_S} seconds"),
            );
        }
        if route_buffer_bytes < max_unit_bytes {
            self.problem(
                &raw.route_buffer_mb,
                "server.route_buffer_mb".into(),
                "must be at least server.max_unit_mb: a route must hold one unit of the largest size".into(),
            );
        }
        ServerConfig {
            rtsp: rtsp.unwrap_or_else(|| socket_default(&defaults.rtsp)),
            http: http.unwrap_or_else(|| socket_default(&defaults.http)),
            rtp_ports,
            webrtc_udp: webrtc_udp.unwrap_or_else(|| socket_default(&defaults.webrtc_udp)),
            webrtc_tcp,
            webrtc_public_ip,
            max_clients: *raw.max_clients.get_ref(),
            max_bandwidth_kbps: *raw.max_bandwidth_kbps.get_ref(),
            max_connections: *raw.max_connections.get_ref(),
            max_connections_per_address: *raw.max_connections_per_address.get_ref(),
            connection_rate_per_address: *raw.connection_rate_per_address.get_ref(),
            tcp_send_buffer,
            drain_grace: Duration::from_secs((*raw.drain_grace_s.get_ref()).min(MAX_DRAIN_GRACE_S)),
            state_dir: raw.state_dir.map(|dir| base_dir.join(dir.get_ref())),
            budget: MemoryBudget {
                max_unit_bytes,
                route_buffer_bytes,
            },
            access: self.access(&raw.allow, &raw.deny, "server"),
            admins: self.user_list(&raw.admins, users, "server.admins"),
        }
    }

    fn user_list(&mut self, names: &[Spanned<String>], users: &Users, key: &str) -> Vec<String> {
        for name in names {
            if !users.contains_key(name.get_ref()) {
                self.problem(
                    name,
                    key.to_owned(),
                    format!(
                        "no user named `{0}`; add a [users.{0}] table with password = \"md5:…\" from `wasmcast hash-password {0}`",
                        name.get_ref()
                    ),
                );
            }
        }
        names.iter().map(|n| n.get_ref().clone()).collect()
    }

    fn access(
        &mut self,
        allow: &[Spanned<String>],
        deny: &[Spanned<String>],
        key: &str,
    ) -> AccessList {
        let mut list = AccessList::default();
        for (entries, name, out) in [
            (allow, "allow", &mut list.allow),
            (deny, "deny", &mut list.deny),
        ] {
            for entry in entries {
                match IpNet::parse(entry.get_ref()) {
                    Ok(net) => out.push(net),
                    Err(why) => self.problem(entry, format!("{key}.{name}"), why),
                }
            }
        }
        list
    }

    fn socket_addr(&mut self, value: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match value.get_ref().parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    value,
                    key.into(),
                    format!(
                        "`{}` is not an IP address and port, e.g. \"0.0.0.0:8554\" or \"[::]:8554\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }
}

fn socket_default(value: &Spanned<String>) -> SocketAddr {
    value
        .get_ref()
        .parse()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// The longest a shutdown waits for sessions to end on their own.
const MAX_DRAIN_GRACE_S: u64 = 3600;
/// What `tcp_send_buffer_kb` may be: from what holds a few packets to 64 MiB.
const TCP_SEND_BUFFER_KB: std::ops::RangeInclusive<usize> = 16..=65536;

/// Route and feed names are single URL path segments that do not collide with the HTTP API.
pub(super) fn check_path_segment(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || name.starts_with('.')
    {
        return Err(format!(
            "`{name}` is not a valid route name: use letters, digits, `-`, `_` and `.` (it becomes a URL path segment)"
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "`{name}` is reserved for the HTTP server ({}); choose another name",
            RESERVED_NAMES.join(", ")
        ));
    }
    Ok(())
}

pub(super) fn parse_source(
    route: &str,
    source: &str,
    looping: bool,
    base_dir: &Path,
) -> Result<SourceConfig, String> {
    if let Some(path) = source.strip_prefix("file:") {
        if path.is_empty() {
            return Err("`file:` needs a path, e.g. \"file:../media/sample.mp4\"".into());
        }
        return Ok(SourceConfig::File {
            path: base_dir.join(path),
            looping,
        });
    }
    if source == "push" {
        return Ok(SourceConfig::Push {
            feed: route.to_owned(),
        });
    }
    if let Some(feed) = source.strip_prefix("push:") {
        check_path_segment(feed).map_err(|why| format!("feed name: {why}"))?;
        return Ok(SourceConfig::Push {
            feed: feed.to_owned(),
        });
    }
    if source.starts_with("rtsp://") {
        let url =
            url::Url::parse(source).map_err(|err| format!("`{source}` is not a URL: {err}"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("`{source}` names no host"));
        }
        return Ok(SourceConfig::RtspPull { url });
    }

    Err(format!(
        "`{source}` is not a source: use \"file:PATH\", \"push\", \"push:FEED\" or \"rtsp://HOST/PATH\""
    ))
}

pub(super) fn parse_port_range(range: &str) -> Result<(u16, u16), String> {
    let usage = "give an even first port and a range of at least two ports, e.g. \"30000-30999\"";
    let (first, last) = range
        .split_once('-')
        .ok_or_else(|| format!("`{range}` is not a port range; {usage}"))?;
    let first: u16 = first
        .trim()
        .parse()
        .map_err(|_| format!("`{first}` is not a port number; {usage}"))?;
    let last: u16 = last
        .trim()
        .parse()
        .map_err(|_| format!("`{last}` is not a port number; {usage}"))?;
    if first == 0 || !first.is_multiple_of(2) || last <= first {
        return Err(format!("`{range}` cannot hold RTP/RTCP pairs; {usage}"));
    }
    Ok((first, last))
}
