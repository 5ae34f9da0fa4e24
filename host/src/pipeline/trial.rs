//! `wasmcast plugin run`: one plugin over one pass through an MP4 file, as fast as it goes, without
//! a server. A packet plugin sees every access unit; a frame plugin runs in the route's frame path
//! (decode, the plugin, encode at the source's size), as on a route. The report gives units in and
//! out, the time per call, the faults, the events the plugin emitted and its metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::transcode::{TranscodeStats, Transcoder};
use crate::config::TranscodeConfig;
use crate::events::Events;
use crate::media::AccessUnit;
use crate::plugins::{Chain, Kind, authoring};

/// Events kept for the report at most; the rest are counted.
const REPORTED_EVENTS: usize = 1000;

/// Why a trial could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Plugin(#[from] authoring::Error),
    #[error("{}: {source}", path.display())]
    Input {
        path: PathBuf,
        source: crate::sources::Error,
    },
    #[error("{}: a frame plugin needs an H.264 video track to decode: {source}", path.display())]
    FramePath {
        path: PathBuf,
        source: super::transcode::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A trial run: what to run on what.
pub struct Trial {
    pub wasm: PathBuf,
    /// The plugin's config, as JSON.
    pub config: String,
    pub input: PathBuf,
    /// Where to write the video track that comes out (Annex B), if anywhere.
    pub video_out: Option<PathBuf>,
    pub time_limit: Duration,
    pub memory_limit: usize,
}

/// What a trial run saw.
#[derive(Debug, Default)]
pub struct TrialReport {
    pub kind: Option<Kind>,
    /// Units in and out per track, by codec name.
    pub tracks: Vec<(String, u64, u64)>,
    /// A frame plugin's pictures: decoded, and left out by the plugin.
    pub pictures: Option<(u64, u64)>,
    pub calls: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Time per call in the plugin, sorted (packet plugins: per unit, as timed here).
    call_times: Vec<Duration>,
    /// Time in calls in all, from the plugin's counters.
    call_total: Duration,
    /// The events emitted (as JSON lines), and how many more were not kept.
    pub events: Vec<String>,
    pub events_not_kept: u64,
    pub metrics: Vec<(String, f64)>,
}

impl TrialReport {
    /// The time per call at `quantile` (0.5: the median), where calls were timed one by one.
    pub fn call_time(&self, quantile: f64) -> Duration {
        if self.call_times.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.call_times.len() - 1) as f64 * quantile).round() as usize;
        self.call_times[index.min(self.call_times.len() - 1)]
    }
}

impl std::fmt::Display for TrialReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(kind) = self.kind {
            writeln!(f, "{} plugin", kind.name())?;
        }
        for (index, (codec, units_in, units_out)) in self.tracks.iter().enumerate() {
            writeln!(
                f,
                "track {index} ({codec}): {units_in} units in, {units_out} out"
            )?;
        }
        if let Some((decoded, dropped)) = self.pictures {
            writeln!(
                f,
                "pictures: {decoded} decoded, {dropped} left out by the plugin"
            )?;
        }
        if self.call_times.is_empty() {
            let mean = self
                .call_total
                .checked_div(u32::try_from(self.calls).unwrap_or(u32::MAX).max(1))
                .unwrap_or_default();
            writeln!(f, "calls: {}, time per call: mean {mean:?}", self.calls)?;
        } else {
            writeln!(
                f,
                "calls: {}, time per unit: median {:?}, p99 {:?}, max {:?}",
                self.calls,
                self.call_time(0.5),
                self.call_time(0.99),
                self.call_time(1.0)
            )?;
        }
        writeln!(
            f,
            "events: {}",
            self.events.len() as u64 + self.events_not_kept
        )?;
        for event in &self.events {
            writeln!(f, "  {event}")?;
        }
        if !self.metrics.is_empty() {
            let metrics: Vec<String> = self
                .metrics
                .iter()
                .map(|(name, value)| format!("{name} = {value}"))
                .collect();
            writeln!(f, "metrics: {}", metrics.join(", "))?;
        }
        write!(f, "errors: {}", self.errors)?;
        if let Some(error) = &self.last_error {
            write!(f, " (last: {error})")?;
        }
        Ok(())
    }
}

