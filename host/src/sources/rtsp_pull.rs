//! The `rtsp://` source: reads another RTSP server (a camera, or another wasmcast as origin) with
//! retina and republishes what it gets; reconnects with back-off when the origin drops, and when it
//! holds the connection without answering or without sending media for [`ORIGIN_TIMEOUT`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use retina::client::{
    PlayOptions, Session, SessionOptions, SetupOptions, TcpTransportOptions, Transport,
};
use retina::codec::{CodecItem, FrameFormat, ParametersRef, VideoParametersCodec};
use url::Url;

use super::live::{LivePublisher, TrackKind};
use crate::hub::Stream;
use crate::media::{AccessUnit, Codec};

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the back-off.
const STABLE: Duration = Duration::from_secs(10);
/// Time the origin has to answer each request, and the longest it may go without sending media
/// (as a publisher may: a hung camera would otherwise hold its route, readers waiting, for ever).
const ORIGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one pull attempt ended.
#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error(transparent)]
    Retina(#[from] retina::Error),
    #[error("{0}")]
    Busy(#[from] crate::hub::Busy),
    #[error("the origin offers no track we carry (H.264, H.265, AAC)")]
    NoTracks,
    #[error("the origin ended the stream")]
    Ended,
    #[error("the origin did not answer {0} within {ORIGIN_TIMEOUT:?}")]
    NoAnswer(&'static str),
    #[error("the origin sent no media for {ORIGIN_TIMEOUT:?}")]
    Silent,
}

/// `request`, given [`ORIGIN_TIMEOUT`] to be answered.
async fn answered<T>(
    what: &'static str,
    request: impl std::future::Future<Output = Result<T, retina::Error>>,
) -> Result<T, PullError> {
    tokio::time::timeout(ORIGIN_TIMEOUT, request)
        .await
        .map_err(|_| PullError::NoAnswer(what))?
        .map_err(PullError::from)
}

/// Pulls `url` into `stream` until the task is aborted.
pub(super) async fn run(url: Url, stream: Arc<Stream>) {
    let route = stream.name().to_owned();
    let mut retry = FIRST_RETRY;
    loop {
        let started = Instant::now();
        let err = pull(&url, &stream).await.err().unwrap_or(PullError::Ended);
        if started.elapsed() >= STABLE {
            retry = FIRST_RETRY;
        }
        tracing::warn!(route, %url, "RTSP pull: {err}; retrying in {retry:?}");
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

async fn pull(url: &Url, stream: &Arc<Stream>) -> Result<(), PullError> {
    let claim = stream.claim()?;
    let options = SessionOptions::default()
        .user_agent(concat!("wasmcast/", env!("CARGO_PKG_VERSION")).into());
    let mut session = answered("DESCRIBE", Session::describe(url.clone(), options)).await?;
    let mut live = LivePublisher::with_independent_clocks(Arc::clone(stream), claim);
    // The live track of each origin stream we take.
    let mut tracks = vec![None; session.streams().len()];
    for (index, origin) in session.streams().iter().enumerate() {
        let declared = match (origin.media(), origin.encoding_name(), origin.parameters()) {
            ("video", "h264", parameters) => Some((TrackKind::H264, video_codec(parameters))),
            ("video", "h265", parameters) => Some((TrackKind::H265, video_codec(parameters))),
            ("audio", "mpeg4-generic", Some(ParametersRef::Audio(audio))) => Some((
                TrackKind::Audio,
                Some(Codec::Aac {
                    config: bytes::Bytes::copy_from_slice(audio.extra_data()),
                    sample_rate: audio.clock_rate(),
                    channels: audio.channels().get(),
                }),
            )),
            _ => None,
        };
        if let Some((kind, codec)) = declared {
            tracks[index] = Some(live.add_track(kind, codec));
        }
    }
    if tracks.iter().all(Option::is_none) {
        return Err(PullError::NoTracks);
    }
    let format = FrameFormat {
        h26x_framing: retina::codec::h26x::Framing::AnnexB,
        ..FrameFormat::MP4
    };
    for (index, track) in tracks.iter().enumerate() {
        if track.is_some() {
            let setup = SetupOptions::default()
                .transport(Transport::Tcp(TcpTransportOptions::default()))
                .frame_format(format);
            answered("SETUP", session.setup(index, setup)).await?;
        }
    }
    let mut playing = answered("PLAY", session.play(PlayOptions::default()))
        .await?
        .demuxed()?;
    tracing::info!(route = stream.name(), %url, "RTSP pull connected");
    while let Some(item) = tokio::time::timeout(ORIGIN_TIMEOUT, playing.next())
        .await
        .map_err(|_| PullError::Silent)?
    {
        let (origin, pts, keyframe, data) = match item? {
            CodecItem::VideoFrame(frame) => {
                let origin = frame.stream_id();
                if frame.has_new_parameters()
                    && let (Some(Some(track)), Some(stream)) =
                        (tracks.get(origin), playing.streams().get(origin))
                    && let Some(codec) = video_codec(stream.parameters())
                {
                    live.learn(*track, codec);
                }
                (
                    origin,
                    frame.timestamp().timestamp(),
                    frame.is_random_access_point(),
                    frame.into_data(),
                )
            }
            CodecItem::AudioFrame(frame) => (
                frame.stream_id(),
                frame.timestamp().timestamp(),
                true,
                frame.data().to_vec(),
            ),
            _ => continue,
        };
        let Some(Some(track)) = tracks.get(origin) else {
            continue;
        };
        live.send(
            AccessUnit {
                track: *track,
                pts,
                dts: pts,
                keyframe,
                data: data.into(),
            },
            Instant::now(),
        );
    }
    Ok(())
}

fn video_codec(parameters: Option<ParametersRef<'_>>) -> Option<Codec> {
    let Some(ParametersRef::Video(video)) = parameters else {
        return None;
    };
    match video.codec_params() {
        VideoParametersCodec::H264 { sps, pps } => Some(Codec::H264 {
            sps: sps.clone(),
            pps: pps.clone(),
        }),
        VideoParametersCodec::H265 { vps, sps, pps } => Some(Codec::H265 {
            vps: vps.clone(),
            sps: sps.clone(),
            pps: pps.clone(),
        }),
        _ => None,
    }
}
