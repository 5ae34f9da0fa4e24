//! The `wasmcast` command: `serve` (the default), `check`, `hash-password` and `plugin`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wasmcast::config::{self, Config};
use wasmcast::logs;

const DEFAULT_CONFIG: &str = "config/wasmcast.toml";

#[derive(Parser)]
#[command(name = "wasmcast", version, about = "A programmable live-video router")]
struct Cli {
    /// Log filter, e.g. `info` or `wasmcast=debug`; overrides RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log lines as plain text or as JSON objects, one per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The config file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the routes of the config file (the default command).
    Serve,
    /// Validate the config file; print each problem and exit 1 if there is any.
    Check,
    /// Read a password from standard input and print the hash to store as `[users.USER] password`.
    HashPassword { user: String },
    /// Make a bearer token for USER (for WHEP players, pushes and the API): prints the token, and
    /// the hash to store as `[users.USER] token`.
    NewToken { user: String },
    /// Write and try plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Make a new plugin project NAME in the current directory (or --dir): a packet plugin, a
    /// frame plugin with --frame, or a picture plugin with --picture.
    New {
        name: String,
        /// A frame plugin (decoded pictures, copied in) instead of a packet plugin (access units).
        #[arg(long, conflicts_with = "picture")]
        frame: bool,
        /// A picture plugin (decoded pictures lent by the server, read and written by
        /// rectangle: the cheaper kind of frame plugin).
        #[arg(long)]
        picture: bool,
        /// Where to make the project.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The plugin SDK (plugins/sdk of a wasmcast checkout); defaults to the one this binary
        /// was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Run a plugin over one pass through an MP4 file, as fast as it goes, and report: a packet
    /// plugin over every access unit, a frame plugin over every decoded picture (re-encoded).
    Run {
        /// The plugin component (.wasm).
        wasm: PathBuf,
        /// The MP4 file to read.
        #[arg(long)]
        input: PathBuf,
        /// The plugin's config, as TOML (e.g. `every = 2`) or JSON.
        #[arg(long = "plugin-config", default_value = "")]
        plugin_config: String,
        /// Write the video that comes out here (H.264/H.265 Annex B), for ffprobe or ffplay; a
        /// frame plugin's output is the re-encoded H.264.
        #[arg(long)]
        video_out: Option<PathBuf>,
        /// Per-call time limit in milliseconds.
        #[arg(long, default_value_t = 50)]
        time_limit_ms: u64,
        /// Memory limit in MiB.
        #[arg(long, default_value_t = 64)]
        memory_limit_mb: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logs::init(
        cli.log_level.as_deref(),
        match cli.log_format {
            LogFormat::Text => logs::Format::Text,
            LogFormat::Json => logs::Format::Json,
        },
    );
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => check(&cli.config),
        Command::HashPassword { user } => hash_password(&user),
        Command::NewToken { user } => {
            let token: String = (0..32)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            println!("token: {token}");
            println!(
                "[users.{user}]\ntoken = \"{}\"",
                wasmcast::config::TokenHash::of(&token).to_config()
            );
            println!("# clients send: Authorization: Bearer {token}");
            ExitCode::SUCCESS
        }
        Command::Plugin(command) => match plugin(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("wasmcast: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => match serve(&cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("wasmcast: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    use wasmcast::plugins::authoring;
    match command {
        PluginCommand::New {
            name,
            frame,
            picture,
            dir,
            sdk,
        } => {
            let sdk = sdk.unwrap_or_else(authoring::default_sdk_path);
            let template = match (frame, picture) {
                (_, true) => authoring::Template::Picture,
                (true, false) => authoring::Template::Frame,
                (false, false) => authoring::Template::Packet,
            };
            let project = authoring::new_project(&dir, &name, &sdk, template)?;
            println!(
                "Made {}. Next:\n  cd {}\n  cargo build --release\n  wasmcast plugin run target/wasm32-wasip2/release/{}.wasm --input clip.mp4\nthen add the tables of wasmcast.example.toml to your config.",
                project.display(),
                project.display(),
                name.replace('-', "_")
            );
            Ok(())
        }
        PluginCommand::Run {
            wasm,
            input,
            plugin_config,
            video_out,
            time_limit_ms,
            memory_limit_mb,
        } => {
            let config = plugin_config_json(&plugin_config)?;
            let report = wasmcast::pipeline::trial::run_trial(&wasmcast::pipeline::trial::Trial {
                wasm,
                config,
                input,
                video_out,
                time_limit: std::time::Duration::from_millis(time_limit_ms),
                memory_limit: memory_limit_mb << 20,
            })?;
            println!("{report}");
            Ok(())
        }
    }
}

/// The `--plugin-config` text as the JSON a plugin reads: JSON as it is, or TOML key/values.
fn plugin_config_json(text: &str) -> anyhow::Result<String> {
    if text.trim_start().starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(text).context("--plugin-config is not valid JSON")?;
        return Ok(value.to_string());
    }
    let table: toml::Table = toml::from_str(text).context("--plugin-config is not valid TOML")?;
    Ok(serde_json::to_string(&table)?)
}

fn hash_password(user: &str) -> ExitCode {
    let mut password = String::new();
    if std::io::stdin().read_line(&mut password).is_err() {
        eprintln!("wasmcast: cannot read the password from standard input");
        return ExitCode::FAILURE;
    }
    let password = password.trim_end_matches(['\r', '\n']);
    println!(
        "{}",
        wasmcast::config::PasswordHash::of(user, password).to_config()
    );
    ExitCode::SUCCESS
}

fn check(path: &Path) -> ExitCode {
    let loaded = Config::load(path)
        .map_err(|err| err.to_string())
        .and_then(|config| {
            wasmcast::plugins::Loader::default()
                .load_all(&config, &Default::default())
                .map(|_| config)
                .map_err(|problems| config::display_problems(&problems))
        });
    match loaded {
        Ok(config) => {
            println!(
                "{}: OK ({} routes, {} route patterns, {} plugins)",
                path.display(),
                config.routes.len(),
                config.patterns.len(),
                config.plugins.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path).map_err(|err| match err {
        config::Error::Invalid(_) => anyhow::anyhow!("invalid config:\n{err}"),
        other => other.into(),
    })?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = wasmcast::Server::start(config, Some(path)).await?;
        let rtsp = server.rtsp_addr()?;
        let http = server.http_addr()?;
        let (rtp, rtcp) = server.rtp_ports();
        tracing::info!("HTTP server listening on http://{http}/");
        tracing::info!(
            "RTSP server listening on rtsp://{rtsp}/ (RTP/RTCP over UDP on ports {rtp}-{rtcp})"
        );
        server.run(shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
