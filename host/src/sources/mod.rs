//! Sources: where each route's media comes from.
//!
//! In: a route's [`SourceConfig`]. Out: access units published into the route's [`Stream`], and the
//! stream's [`SourceState`](crate::hub::SourceState) kept true (a source that cannot run says why
//! there, and other routes are not affected).

mod file;
mod live;
mod mp4;
mod push;
mod rtsp_pull;
mod ts;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::SourceConfig;
use crate::hub::Stream;

pub use live::{
    LivePublisher, MAX_UNITS_OVER_BUDGET, OverBudget, PUBLISH_CEILING, PUBLISHER_INBOUND,
    PublishRate, TooFast, TooSlow, TrackKind,
};
pub use mp4::{Mp4Media, SampleRef};
pub use push::{IngestError, TsIngest};

/// Why a source cannot produce media.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a usable MP4 file: {0}")]
    Corrupt(String),
    #[error("no playable track (H.264, H.265 or AAC): {0}")]
    NoTracks(String),
}

/// A running source; dropping it stops the source.
pub enum RunningSource {
    /// A thread that stops when this sender goes.
    Thread(std::sync::mpsc::Sender<()>),
    Task(tokio::task::AbortHandle),
    /// Publishers come to the HTTP and RTSP servers; nothing runs here.
    Publishers,
}

impl Drop for RunningSource {
    fn drop(&mut self) {
        if let RunningSource::Task(task) = self {
            task.abort();
        }
    }
}

/// The description of the MP4 file at `path` and its access units, one pass in decode order.
pub fn mp4_units(
    path: &Path,
) -> Result<
    (
        crate::media::StreamDescription,
        impl Iterator<Item = Result<crate::media::AccessUnit, Error>>,
    ),
    Error,
> {
    file::units(path)
}

/// Starts the source `config` describes, publishing into `stream`.
pub fn start(config: &SourceConfig, stream: Arc<Stream>) -> RunningSource {
    match config {
        SourceConfig::File { path, looping } => {
            let (stop, stopped) = std::sync::mpsc::channel();
            file::spawn(path.clone(), *looping, stream, stopped);
            RunningSource::Thread(stop)
        }
        SourceConfig::Push { .. } => RunningSource::Publishers,
        SourceConfig::RtspPull { url } => {
            RunningSource::Task(tokio::spawn(rtsp_pull::run(url.clone(), stream)).abort_handle())
        }
    }
}
