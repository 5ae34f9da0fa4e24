//! The configuration file: TOML parsed with serde, then checked into typed settings.
//!
//! In: the path of a `wasmcast.toml`. Out: a [`Config`] whose every value has been checked, or a
//! list of [`Problem`]s that each name the file, line, key and what to do about it. The model and
//! its checker only: plugins are known here by name, loading them is the plugin loader's job, and
//! following the file while the server runs is the server's.

mod access;
mod check;
mod raw;
mod users;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use access::{AccessList, IpNet};
use check::Checker;
pub use users::{Credentials, PasswordHash, REALM, TokenHash, Users};

/// Names a route or feed may not take: they are URL paths of the HTTP server.
const RESERVED_NAMES: [&str; 5] = ["api", "metrics", "healthz", "readyz", "static"];

/// A whole, validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub routes: BTreeMap<String, RouteConfig>,
    /// `[routes."PATTERN"]` tables (names with `*`): any route whose name matches, made when a reader
    /// asks for it and pulled on demand.
    pub patterns: BTreeMap<String, PatternConfig>,
    pub plugins: BTreeMap<String, PluginConfig>,
    /// `[users.NAME]`: who may log in, with their password hashes.
    pub users: Users,
    /// Where the events of plugins and routes are POSTed (`webhook = "http://…"`). Kept apart
    /// from the plugins and routes: changing a webhook restarts neither.
    pub webhooks: Webhooks,
}

/// The `webhook` keys of plugins and routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Webhooks {
    pub plugins: BTreeMap<String, url::Url>,
    /// By route name or pattern.
    pub routes: BTreeMap<String, url::Url>,
}

/// The `[server]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub rtsp: SocketAddr,
    pub http: SocketAddr,
    /// First and last port (inclusive) for RTP/RTCP over UDP; the first is even.
    pub rtp_ports: (u16, u16),
    /// The one UDP port every WebRTC viewer shares; its IP unspecified: candidates name the
    /// address each browser reached the HTTP server at.
    pub webrtc_udp: SocketAddr,
    /// The one ICE-TCP port (RFC 6544) every viewer shares; `None` (`"off"`): UDP only.
    pub webrtc_tcp: Option<SocketAddr>,
    /// The address announced to browsers instead of the bound one (NAT, container port mapping).
    pub webrtc_public_ip: Option<IpAddr>,
    pub max_clients: usize,
    pub max_bandwidth_kbps: u64,
    /// Open TCP connections (RTSP and HTTP together) at most, in total and per client address (an
    /// IPv6 client by its /64).
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// New connections a second one client address may open, after a burst of ten seconds' worth.
    pub connection_rate_per_address: usize,
    /// What the kernel may hold unsent for one accepted TCP connection, in bytes (it doubles the
    /// figure for its own bookkeeping): what a reader far away can have in flight, and what a
    /// client that stops reading makes the server hold.
    pub tcp_send_buffer: usize,
    /// On SIGTERM, how long sessions may go on before they are ended (no new ones are admitted).
    pub drain_grace: Duration,
    /// Where plugins' state is kept across restarts (`state_dir`, relative to the config file).
    pub state_dir: Option<PathBuf>,
    /// What one route's publishers may make the server hold.
    pub budget: MemoryBudget,
    /// Who may connect to the server at all.
    pub access: AccessList,
    /// Users who may use the API (`/api/v1/…`); empty: anyone who may connect.
    pub admins: Vec<String>,
}

/// What one route may hold in memory: any access unit over `max_unit_bytes` is dropped where it is
/// assembled (RTP depacketizers, the MPEG-TS demuxer, MP4 samples), and the units waiting in the
/// route's plugin stage and in its ring for readers are each capped at `route_buffer_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    pub max_unit_bytes: usize,
    pub route_buffer_bytes: usize,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget {
            max_unit_bytes: 8 << 20,
            route_buffer_bytes: 64 << 20,
        }
    }
}

