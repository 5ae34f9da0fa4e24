//! The `file:` source: an MP4 file played in real time, paced by decode time, looped forever.
//!
//! It runs on a thread of its own: file reads are blocking, and pacing with a deadline per sample
//! keeps it off the tokio reactor entirely.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::mp4::{MAX_SAMPLE_SIZE, Scheduled};
use super::{Error, Mp4Media};
use crate::hub::{PublishClaim, SourceState, Stream, Timeline};
use crate::media::{AccessUnit, Codec, StreamDescription};

/// AAC frames of a file are sent this many at once at most, so RTSP readers get them in one
/// packet (see `Packetizer::packetize_together`): a packet costs a server and a player far more
/// than its bytes, and AAC's are a few hundred bytes, 47 a second.
const AAC_FRAMES_TOGETHER: usize = 3;
/// How early an AAC frame may be sent with the one before it (two frames at 48 kHz are 43 ms):
/// players buffer far more than that.
const AAC_EARLY_AT_MOST_NANOS: u64 = 50_000_000;

/// Corrupt samples are logged, at most this many per pass, then only counted.
const LOGGED_SAMPLE_ERRORS_PER_PASS: u32 = 3;

pub(super) fn spawn(path: PathBuf, looping: bool, stream: Arc<Stream>, stop: Receiver<()>) {
    let name = format!("file:{}", stream.name());
    let thread_stream = Arc::clone(&stream);
    let spawned = std::thread::Builder::new()
        .name(name)
        .spawn(move || run(&path, looping, &thread_stream, &stop));
    if let Err(err) = spawned {
        stream.set_state(SourceState::Failed(format!("cannot start a thread: {err}")));
    }
}

fn run(path: &Path, looping: bool, stream: &Arc<Stream>, stop: &Receiver<()>) {
    let route = stream.name().to_owned();
    let (file, media) = match open(path) {
        Ok(opened) => opened,
        Err(err) => {
            tracing::error!(route, "file source: {err}");
            stream.set_state(SourceState::Failed(err.to_string()));
            return;
        }
    };
    for skipped in media.skipped_tracks() {
        tracing::warn!(route, path = %path.display(), "file source skips {skipped}");
    }
    tracing::info!(
        route,
        path = %path.display(),
        tracks = ?media.description().tracks.iter().map(|t| t.codec.name()).collect::<Vec<_>>(),
        seconds = media.period_nanos() as f64 / 1e9,
        "file source playing"
    );
    let Some(claim) = claim(stream, stop) else {
        return;
    };
    let start = Instant::now();
    let timeline = Timeline {
        anchor: start,
        anchor_nanos: 0,
    };
    let mut publisher = claim.start(media.description().clone(), timeline);
    let period = Duration::from_nanos(media.period_nanos());
    let aac: Vec<bool> = media
        .description()
        .tracks
        .iter()
        .map(|track| matches!(track.codec, Codec::Aac { .. }))
        .collect();
    let mut buffer = SampleBuffer::new(MAX_SAMPLE_SIZE.min(stream.budget().max_unit_bytes as u64));
    for pass in 0u64.. {
        let pass_start = start + period * u32::try_from(pass).unwrap_or(u32::MAX);
        let mut errors = 0u32;
        let mut published = 0usize;
        let schedule = media.schedule();
        // Entries already sent with an earlier unit of their track.
        let mut sent_early: Vec<usize> = Vec::new();
        for (index, entry) in schedule.iter().enumerate() {
            if let Some(at) = sent_early.iter().position(|&early| early == index) {
                sent_early.swap_remove(at);
                continue;
            }
            let deadline = pass_start + Duration::from_nanos(entry.at_nanos);
            if wait_until(deadline, stop) {
                return;
            }
            let together = together_with(schedule, index, &aac, &mut sent_early);
            let mut ready = Vec::with_capacity(together.len());
            for entry in together {
                match read_unit(
                    &file,
                    path,
                    &media,
                    entry.track,
                    entry.sample,
                    pass,
                    &mut buffer,
                ) {
                    Ok(unit) => ready.push(unit),
                    Err(err) => {
                        errors += 1;
                        stream
                            .stats
                            .source_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if errors <= LOGGED_SAMPLE_ERRORS_PER_PASS {
                            tracing::warn!(route, pass, "file source skips a sample: {err}");
                        }
                    }
                }
            }
            published += ready.len();
            if ready.len() == 1 {
                publisher.send(ready.remove(0));
            } else if !ready.is_empty() {
                publisher.send_together(ready);
            }
        }
        if published == 0 {
            let reason = format!("no sample of {} could be read", path.display());
            tracing::error!(route, "file source: {reason}");
            stream.set_state(SourceState::Failed(reason));
            return;
        }
        if !looping {
            tracing::info!(route, "file source reached the end and does not loop");
            stream.set_state(SourceState::Ended);
            return;
        }
    }
}

/// The entries that go out with `schedule[index]`, itself first: for an AAC unit, the next ones of
/// its track due within [`AAC_EARLY_AT_MOST_NANOS`], [`AAC_FRAMES_TOGETHER`] in all at most, whose
/// indexes are added to `sent_early`. Other tracks' units due between them go after them.
fn together_with<'a>(
    schedule: &'a [Scheduled],
    index: usize,
    aac: &[bool],
    sent_early: &mut Vec<usize>,
) -> Vec<&'a Scheduled> {
    let Some(entry) = schedule.get(index) else {
        return Vec::new();
    };
    let mut together = vec![entry];
    if aac.get(entry.track) != Some(&true) {
        return together;
    }
    for (later, next) in schedule.iter().enumerate().skip(index + 1) {
        if together.len() == AAC_FRAMES_TOGETHER
            || next.at_nanos > entry.at_nanos.saturating_add(AAC_EARLY_AT_MOST_NANOS)
        {
            break;
        }
        if next.track == entry.track {
            together.push(next);
            sent_early.push(later);
        }
    }
    together
}

