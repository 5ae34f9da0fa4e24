//! The file as serde reads it, with the position of every value kept for error messages.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub routes: BTreeMap<Spanned<String>, Route>,
    #[serde(default)]
    pub plugins: BTreeMap<Spanned<String>, Plugin>,
    #[serde(default)]
    pub users: BTreeMap<String, User>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct User {
    pub password: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Server {
    pub rtsp: Spanned<String>,
    pub http: Spanned<String>,
    pub rtp_ports: Spanned<String>,
    pub webrtc_udp: Spanned<String>,
    pub webrtc_tcp: Spanned<String>,
    /// Gone: every viewer shares `webrtc_udp`'s one port. Read to say so.
    pub webrtc_udp_ports: Option<Spanned<u16>>,
    pub webrtc_public_ip: Option<Spanned<String>>,
    pub max_clients: Spanned<usize>,
    pub max_bandwidth_kbps: Spanned<u64>,
    pub max_connections: Spanned<usize>,
    pub max_connections_per_address: Spanned<usize>,
    pub connection_rate_per_address: Spanned<usize>,
    pub tcp_send_buffer_kb: Spanned<usize>,
    pub max_unit_mb: Spanned<usize>,
    pub route_buffer_mb: Spanned<usize>,
    pub drain_grace_s: Spanned<u64>,
    pub state_dir: Option<Spanned<String>>,
    pub allow: Vec<Spanned<String>>,
    pub deny: Vec<Spanned<String>>,
    pub admins: Vec<Spanned<String>>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            rtsp: Spanned::new(0..0, "0.0.0.0:8554".into()),
            http: Spanned::new(0..0, "0.0.0.0:8090".into()),
            rtp_ports: Spanned::new(0..0, "30000-30999".into()),
            webrtc_udp: Spanned::new(0..0, "0.0.0.0:8189".into()),
            webrtc_tcp: Spanned::new(0..0, "0.0.0.0:8189".into()),
            webrtc_udp_ports: None,
            webrtc_public_ip: None,
            max_clients: Spanned::new(0..0, 100),
            max_bandwidth_kbps: Spanned::new(0..0, 100_000),
            max_connections: Spanned::new(0..0, 1024),
            max_connections_per_address: Spanned::new(0..0, 128),
            connection_rate_per_address: Spanned::new(0..0, 50),
            tcp_send_buffer_kb: Spanned::new(0..0, 256),
            max_unit_mb: Spanned::new(0..0, 8),
            route_buffer_mb: Spanned::new(0..0, 64),
            drain_grace_s: Spanned::new(0..0, 20),
            state_dir: None,
            allow: Vec::new(),
            deny: Vec::new(),
            admins: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Route {
    pub source: Spanned<String>,
    #[serde(rename = "loop")]
    pub looping: Option<Spanned<bool>>,
    #[serde(default)]
    pub plugins: Vec<Spanned<String>>,
    pub transcode: Option<Spanned<Transcode>>,
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub read: Vec<Spanned<String>>,
    #[serde(default)]
    pub publish: Vec<Spanned<String>>,
    pub on_demand: Option<Spanned<bool>>,
    pub on_demand_close_after_s: Option<Spanned<u64>>,
    pub webhook: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Plugin {
    pub wasm: Spanned<String>,
    #[serde(default)]
    pub config: toml::Table,
    pub on_error: Option<Spanned<String>>,
    pub time_limit_ms: Option<Spanned<u64>>,
    pub cpu_percent: Option<Spanned<u64>>,
    pub memory_limit_mb: Option<Spanned<u64>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub dirs: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub network: bool,
    pub webhook: Option<Spanned<String>>,
    pub snapshot_every_s: Option<Spanned<u64>>,
    pub swap: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Transcode {
    pub width: Option<Spanned<u32>>,
    pub height: Option<Spanned<u32>>,
    pub fps: Option<Spanned<f64>>,
    pub bitrate_kbps: Option<Spanned<u32>>,
    pub keyframe_interval: Option<Spanned<u32>>,
    pub audio: Option<bool>,
}
