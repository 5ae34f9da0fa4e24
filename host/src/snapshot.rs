//! Snapshots: a route's latest keyframe as a JPEG picture (`GET /ROUTE/snapshot.jpg`, and the
//! status page's thumbnails).
//!
//! The keyframe the hub keeps for new readers is decoded (openh264) and encoded (jpeg-encoder)
//! off the async runtime, once per keyframe: every request until the next keyframe gets the same
//! bytes. At most [`MAX_AT_ONCE`] pictures are made at a time, so a flood of requests for many
//! routes costs a bounded share of the CPU; a request that would wait longer than
//! [`MAX_WAIT`] is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openh264::OpenH264API;
use openh264::decoder::{Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;
use tokio::sync::Semaphore;

use crate::hub::Stream;
use crate::media::Codec;

/// Pictures decoded and encoded at once, at most.
const MAX_AT_ONCE: usize = 2;
/// How long a request waits for its turn.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// JPEG quality, 1 to 100.
const QUALITY: u8 = 80;
/// Routes whose latest snapshot is kept, at most (a route's picture is dropped with the route's
/// next keyframe anyway).
const MAX_CACHED: usize = 256;

/// Why there is no snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("route `{0}` has no picture yet (no video, or waiting for its source)")]
    NoPicture(String),
    #[error("snapshots are made of H.264 video; route `{route}` carries {codec}")]
    Codec { route: String, codec: &'static str },
    #[error("the keyframe of route `{route}` does not decode: {why}")]
    Decode { route: String, why: String },
    #[error("too many snapshots are being made; try again")]
    Busy,
}

/// Which keyframe a cached picture was made of.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Made {
    generation: u64,
    dts: i64,
}

/// The snapshot maker, shared by every request.
pub struct Snapshots {
    cache: Mutex<HashMap<String, (Made, Bytes)>>,
    turns: Arc<Semaphore>,
}

impl Default for Snapshots {
    fn default() -> Self {
        Snapshots {
            cache: Mutex::default(),
            turns: Arc::new(Semaphore::new(MAX_AT_ONCE)),
        }
    }
}

impl Snapshots {
    /// The latest keyframe of `stream` as a JPEG picture.
    pub async fn jpeg(&self, stream: &Stream) -> Result<Bytes, SnapshotError> {
        let route = stream.name().to_owned();
        let no_picture = || SnapshotError::NoPicture(route.clone());
        let (keyframe, media, generation) = stream.latest_keyframe().ok_or_else(no_picture)?;
        let made = Made {
            generation,
            dts: keyframe.au.dts,
        };
        if let Some((cached, jpeg)) = self.lock().get(&route)
            && *cached == made
        {
            return Ok(jpeg.clone());
        }
        let track = media
            .description
            .tracks
            .get(keyframe.au.track)
            .ok_or_else(no_picture)?;
        let Codec::H264 { sps, pps } = &track.codec else {
            return Err(SnapshotError::Codec {
                route,
                codec: track.codec.name(),
            });
        };
        // The parameter sets in front, in case the keyframe does not carry them.
        let mut annex_b = Vec::with_capacity(keyframe.au.data.len() + sps.len() + pps.len() + 8);
        for parameters in [sps, pps] {
            annex_b.extend_from_slice(&[0, 0, 0, 1]);
            annex_b.extend_from_slice(parameters);
        }
        annex_b.extend_from_slice(&keyframe.au.data);
        let turn = tokio::time::timeout(MAX_WAIT, Arc::clone(&self.turns).acquire_owned())
            .await
            .map_err(|_| SnapshotError::Busy)?
            .map_err(|_| SnapshotError::Busy)?;
        // Requests that waited for their turn behind one making this very picture take it.
        if let Some((cached, jpeg)) = self.lock().get(&route)
            && *cached == made
        {
            return Ok(jpeg.clone());
        }
        let encoded = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            encode(&annex_b)
        })
        .await
        .map_err(|err| err.to_string())
        .and_then(|encoded| encoded)
        .map_err(|why| SnapshotError::Decode {
            route: route.clone(),
            why,
        })?;
        let jpeg = Bytes::from(encoded);
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED && !cache.contains_key(&route) {
            cache.clear();
        }
        cache.insert(route, (made, jpeg.clone()));
        Ok(jpeg)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Made, Bytes)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Decodes one H.264 keyframe (Annex B, parameter sets in front) and encodes it as JPEG.
fn encode(annex_b: &[u8]) -> Result<Vec<u8>, String> {
    let mut decoder = Decoder::with_api_config(
        OpenH264API::from_source(),
        DecoderConfig::new().flush_after_decode(Flush::Flush),
    )
    .map_err(|err| err.to_string())?;
    let picture = decoder
        .decode(annex_b)
        .map_err(|err| err.to_string())?
        .ok_or("the decoder made no picture of it")?;
    let (width, height) = picture.dimensions();
    let mut rgb = vec![0; width * height * 3];
    picture.write_rgb8(&mut rgb);
    let (Ok(width), Ok(height)) = (u16::try_from(width), u16::try_from(height)) else {
        return Err(format!("{width}x{height} is too large for JPEG"));
    };
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, QUALITY)
        .encode(&rgb, width, height, jpeg_encoder::ColorType::Rgb)
        .map_err(|err| err.to_string())?;
    Ok(jpeg)
}