/// Takes the stream over from the source this one replaces, which lets go within a sample's time.
fn claim(stream: &Arc<Stream>, stop: &Receiver<()>) -> Option<PublishClaim> {
    loop {
        match stream.claim() {
            Ok(claim) => return Some(claim),
            Err(busy) => {
                tracing::debug!(route = stream.name(), "file source waits: {busy}");
                if wait_until(Instant::now() + Duration::from_millis(20), stop) {
                    return None;
                }
            }
        }
    }
}

/// The description of an MP4 file and every access unit of one pass through it, in decode order,
/// as the file source publishes them (for trying plugins on a file).
pub(super) fn units(
    path: &Path,
) -> Result<
    (
        StreamDescription,
        impl Iterator<Item = Result<AccessUnit, Error>>,
    ),
    Error,
> {
    let (file, media) = open(path)?;
    let description = media.description().clone();
    let path = path.to_owned();
    let mut buffer = SampleBuffer::new(MAX_SAMPLE_SIZE);
    let mut schedule = media.schedule().to_vec().into_iter();
    let units = std::iter::from_fn(move || {
        let entry = schedule.next()?;
        Some(read_unit(
            &file,
            &path,
            &media,
            entry.track,
            entry.sample,
            0,
            &mut buffer,
        ))
    });
    Ok((description, units))
}

fn open(path: &Path) -> Result<(File, Mp4Media), Error> {
    let open_error = |source| Error::Open {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(open_error)?;
    let size = file.metadata().map_err(open_error)?.len();
    let media = Mp4Media::parse(BufReader::new(&file), size)?;
    Ok((file, media))
}

fn read_unit(
    file: &File,
    path: &Path,
    media: &Mp4Media,
    track: usize,
    sample: usize,
    pass: u64,
    buffer: &mut SampleBuffer,
) -> Result<AccessUnit, Error> {
    let sample_ref = media
        .sample(track, sample)
        .ok_or_else(|| Error::Corrupt(format!("no sample {sample} in track {track}")))?;
    let SampleBuffer {
        data: buffer,
        max_size,
    } = buffer;
    let max_size = *max_size;
    if sample_ref.size > max_size {
        return Err(Error::Corrupt(format!(
            "sample {sample} of track {track} claims {} bytes, over the {max_size} bytes a unit may have (server.max_unit_mb)",
            sample_ref.size
        )));
    }
    // Bounded by `max_size` above.
    buffer.resize(sample_ref.size as usize, 0);
    file.read_exact_at(buffer, sample_ref.offset)
        .map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
    media.access_unit(track, sample, buffer, pass)
}

/// Where samples are read to, and the largest one read.
struct SampleBuffer {
    data: Vec<u8>,
    max_size: u64,
}

impl SampleBuffer {
    fn new(max_size: u64) -> SampleBuffer {
        SampleBuffer {
            data: Vec::new(),
            max_size,
        }
    }
}

/// Sleeps until `deadline`; true when the source was told to stop meanwhile.
fn wait_until(deadline: Instant, stop: &Receiver<()>) -> bool {
    let timeout = deadline.saturating_duration_since(Instant::now());
    match stop.recv_timeout(timeout) {
        Err(RecvTimeoutError::Timeout) => false,
        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduled(track: usize, at_ms: f64) -> Scheduled {
        Scheduled {
            track,
            sample: 0,
            at_nanos: (at_ms * 1e6) as u64,
        }
    }

    #[test]
    fn aac_frames_go_three_at_a_time_ahead_of_the_pictures_between_them() {
        // Track 0 video at 25 a second, track 1 AAC at 48 kHz, in decode order.
        let schedule = [
            scheduled(0, 0.0),
            scheduled(1, 0.0),
            scheduled(1, 21.3),
            scheduled(0, 40.0),
            scheduled(1, 42.7),
            scheduled(1, 64.0),
            scheduled(0, 80.0),
            scheduled(1, 85.3),
            scheduled(1, 150.0),
        ];
        let aac = [false, true];
        let mut sent_early = Vec::new();
        let at = |entries: Vec<&Scheduled>| -> Vec<u64> {
            entries.iter().map(|e| e.at_nanos / 1_000_000).collect()
        };
        assert_eq!(at(together_with(&schedule, 0, &aac, &mut sent_early)), [0]);
        assert_eq!(
            at(together_with(&schedule, 1, &aac, &mut sent_early)),
            [0, 21, 42],
            "three frames, the picture at 40 ms between them sent after"
        );
        assert_eq!(sent_early, [2, 4]);
        sent_early.clear();
        assert_eq!(
            at(together_with(&schedule, 5, &aac, &mut sent_early)),
            [64, 85],
            "the frame at 150 ms is more than 50 ms later"
        );
        assert_eq!(sent_early, [7]);
        assert_eq!(
            at(together_with(&schedule, 8, &aac, &mut sent_early)),
            [150]
        );
        assert!(together_with(&schedule, 9, &aac, &mut sent_early).is_empty());
    }
}
