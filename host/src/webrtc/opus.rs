//! Opus for browsers from a route's AAC: browsers play no AAC over WebRTC, so a route with AAC
//! audio gets an Opus rendition for its WebRTC viewers, made once per route (not per viewer) and
//! only while someone watches.
//!
//! A task reads the route's AAC units as any reader does and hands them to a thread of the
//! rendition's own (decoding and encoding are CPU work, kept off the tokio reactor): AAC-LC is
//! decoded (symphonia), put on 48 kHz stereo (rubato, when the source has another rate), and
//! encoded as 20 ms Opus frames (libopus), which go to the viewers through a broadcast channel.
//! The rendition's RTP clock is the AAC track's, counted at 48 kHz: a frame's timestamp is where
//! its sound belongs on the route's clock (the resampler's and the Opus encoder's look-ahead taken
//! off), and [`Rendition::rtp_timestamp_at`] gives the
//! viewers' sender reports the same clock, so browsers keep it in step with the picture however
//! long the transcoding took. A gap in the source is a gap in the rendition. The last viewer to leave drops the rendition: the
//! task stops, and with it the thread.
//!
//! Bounds: the units waiting for the thread and the frames waiting for a viewer are both capped
//! (a slow thread drops units; a slow viewer misses frames, as UDP would).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Async, FixedAsync, PolynomialDegree, Resampler};
use symphonia_codec_aac::AacDecoder;
use symphonia_core::codecs::audio::well_known::CODEC_ID_AAC;
use symphonia_core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia_core::packet::Packet;
use symphonia_core::units::{Duration as Frames, Timestamp};
use tokio::sync::broadcast;

use crate::hub::{MediaInfo, Stream};
use crate::media::Codec;

/// Opus's clock, and the rate it encodes here.
const OPUS_RATE: u32 = 48_000;
/// One Opus frame: 20 ms at 48 kHz, per channel.
pub const FRAME_SAMPLES: usize = 960;
/// AAC-LC frames hold 1024 samples per channel.
const AAC_FRAME_SAMPLES: usize = 1024;
/// AAC units waiting for the encoding thread.
const UNIT_QUEUE: usize = 32;
/// Opus frames a viewer may fall behind by before it misses some.
const FRAME_QUEUE: usize = 64;
/// What one Opus frame may take.
const MAX_OPUS_FRAME: usize = 1500;
/// The rendition's bitrate: music-grade stereo.
const OPUS_BITRATE: i32 = 96_000;
/// A jump in the source's timestamps larger than this restarts the rendition's count.
const GAP_SAMPLES: i64 = OPUS_RATE as i64 / 5;

/// One encoded Opus frame and its timestamp on the 48 kHz clock.
#[derive(Clone, Debug)]
pub struct OpusFrame {
    pub timestamp: u32,
    pub data: Bytes,
}

/// Why a route's AAC cannot be turned into Opus.
#[derive(Debug, thiserror::Error)]
pub enum RenditionError {
    #[error("the route's audio is not AAC")]
    NotAac,
    #[error("the route's AAC cannot be decoded here ({0}); only AAC-LC, mono or stereo, is")]
    Decoder(String),
    #[error("the Opus encoder failed: {0}")]
    Encoder(String),
    #[error("the route's AAC sample rate {0} Hz cannot be resampled: {1}")]
    Resampler(u32, String),
}

/// The renditions running now, by route.
#[derive(Default)]
pub struct Renditions {
    running: Mutex<HashMap<String, Weak<Rendition>>>,
    cost: Arc<Cost>,
}

/// What the renditions did, in all.
#[derive(Default)]
struct Cost {
    frames: AtomicU64,
    nanos: AtomicU64,
}

/// The renditions' figures for `/metrics`.
pub struct OpusStats {
    pub running: usize,
    pub frames: u64,
    pub transcode_seconds: f64,
}