/// Runs the trial.
pub fn run_trial(trial: &Trial) -> Result<TrialReport, Error> {
    let events = Events::default();
    let (_, mut emitted) = events.subscribe(None);
    let plugin = authoring::load_for_trial(
        &trial.wasm,
        &trial.config,
        trial.time_limit,
        trial.memory_limit,
        &events,
    )?;
    let input_error = |source| Error::Input {
        path: trial.input.clone(),
        source,
    };
    let (description, units) = crate::sources::mp4_units(&trial.input).map_err(input_error)?;
    let mut chain = Chain::new("trial", std::slice::from_ref(&plugin), &[]);
    chain.set_stream(&description.tracks);
    chain.start();
    let status = chain.status();
    let mut report = TrialReport {
        kind: Some(plugin.kind()),
        tracks: description
            .tracks
            .iter()
            .map(|t| (t.codec.name().to_owned(), 0, 0))
            .collect(),
        ..TrialReport::default()
    };
    let transcode_stats = Arc::new(TranscodeStats::default());
    let (mut packets, mut frame_path) = match plugin.kind() {
        Kind::Packet => (Some(chain), None),
        Kind::Frame => {
            let settings = TranscodeConfig::at_source_size();
            let transcoder = Transcoder::new(
                "trial",
                &settings,
                &description,
                chain,
                Arc::clone(&transcode_stats),
            )
            .map_err(|source| Error::FramePath {
                path: trial.input.clone(),
                source,
            })?;
            (None, Some(transcoder))
        }
    };
    // The output's video track: the input's for a packet plugin, the re-encoded track 0 else.
    let video_out_track = match frame_path {
        Some(_) => Some(0),
        None => description.video_track(),
    };
    let mut video = Vec::new();
    let mut out: Vec<AccessUnit> = Vec::new();
    for unit in units {
        let unit = unit.map_err(input_error)?;
        if let Some(track) = report.tracks.get_mut(unit.track) {
            track.1 += 1;
        }
        match (&mut packets, &mut frame_path) {
            (Some(packets), _) => {
                let started = Instant::now();
                packets.process(unit, &description.tracks, &mut out);
                report.call_times.push(started.elapsed());
            }
            (None, Some(frame_path)) => frame_path.process(unit, false, &mut out),
            (None, None) => {}
        }
        for unit in out.drain(..) {
            if let Some(track) = report.tracks.get_mut(unit.track) {
                track.2 += 1;
            }
            if Some(unit.track) == video_out_track && trial.video_out.is_some() {
                video.extend_from_slice(&unit.data);
            }
        }
        while let Ok(event) = emitted.try_recv() {
            if report.events.len() < REPORTED_EVENTS {
                report
                    .events
                    .push(serde_json::to_string(event.as_ref()).unwrap_or_default());
            } else {
                report.events_not_kept += 1;
            }
        }
    }
    report.call_times.sort();
    if let Some(status) = status.first() {
        let stats = &status.stats;
        report.calls = stats.calls.load(Ordering::Relaxed);
        report.call_total = Duration::from_nanos(stats.nanos.load(Ordering::Relaxed));
        report.errors = stats.errors.load(Ordering::Relaxed);
        report.last_error = stats
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        report.metrics = stats
            .metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, value)| (name.clone(), *value))
            .collect();
        report.events_not_kept += stats
            .events
            .load(Ordering::Relaxed)
            .saturating_sub(report.events.len() as u64 + report.events_not_kept);
    }
    if frame_path.is_some() {
        report.pictures = Some((
            transcode_stats.decoded.load(Ordering::Relaxed),
            transcode_stats.dropped.load(Ordering::Relaxed),
        ));
    }
    if let Some(path) = &trial.video_out {
        std::fs::write(path, &video).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}