/// One `[routes.NAME]` table; with a [`SourceTemplate`], a pattern's ([`PatternConfig`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RouteConfig<Source = SourceConfig> {
    pub source: Source,
    pub plugins: Vec<String>,
    /// Who may read from and publish to this route (on top of the server's list).
    pub access: AccessList,
    /// Users who may read; empty: anyone.
    pub read: Vec<String>,
    /// Users who may publish (push routes); empty: anyone.
    pub publish: Vec<String>,
    /// Re-encode the video, like an ffserver `<Stream>`.
    pub transcode: Option<TranscodeConfig>,
    /// On demand: the source runs only while someone reads the route, and stops this long after
    /// the last reader leaves. `None`: always on.
    pub on_demand: Option<Duration>,
}

impl RouteConfig<()> {
    /// These settings with their source.
    fn with_source<Source>(self, source: Source) -> RouteConfig<Source> {
        RouteConfig {
            source,
            plugins: self.plugins,
            access: self.access,
            read: self.read,
            publish: self.publish,
            transcode: self.transcode,
            on_demand: self.on_demand,
        }
    }
}

/// How long an on-demand route's source outlives its last reader unless the route sets
/// `on_demand_close_after_s` (MediaMTX's `sourceOnDemandCloseAfter` is 10 s too).
pub const DEFAULT_ON_DEMAND_CLOSE_AFTER: Duration = Duration::from_secs(10);

/// A route pattern's settings: every route whose name matches gets them, with its source made from
/// the template.
pub type PatternConfig = RouteConfig<SourceTemplate>;

impl PatternConfig {
    /// The route `name` (which the pattern matches) becomes.
    pub fn route(&self, name: &str) -> Result<RouteConfig, String> {
        let source = self.source.for_route(name)?;
        Ok(RouteConfig {
            source: (),
            plugins: self.plugins.clone(),
            access: self.access.clone(),
            read: self.read.clone(),
            publish: self.publish.clone(),
            transcode: self.transcode.clone(),
            on_demand: self.on_demand,
        }
        .with_source(source))
    }
}

/// A pattern's source, with `{name}` where each route's name goes: `rtsp://origin:8554/{name}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTemplate {
    text: String,
    looping: bool,
    base_dir: PathBuf,
}

impl SourceTemplate {
    /// The source of route `name`.
    pub fn for_route(&self, name: &str) -> Result<SourceConfig, String> {
        check::parse_source(
            name,
            &self.text.replace("{name}", name),
            self.looping,
            &self.base_dir,
        )
    }
}

/// Whether `name` can be a route's name: one URL path segment that is not reserved.
pub fn check_route_name(name: &str) -> Result<(), String> {
    check::check_path_segment(name)
}

/// Whether route `name` matches `pattern`, where each `*` stands for any run of characters (none
/// included) and the rest must be equal.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole name.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Of the patterns that match `name`, the most specific (the most characters besides `*`; then the
/// first by name), so that `cam-*` wins over `*`.
pub fn best_pattern<'a, T>(
    patterns: impl IntoIterator<Item = (&'a String, T)>,
    name: &str,
) -> Option<(&'a String, T)> {
    patterns
        .into_iter()
        .filter(|(pattern, _)| pattern_matches(pattern, name))
        .max_by_key(|(pattern, _)| {
            (
                pattern.chars().filter(|c| *c != '*').count(),
                std::cmp::Reverse(pattern.as_str()),
            )
        })
}

/// A `[routes.NAME.transcode]` table: what the route's video is re-encoded to (H.264 constrained
/// baseline). Sizes and rate left out keep the source's.
#[derive(Clone, Debug, PartialEq)]
pub struct TranscodeConfig {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<f64>,
    pub bitrate_kbps: u32,
    /// Pictures from one keyframe to the next; `None`: two seconds' worth.
    pub keyframe_interval: Option<u32>,
    /// Keep the audio tracks (as they are); false is ffserver's `NoAudio`.
    pub audio: bool,
}

impl TranscodeConfig {
    /// Re-encoding at the source's size and frame rate with the default bit rate: what a route
    /// with frame plugins and no `[transcode]` table gets.
    pub fn at_source_size() -> TranscodeConfig {
        TranscodeConfig {
            width: None,
            height: None,
            fps: None,
            bitrate_kbps: DEFAULT_TRANSCODE_KBPS,
            keyframe_interval: None,
            audio: true,
        }
    }
}

