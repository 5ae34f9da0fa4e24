//! The `wasmcast` command: `serve` (the default) and `check`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wasmcast::config::{self, Config};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match &cli.log_level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => check(&cli.config),
        Command::HashPassword { user } => hash_password(&user),
        Command::Serve => match serve(&cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("wasmcast: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
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
        wasmcast::auth::PasswordHash::of(user, password).to_config()
    );
    ExitCode::SUCCESS
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: OK ({} routes, {} plugins)",
                path.display(),
                config.routes.len(),
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
