//! The configuration file: TOML parsed with serde, then validated into typed settings.
//!
//! In: the path of a `wasmcast.toml`. Out: a [`Config`] whose every value has been checked, or a
//! list of [`Problem`]s that each name the file, line, key and what to do about it; and, while the
//! server runs, reloads of the file as it changes ([`ReloadHandle`]).

mod access;
mod raw;
mod reload;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::auth::{PasswordHash, Users};

pub use access::{AccessList, IpNet};
pub use reload::{ConfigStatus, Listeners, ReloadHandle, ReloadOutcome};

/// Names a route or feed may not take: they are URL paths of the HTTP server.
const RESERVED_NAMES: [&str; 4] = ["api", "metrics", "healthz", "static"];

/// A whole, validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub routes: BTreeMap<String, RouteConfig>,
    pub plugins: BTreeMap<String, PluginConfig>,
    /// `[users.NAME]`: who may log in, with their password hashes.
    pub users: Users,
}

/// The `[server]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub rtsp: SocketAddr,
    pub http: SocketAddr,
    /// First and last port (inclusive) for RTP/RTCP over UDP; the first is even.
    pub rtp_ports: (u16, u16),
    pub webrtc_udp: SocketAddr,
    pub max_clients: usize,
    pub max_bandwidth_kbps: u64,
    /// Who may connect to the server at all.
    pub access: AccessList,
}

/// One `[routes.NAME]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteConfig {
    pub source: SourceConfig,
    pub plugins: Vec<String>,
    /// Who may read from and publish to this route (on top of the server's list).
    pub access: AccessList,
    /// Users who may read; empty: anyone.
    pub read: Vec<String>,
    /// Users who may publish (push routes); empty: anyone.
    pub publish: Vec<String>,
}

/// Where a route's media comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    /// An MP4 file played in real time; looped forever unless `looping` is false.
    File { path: PathBuf, looping: bool },
    /// Publishers push to the feed `feed`: MPEG-TS over HTTP, or RTSP ANNOUNCE/RECORD.
    Push { feed: String },
    /// Read from another RTSP server, reconnecting when it drops.
    RtspPull { url: url::Url },
}

/// One `[plugins.NAME]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConfig {
    pub wasm: String,
    pub config: toml::Table,
}

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    /// The dotted key, e.g. `routes.unicast.source`; empty for the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

impl Config {
    /// Reads and validates the file at `path`. Relative paths inside it are taken from its directory.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates `text` as the contents of the file at `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
        let mut check = Checker {
            file: path,
            text,
            problems: Vec::new(),
        };
        let raw: raw::File = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(err) => {
                let position = err.span().map(|span| check.position(span.start));
                return Err(Error::Invalid(vec![Problem {
                    file: path.to_owned(),
                    position,
                    key: String::new(),
                    message: err.message().trim_end().to_owned(),
                }]));
            }
        };
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let config = check.config(raw, base_dir);
        if check.problems.is_empty() {
            Ok(config)
        } else {
            Err(Error::Invalid(check.problems))
        }
    }
}

/// Collects every problem in one pass, so a user fixes them all at once.
struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
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

    fn config(&mut self, raw: raw::File, base_dir: &Path) -> Config {
        let server = self.server(raw.server);
        let mut users = Users::new();
        for (name, user) in raw.users {
            match PasswordHash::parse(user.password.get_ref()) {
                Ok(hash) => {
                    users.insert(name, hash);
                }
                Err(why) => self.problem(&user.password, format!("users.{name}.password"), why),
            }
        }
        let mut plugins = BTreeMap::new();
        for (name, plugin) in raw.plugins {
            plugins.insert(
                name,
                PluginConfig {
                    wasm: plugin.wasm.into_inner(),
                    config: plugin.config,
                },
            );
        }
        let mut routes = BTreeMap::new();
        let mut feeds = BTreeMap::new();
        for (name, route) in raw.routes {
            let key = format!("routes.{}", name.get_ref());
            if let Err(why) = check_path_segment(name.get_ref()) {
                self.problem(&name, key.clone(), why);
            }
            for plugin in &route.plugins {
                if !plugins.contains_key(plugin.get_ref()) {
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
            if let Some(plugin) = route.plugins.first() {
                self.problem(
                    plugin,
                    format!("{key}.plugins"),
                    "this build of wasmcast cannot run plugins yet; remove the `plugins` list"
                        .into(),
                );
            }
            if let Some(transcode) = &route.transcode {
                self.problem(
                    transcode,
                    format!("{key}.transcode"),
                    "this build of wasmcast cannot transcode yet; remove the [transcode] table"
                        .into(),
                );
            }
            let looping = route.looping.as_ref().is_none_or(|l| *l.get_ref());
            let source =
                match parse_source(name.get_ref(), route.source.get_ref(), looping, base_dir) {
                    Ok(source) => source,
                    Err(why) => {
                        self.problem(&route.source, format!("{key}.source"), why);
                        continue;
                    }
                };
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
            routes.insert(
                name.into_inner(),
                RouteConfig {
                    source,
                    plugins: route.plugins.into_iter().map(Spanned::into_inner).collect(),
                    access: self.access(&route.allow, &route.deny, &key),
                    read: self.user_list(&route.read, &users, &format!("{key}.read")),
                    publish: self.user_list(&route.publish, &users, &format!("{key}.publish")),
                },
            );
        }
        Config {
            server,
            routes,
            plugins,
            users,
        }
    }

    fn server(&mut self, raw: raw::Server) -> ServerConfig {
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
        if *raw.max_clients.get_ref() == 0 {
            self.problem(
                &raw.max_clients,
                "server.max_clients".into(),
                "must be at least 1".into(),
            );
        }
        ServerConfig {
            rtsp: rtsp.unwrap_or_else(|| socket_default(&defaults.rtsp)),
            http: http.unwrap_or_else(|| socket_default(&defaults.http)),
            rtp_ports,
            webrtc_udp: webrtc_udp.unwrap_or_else(|| socket_default(&defaults.webrtc_udp)),
            max_clients: *raw.max_clients.get_ref(),
            max_bandwidth_kbps: *raw.max_bandwidth_kbps.get_ref(),
            access: self.access(&raw.allow, &raw.deny, "server"),
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

/// Route and feed names are single URL path segments that do not collide with the HTTP API.
fn check_path_segment(name: &str) -> Result<(), String> {
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

fn parse_source(
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

fn parse_port_range(range: &str) -> Result<(u16, u16), String> {
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

#[cfg(test)]
mod tests;
