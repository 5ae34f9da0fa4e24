use super::check::parse_port_range;
use super::*;

fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    Config::parse(text, Path::new("/etc/wasmcast/wasmcast.toml")).map_err(|err| match err {
        Error::Invalid(problems) => problems,
        Error::Read { .. } => panic!("parse never reads"),
    })
}

#[test]
fn spec_example_parses_with_defaults() {
    let config = parse(
        r#"
[server]
rtsp = "127.0.0.1:8554"

[routes.unicast]
source = "file:../media/sample.mp4"
"#,
    )
    .expect("valid config");
    assert_eq!(
        config.server.rtsp,
        "127.0.0.1:8554".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.server.rtp_ports, (30000, 30999));
    assert_eq!(config.server.max_clients, 100);
    assert_eq!(
        config.routes["unicast"].source,
        SourceConfig::File {
            path: PathBuf::from("/etc/wasmcast/../media/sample.mp4"),
            looping: true
        }
    );
}

#[test]
fn webrtc_network_keys() {
    let config = parse("[server]\nwebrtc_public_ip = \"203.0.113.7\"\n").expect("valid");
    assert_eq!(
        config.server.webrtc_udp,
        "0.0.0.0:8189".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(
        config.server.webrtc_tcp,
        Some("0.0.0.0:8189".parse().unwrap())
    );
    let udp_only = parse("[server]\nwebrtc_tcp = \"off\"\n").expect("valid");
    assert_eq!(udp_only.server.webrtc_tcp, None);
    assert_eq!(
        config.server.webrtc_public_ip,
        Some("203.0.113.7".parse().unwrap())
    );
    let problems = parse("[server]\nwebrtc_udp_ports = 0\nwebrtc_public_ip = \"0.0.0.0\"\n")
        .expect_err("invalid");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(
        text[0].contains("server.webrtc_udp_ports: is no longer used"),
        "{text:?}"
    );
    assert!(
        text[1]
            .contains("server.webrtc_public_ip: `0.0.0.0` is not an IP address browsers can reach"),
        "{text:?}"
    );
}

#[test]
fn transcode_values_out_of_range_are_refused() {
    let problems = parse(
        "[routes.a]\nsource = \"file:a.mp4\"\n[routes.a.transcode]\n\
         width = 641\nheight = 480\nfps = 0.5\nbitrate_kbps = 5\nkeyframe_interval = 0\n",
    )
    .expect_err("invalid");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for (key, advice) in [
        ("routes.a.transcode.width", "even number of pixels"),
        ("routes.a.transcode.fps", "1 to 120 frames per second"),
        ("routes.a.transcode.bitrate_kbps", "10 to 100000 kbit/s"),
        ("routes.a.transcode.keyframe_interval", "1 to 1000 pictures"),
    ] {
        assert!(
            text.iter()
                .any(|t| t.contains(&format!("{key}: give")) && t.contains(advice)),
            "{key}: {text:?}"
        );
    }
    assert_eq!(text.len(), 4, "{text:?}");
    let config = parse(
        "[routes.a]\nsource = \"file:a.mp4\"\n[routes.a.transcode]\n\
         width = 640\nheight = 480\nfps = 24\nbitrate_kbps = 100\nkeyframe_interval = 48\n",
    )
    .expect("valid");
    assert_eq!(
        config.routes["a"]
            .transcode
            .as_ref()
            .map(|t| t.bitrate_kbps),
        Some(100)
    );
}

#[test]
fn connection_caps_and_memory_budget() {
    let config = parse("[server]\n").expect("valid");
    assert_eq!(config.server.max_connections, 1024);
    assert_eq!(config.server.max_connections_per_address, 128);
    assert_eq!(config.server.connection_rate_per_address, 50);
    assert_eq!(config.server.tcp_send_buffer, 256 << 10);
    assert_eq!(config.server.budget, MemoryBudget::default());
    let config = parse("[server]\ntcp_send_buffer_kb = 4096\n").expect("valid");
    assert_eq!(config.server.tcp_send_buffer, 4 << 20);
    let config = parse("[server]\nmax_unit_mb = 2\nroute_buffer_mb = 16\n").expect("valid");
    assert_eq!(
        config.server.budget,
        MemoryBudget {
            max_unit_bytes: 2 << 20,
            route_buffer_bytes: 16 << 20
        }
    );
    let problems = parse(
        "[server]\nmax_connections = 0\nmax_connections_per_address = 0\nconnection_rate_per_address = 0\nmax_unit_mb = 0\nroute_buffer_mb = 9999\ntcp_send_buffer_kb = 8\n",
    )
    .expect_err("invalid");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for key in [
        "server.max_connections: must be at least 1",
        "server.max_connections_per_address: must be at least 1",
        "server.connection_rate_per_address: must be at least 1",
        "server.max_unit_mb: must be from 1 to 256",
        "server.route_buffer_mb: must be from 4 to 4096",
        "server.tcp_send_buffer_kb: must be from 16 to 65536 (KiB)",
    ] {
        assert!(text.iter().any(|t| t.contains(key)), "{key}: {text:?}");
    }
    let problems =
        parse("[server]\nmax_unit_mb = 32\nroute_buffer_mb = 16\n").expect_err("invalid");
    assert!(
        problems[0]
            .to_string()
            .contains("route_buffer_mb: must be at least server.max_unit_mb"),
        "{problems:?}"
    );
}

#[test]
fn an_empty_file_is_refused_not_read_as_defaults() {
    let dir = std::env::temp_dir().join(format!("wasmcast-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wasmcast.toml");
    std::fs::write(&path, " \n").unwrap();
    let err = Config::load(&path).expect_err("empty");
    assert!(err.to_string().contains("the file is empty"), "{err}");
    std::fs::write(&path, "[server]\n").unwrap();
    assert!(Config::load(&path).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn loop_false_is_kept() {
    let config = parse("[routes.a]\nsource = \"file:a.mp4\"\nloop = false\n").expect("valid");
    assert!(matches!(
        config.routes["a"].source,
        SourceConfig::File { looping: false, .. }
    ));
}

#[test]
fn problems_name_line_and_key() {
    let problems = parse(
        "[server]\nrtsp = \"nonsense\"\n\n[routes.api]\nsource = \"file:x.mp4\"\n\n[routes.b]\nsource = \"ftp://x\"\n",
    )
    .expect_err("invalid");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(text[0].starts_with("/etc/wasmcast/wasmcast.toml:2:8: server.rtsp: `nonsense`"));
    assert!(text[1].starts_with("/etc/wasmcast/wasmcast.toml:4:9: routes.api: `api` is reserved"));
    assert!(text[2].starts_with("/etc/wasmcast/wasmcast.toml:8:10: routes.b.source: `ftp://x`"));
}

#[test]
fn syntax_errors_and_unknown_keys_have_positions() {
    let problems = parse("[routes.a]\nsource = \n").expect_err("invalid");
    assert_eq!(problems[0].position.map(|p| p.0), Some(2));
    let problems = parse("[routes.a]\nsource = \"file:a.mp4\"\nsorce = 1\n").expect_err("invalid");
    assert_eq!(problems[0].position.map(|p| p.0), Some(3));
    assert!(
        problems[0].message.contains("sorce"),
        "{}",
        problems[0].message
    );
}

#[test]
fn a_plugins_share_of_real_time_has_a_default_and_a_range() {
    let config = parse("[plugins.p]\nwasm = \"builtin:passthrough\"\n").expect("valid");
    assert_eq!(config.plugins["p"].cpu_percent, 50);
    assert_eq!(config.plugins["p"].time_limit, Duration::from_millis(50));
    let config =
        parse("[plugins.p]\nwasm = \"builtin:passthrough\"\ncpu_percent = 100\n").expect("valid");
    assert_eq!(config.plugins["p"].cpu_percent, 100);
    for wrong in [0, 101] {
        let problems = parse(&format!(
            "[plugins.p]\nwasm = \"builtin:passthrough\"\ncpu_percent = {wrong}\n"
        ))
        .expect_err("invalid");
        assert!(
            problems
                .iter()
                .any(|p| p.key == "plugins.p.cpu_percent" && p.message.contains("1 to 100")),
            "{problems:?}"
        );
    }
}

#[test]
fn unknown_plugin_is_refused() {
    let problems =
        parse("[routes.a]\nsource = \"file:a.mp4\"\nplugins = [\"nope\"]\n").expect_err("invalid");
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("no plugin named `nope`"))
    );
}

#[test]
fn port_range_must_hold_pairs() {
    assert_eq!(parse_port_range("30000-30999"), Ok((30000, 30999)));
    assert!(parse_port_range("30001-30999").is_err());
    assert!(parse_port_range("30000-30000").is_err());
    assert!(parse_port_range("30000").is_err());
}

#[test]
fn push_sources_name_their_feed() {
    let config =
        parse("[routes.feed]\nsource = \"push:feed.ffm\"\n[routes.cam]\nsource = \"push\"\n")
            .expect("valid");
    assert_eq!(
        config.routes["feed"].source,
        SourceConfig::Push {
            feed: "feed.ffm".into()
        }
    );
    assert_eq!(
        config.routes["cam"].source,
        SourceConfig::Push { feed: "cam".into() }
    );
    let problems = parse("[routes.a]\nsource = \"push:x\"\n[routes.b]\nsource = \"push:x\"\n")
        .expect_err("one feed, two routes");
    assert!(
        problems[0].message.contains("already takes the feed `x`"),
        "{problems:?}"
    );
}

#[test]
fn access_lists_parse_and_bad_ranges_are_named() {
    let config = parse(
        "[server]\ndeny = [\"10.0.0.0/8\"]\n[routes.a]\nsource = \"file:a.mp4\"\nallow = [\"127.0.0.1\", \"::1\"]\n",
    )
    .expect("valid");
    assert_eq!(config.server.access.deny.len(), 1);
    assert_eq!(config.routes["a"].access.allow.len(), 2);
    let problems = parse("[routes.a]\nsource = \"file:a.mp4\"\nallow = [\"10.0.0.0/40\"]\n")
        .expect_err("invalid");
    assert!(
        problems[0].to_string().contains("routes.a.allow"),
        "{problems:?}"
    );
}

#[test]
fn patterns_match_by_their_stars() {
    assert!(pattern_matches("*", "cam1"));
    assert!(pattern_matches("cam-*", "cam-7"));
    assert!(pattern_matches("cam-*", "cam-"));
    assert!(!pattern_matches("cam-*", "cam7"));
    assert!(pattern_matches("*-hd", "door-hd"));
    assert!(!pattern_matches("*-hd", "door-sd"));
    assert!(pattern_matches("site-*-cam-*", "site-3-cam-12"));
    assert!(!pattern_matches("site-*-cam-*", "site-3-door-12"));
    assert!(
        !pattern_matches("a*a", "a"),
        "the two ends cannot share a character"
    );
    let patterns = BTreeMap::from([("*".to_owned(), 1), ("cam-*".to_owned(), 2)]);
    assert_eq!(best_pattern(&patterns, "cam-1").map(|(_, n)| *n), Some(2));
    assert_eq!(best_pattern(&patterns, "door").map(|(_, n)| *n), Some(1));
}

#[test]
fn a_pattern_route_is_pulled_on_demand_from_its_template() {
    let config = parse(
        r#"
[routes."*"]
source = "rtsp://origin:8554/{name}"
on_demand_close_after_s = 3

[routes.lobby]
source = "rtsp://origin:8554/lobby"
on_demand = true
"#,
    )
    .expect("valid config");
    assert!(config.routes.keys().eq(["lobby"]));
    assert_eq!(
        config.routes["lobby"].on_demand,
        Some(DEFAULT_ON_DEMAND_CLOSE_AFTER)
    );
    let pattern = &config.patterns["*"];
    assert_eq!(pattern.on_demand, Some(Duration::from_secs(3)));
    let route = pattern.route("cam-2").expect("a source for cam-2");
    assert_eq!(
        route.source,
        SourceConfig::RtspPull {
            url: url::Url::parse("rtsp://origin:8554/cam-2").unwrap()
        }
    );
    assert_eq!(route.on_demand, Some(Duration::from_secs(3)));
}

#[test]
fn bad_patterns_and_on_demand_keys_are_refused() {
    let problems = parse(
        r#"
[routes."cam-*"]
source = "rtsp://origin:8554/fixed"

[routes."feed-*"]
source = "push"

[routes."door-*"]
source = "rtsp://origin:8554/{name}"
on_demand = false

[routes.pushed]
source = "push"
on_demand = true

[routes.always]
source = "file:a.mp4"
on_demand_close_after_s = 5
"#,
    )
    .expect_err("invalid");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let expected = [
        "routes.always.on_demand_close_after_s: applies only to on-demand routes",
        "routes.cam-*.source: a pattern's source names each route with `{name}`",
        "routes.door-*.on_demand: a pattern's routes are always pulled on demand",
        "routes.feed-*.source: a pattern's source names each route with `{name}`",
        "routes.pushed.on_demand: a push route has no source to start on demand",
    ];
    assert_eq!(text.len(), expected.len(), "{text:?}");
    for (problem, expected) in text.iter().zip(expected) {
        assert!(problem.contains(expected), "{problem} ∌ {expected}");
    }
    let problems = parse("[routes.\"feed-*\"]\nsource = \"push:{name}\"\n").expect_err("invalid");
    assert!(
        problems[0]
            .to_string()
            .contains("a pattern's source is pulled on demand"),
        "{problems:?}"
    );
}