impl Renditions {
    /// The Opus rendition of `stream`'s AAC track `track`, started if none runs.
    pub fn get(
        &self,
        stream: &Arc<Stream>,
        track: usize,
    ) -> Result<Arc<Rendition>, RenditionError> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|_, rendition| rendition.strong_count() > 0);
        if let Some(rendition) = running.get(stream.name()).and_then(Weak::upgrade)
            && Arc::ptr_eq(&rendition.stream, stream)
            && rendition.track == track
        {
            return Ok(rendition);
        }
        let rendition = Arc::new(Rendition::start(stream, track, Arc::clone(&self.cost))?);
        running.insert(stream.name().to_owned(), Arc::downgrade(&rendition));
        Ok(rendition)
    }

    pub fn stats(&self) -> OpusStats {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        OpusStats {
            running: running.values().filter(|r| r.strong_count() > 0).count(),
            frames: self.cost.frames.load(Ordering::Relaxed),
            transcode_seconds: self.cost.nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A route's Opus rendition, running while someone holds it.
pub struct Rendition {
    stream: Arc<Stream>,
    track: usize,
    sample_rate: u32,
    frames: broadcast::Sender<OpusFrame>,
    /// The AAC track's latest RTP timestamp, extended past 32 bits; `i64::MIN` before the first.
    aac_clock: Arc<AtomicI64>,
    feeder: tokio::task::JoinHandle<()>,
}

impl Rendition {
    fn start(
        stream: &Arc<Stream>,
        track: usize,
        cost: Arc<Cost>,
    ) -> Result<Rendition, RenditionError> {
        let media = stream.media().ok_or(RenditionError::NotAac)?;
        let Some(Codec::Aac {
            config,
            sample_rate,
            channels,
        }) = media.description.tracks.get(track).map(|t| t.codec.clone())
        else {
            return Err(RenditionError::NotAac);
        };
        let aac_clock = Arc::new(AtomicI64::new(i64::MIN));
        let transcoder = Transcoder::new(&config, sample_rate, channels, Arc::clone(&aac_clock))?;
        let (frames, _) = broadcast::channel(FRAME_QUEUE);
        let (units, queued) = sync_channel(UNIT_QUEUE);
        let sender = frames.clone();
        let route = stream.name().to_owned();
        std::thread::Builder::new()
            .name(format!("opus {route}"))
            .spawn(move || transcoder.run(queued, sender, &route, &cost))
            .map_err(|err| RenditionError::Encoder(err.to_string()))?;
        let feeder = tokio::spawn(feed(Arc::clone(stream), track, units));
        Ok(Rendition {
            stream: Arc::clone(stream),
            track,
            sample_rate,
            frames,
            aac_clock,
            feeder,
        })
    }

    /// The rendition's RTP timestamp for the instant `now`, for sender reports.
    pub fn rtp_timestamp_at(&self, media: &MediaInfo, now: std::time::Instant) -> Option<u32> {
        let latest = self.aac_clock.load(Ordering::Acquire);
        if latest == i64::MIN {
            return None;
        }
        let at = extend(latest, media.rtp_timestamp_at(self.track, now)?);
        Some(to_opus_clock(at, self.sample_rate) as u32)
    }

    /// The frames from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<OpusFrame> {
        self.frames.subscribe()
    }
}

impl Drop for Rendition {
    fn drop(&mut self) {
        // The thread ends when the feeder's end of its queue goes.
        self.feeder.abort();
    }
}

/// `timestamp` (32 bits, wrapping) extended past 32 bits, as the one nearest `latest`.
fn extend(latest: i64, timestamp: u32) -> i64 {
    // The difference modulo 2^32, taken as signed: the nearest way round.
    latest + i64::from(timestamp.wrapping_sub(latest as u32) as i32)
}

/// An extended RTP timestamp on an AAC clock of `sample_rate`, on the 48 kHz clock.
fn to_opus_clock(timestamp: i64, sample_rate: u32) -> i64 {
    (i128::from(timestamp) * i128::from(OPUS_RATE) / i128::from(sample_rate.max(1))) as i64
}

/// Reads the route's AAC units (with their RTP timestamps) for the thread; a full queue drops
/// them.
async fn feed(stream: Arc<Stream>, track: usize, units: SyncSender<(u32, Bytes)>) {
    let Some(mut reader) = stream.subscribe() else {
        return;
    };
    while let Some(unit) = reader.next().await {
        if unit.au.track != track {
            continue;
        }
        if let Err(TrySendError::Disconnected(_)) =
            units.try_send((unit.rtp.timestamp, unit.au.data.clone()))
        {
            return;
        }
    }
}

/// AAC in, Opus out, on the rendition's thread.
struct Transcoder {
    decoder: AacDecoder,
    encoder: opus::Encoder,
    resampler: Option<Async<f32>>,
    sample_rate: u32,
    /// Decoded samples as interleaved stereo, and after resampling.
    stereo: Vec<f32>,
    resampled: Vec<f32>,
    /// 48 kHz stereo not yet encoded, and the timestamp of its first sample.
    pending: Vec<f32>,
    pending_timestamp: Option<i64>,
    encoded: Vec<u8>,
    /// How far behind its AAC unit's timestamp the sound that comes out is, at 48 kHz.
    delay: i64,
    aac_clock: Arc<AtomicI64>,
}

impl Transcoder {
    fn new(
        config: &[u8],
        sample_rate: u32,
        channels: u16,
        aac_clock: Arc<AtomicI64>,
    ) -> Result<Transcoder, RenditionError> {
        let mut parameters = AudioCodecParameters::new();
        parameters
            .for_codec(CODEC_ID_AAC)
            .with_sample_rate(sample_rate)
            .with_extra_data(config.into());
        let decoder = AacDecoder::try_new(&parameters, &AudioDecoderOptions::default())
            .map_err(|err| RenditionError::Decoder(err.to_string()))?;
        if channels > 2 {
            return Err(RenditionError::Decoder(format!("{channels} channels")));
        }
        let mut encoder =
            opus::Encoder::new(OPUS_RATE, opus::Channels::Stereo, opus::Application::Audio)
                .map_err(|err| RenditionError::Encoder(err.to_string()))?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))
            .map_err(|err| RenditionError::Encoder(err.to_string()))?;
        let resampler = (sample_rate != OPUS_RATE)
            .then(|| {
                Async::new_poly(
                    f64::from(OPUS_RATE) / f64::from(sample_rate),
                    1.1,
                    PolynomialDegree::Cubic,
                    AAC_FRAME_SAMPLES,
                    2,
                    FixedAsync::Input,
                )
            })
            .transpose()
            .map_err(|err| RenditionError::Resampler(sample_rate, err.to_string()))?;
        let look_ahead = encoder
            .get_lookahead()
            .map_err(|err| RenditionError::Encoder(err.to_string()))?;
        // A unit's decoded sound belongs at its timestamp (MPEG-TS and RTP time AAC that way, and
        // the MP4 source takes the priming off); what comes out of the resampler and the encoder
        // is later by their look-ahead.
        let delay =
            i64::from(look_ahead) + resampler.as_ref().map_or(0, |r| r.output_delay() as i64);
        Ok(Transcoder {
            delay,
            aac_clock,
            decoder,
            encoder,
            resampler,
            sample_rate,
            stereo: Vec::new(),
            resampled: Vec::new(),
            pending: Vec::new(),
            pending_timestamp: None,
            encoded: vec![0; MAX_OPUS_FRAME],
        })
    }

    fn run(
        mut self,
        units: Receiver<(u32, Bytes)>,
        frames: broadcast::Sender<OpusFrame>,
        route: &str,
        cost: &Cost,
    ) {
        let mut failures = 0u64;
        let mut latest: Option<i64> = None;
        while let Ok((timestamp, data)) = units.recv() {
            let started = Instant::now();
            let at = latest.map_or(i64::from(timestamp), |l| extend(l, timestamp));
            latest = Some(at);
            self.aac_clock.store(at, Ordering::Release);
            match self.push(at, &data, &frames) {
                Ok(made) => {
                    cost.frames.fetch_add(made, Ordering::Relaxed);
                }
                Err(err) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::debug!(route, failures, "AAC to Opus: {err}");
                    }
                }
            }
            cost.nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// Decodes one AAC unit whose (extended) RTP timestamp is `timestamp` and sends the Opus
    /// frames it completes; how many.
    fn push(
        &mut self,
        timestamp: i64,
        data: &[u8],
        frames: &broadcast::Sender<OpusFrame>,
    ) -> Result<u64, String> {
        let packet = Packet::new(
            0,
            Timestamp::new(timestamp),
            Frames::new(AAC_FRAME_SAMPLES as u64),
            data,
        );
        let decoded = self.decoder.decode(&packet).map_err(|e| e.to_string())?;
        let channels = decoded.spec().channels().count().max(1);
        let mut interleaved = Vec::new();
        decoded.copy_to_vec_interleaved::<f32>(&mut interleaved);
        self.stereo.clear();
        for frame in interleaved.chunks_exact(channels) {
            let left = frame[0];
            let right = frame.get(1).copied().unwrap_or(left);
            self.stereo.extend([left, right]);
        }
        let samples = match &mut self.resampler {
            None => &self.stereo,
            Some(resampler) => {
                let frames_in = self.stereo.len() / 2;
                let input =
                    InterleavedSlice::new(&self.stereo, 2, frames_in).map_err(|e| e.to_string())?;
                let output = resampler.process(&input, None).map_err(|e| e.to_string())?;
                self.resampled = output.take_data();
                &self.resampled
            }
        };
        // Where the sound that came out belongs on the 48 kHz clock; a jump restarts the count.
        let at = to_opus_clock(timestamp, self.sample_rate) - self.delay;
        let expected = self
            .pending_timestamp
            .map(|t| t + (self.pending.len() / 2) as i64);
        if expected.is_none_or(|e| (at - e).abs() > GAP_SAMPLES) {
            self.pending.clear();
            self.pending_timestamp = Some(at);
        }
        self.pending.extend_from_slice(samples);
        let mut made = 0;
        while self.pending.len() >= FRAME_SAMPLES * 2 {
            let size = self
                .encoder
                .encode_float(&self.pending[..FRAME_SAMPLES * 2], &mut self.encoded)
                .map_err(|e| e.to_string())?;
            let timestamp = self.pending_timestamp.unwrap_or(at);
            // No receiver now is not an error: viewers come and go.
            let _ = frames.send(OpusFrame {
                timestamp: timestamp as u32,
                data: Bytes::copy_from_slice(&self.encoded[..size]),
            });
            self.pending.drain(..FRAME_SAMPLES * 2);
            self.pending_timestamp = Some(timestamp + FRAME_SAMPLES as i64);
            made += 1;
        }
        Ok(made)
    }
}