/// Bit rate of a re-encoded route unless its table sets `bitrate_kbps`.
pub const DEFAULT_TRANSCODE_KBPS: u32 = 1000;

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
    pub wasm: WasmSource,
    /// The `config` table, as the JSON the plugin reads.
    pub config: String,
    pub on_error: OnError,
    /// How long one call may run.
    pub time_limit: Duration,
    /// The share of real time the plugin's calls may take on a route, in percent of one core,
    /// over a second (past it the plugin rests; see `plugins::chain`).
    pub cpu_percent: u32,
    /// How large the plugin's memory may grow, in bytes.
    pub memory_limit: usize,
    /// Environment variables the plugin may read (none by default).
    pub env: BTreeMap<String, String>,
    /// Host directories the plugin may read, by the path it sees them at (none by default).
    pub dirs: BTreeMap<String, PathBuf>,
    /// Whether the plugin may open sockets and resolve names (not by default).
    pub network: bool,
    /// How often a stateful plugin's state is saved, so that the instance after a trap starts from
    /// it (`None`: only when the instance is replaced).
    pub snapshot_every: Option<Duration>,
    pub swap: SwapAt,
    /// Where the table is, for messages about loading it; not part of what the plugin is.
    pub origin: Origin,
}

/// Where a plugin's code comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WasmSource {
    /// One of the plugins built into the binary.
    Builtin(String),
    /// A component file, read again whenever it changes.
    File(PathBuf),
}

impl fmt::Display for WasmSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WasmSource::Builtin(name) => write!(f, "builtin:{name}"),
            WasmSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What becomes of a unit whose plugin call failed (trap, time or memory limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Forward the unit as the plugin received it.
    Bypass,
    /// Forward nothing for it.
    Drop,
}

/// When a new version of a plugin (a new build, a new config) takes over on a route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SwapAt {
    /// Between any two units.
    #[default]
    Unit,
    /// Right before the route's next video keyframe (or after 10 s without one), so that the new
    /// version's first picture is one a decoder can start from.
    Keyframe,
}

/// The file and place of a table, for messages. Any two compare equal: moving a table within the
/// file changes nothing that runs.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub file: PathBuf,
    pub position: Option<(usize, usize)>,
}

impl PartialEq for Origin {
    fn eq(&self, _: &Origin) -> bool {
        true
    }
}

impl Origin {
    /// A problem at this place.
    pub fn problem(&self, key: String, message: String) -> Problem {
        Problem {
            file: self.file.clone(),
            position: self.position,
            key,
            message,
        }
    }
}

/// Per-call time limit of a plugin unless its table sets `time_limit_ms`.
const DEFAULT_TIME_LIMIT_MS: u64 = 50;
/// The share of a core a plugin's calls may take unless its table sets `cpu_percent`: room for any
/// plugin that keeps up with its route, and half a core at most for one that cannot.
const DEFAULT_CPU_PERCENT: u64 = 50;
/// Memory limit of a plugin unless its table sets `memory_limit_mb`.
const DEFAULT_MEMORY_LIMIT_MB: u64 = 64;
/// How often a stateful plugin's state is saved unless its table sets `snapshot_every_s`.
const DEFAULT_SNAPSHOT_EVERY_S: u64 = 5;

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

impl Problem {
    /// A problem with no place in a file.
    pub fn general(message: String) -> Problem {
        Problem {
            file: PathBuf::new(),
            position: None,
            key: String::new(),
            message,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.as_os_str().is_empty() {
            return write!(f, "{}", self.message);
        }
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

/// Problems one per line, for people.
pub fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

impl Config {
    /// Reads and validates the file at `path`. Relative paths inside it are taken from its directory.
    ///
    /// An empty file is refused rather than read as "all defaults, no routes": an editor or a
    /// program that saves in place truncates the file before it writes, and a reload that read it
    /// in between would remove every route and move the listeners to their default ports.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        if text.trim().is_empty() {
            return Err(Error::Invalid(vec![Problem {
                file: path.to_owned(),
                position: None,
                key: String::new(),
                message: "the file is empty (still being written?); write at least `[server]`"
                    .into(),
            }]));
        }
        Config::parse(&text, path)
    }

    /// Validates `text` as the contents of the file at `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
        let mut check = Checker::new(path, text);
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

#[cfg(test)]
mod tests;
