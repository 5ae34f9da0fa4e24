//! One live instance of a plugin: made from a [`Compiled`] component with its grants and limits,
//! and called one unit, picture or snapshot at a time, each call under the time limit; what it
//! hands back is checked before the host uses it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{ResourceTable, ResourceTableError};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::WasiCtxBuilder;

use super::host::{LogBudget, LogStream, Names, PluginState, Reporter};
use super::picture::LentPicture;
use super::{
    Compiled, EPOCH_TICK, Fault, Level, MAX_HOST_RESOURCES, MAX_INSTANCES, MAX_MEMORIES,
    MAX_REPLACE_BYTES, MAX_REPLACE_UNITS, MAX_SNAPSHOT_BYTES, MAX_TABLE_ELEMENTS, MAX_TABLES, Pre,
    blocking, engine, frame_world, packet_world, picture_world, wit, wit_state,
};
use crate::config::PluginConfig;
use crate::media::{AccessUnit, Codec, Picture, Track};

/// What one instance's store may grow to: `memory` bytes of linear memory, and the caps on tables,
/// memories and instances. Growing past any of them traps (the instance is faulted) rather than
/// failing quietly inside the plugin.
fn store_limits(memory: usize) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(memory)
        .table_elements(MAX_TABLE_ELEMENTS)
        .tables(MAX_TABLES)
        .memories(MAX_MEMORIES)
        .instances(MAX_INSTANCES)
        .trap_on_grow_failure(true)
        .build()
}

/// One live instance of a plugin on one route.
pub struct Instance {
    store: Store<PluginState>,
    bindings: Bindings,
    state: Option<wit_state::Guest>,
    /// The codecs a packet plugin is called for, one bit each (see [`codec_bit`]); `None`: all.
    wanted: Option<u8>,
    limits: Limits,
    /// Per track, the decode time of the last unit out of this instance: what it hands back may
    /// not go back in time.
    last_dts: Vec<i64>,
}

#[derive(Clone, Copy)]
struct Limits {
    time: Duration,
    memory: usize,
}

impl Limits {
    /// Starts the clock of one call.
    fn arm(self, store: &mut Store<PluginState>) {
        let ticks = self.time.as_millis().div_ceil(EPOCH_TICK.as_millis()) + 1;
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.data_mut().deadline = Instant::now() + self.time;
    }

    /// Says which limit or trap stopped a call.
    fn fault(self, err: wasmtime::Error) -> Fault {
        if err
            .downcast_ref::<blocking::BlockedPastDeadline>()
            .is_some()
        {
            return Fault::TimeLimit(self.time);
        }
        if matches!(
            err.downcast_ref::<ResourceTableError>(),
            Some(ResourceTableError::Full)
        ) {
            return Fault::ResourceLimit;
        }
        let text = format!("{err:#}");
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Fault::TimeLimit(self.time),
            _ if text.contains("forcing trap when growing memory") => {
                Fault::MemoryLimit(self.memory)
            }
            _ if text.contains("forcing trap when growing table") => Fault::TableLimit,
            // Rust plugins abort on panic; their panic message went to stderr, so to the log.
            Some(Trap::UnreachableCodeReached) => {
                Fault::Trap("wasm `unreachable` executed (a Rust plugin panicked)".into())
            }
            // The trap code alone: the backtrace of a stripped plugin names no function.
            Some(trap) => Fault::Trap(trap.to_string()),
            None => Fault::Trap(err.root_cause().to_string()),
        }
    }
}

enum Bindings {
    Packet(packet_world::PacketPlugin),
    Frame(frame_world::FramePlugin),
    Picture(picture_world::PicturePlugin),
}

/// What a packet plugin made of a unit.
#[derive(Debug)]
pub enum Verdict {
    Pass,
    Drop,
    Replace(Vec<AccessUnit>),
}

impl Instance {
    /// Instantiates `compiled` for `route` with the grants and limits of `config`, and runs its
    /// `init`.
    pub fn new(
        compiled: &Compiled,
        config: &PluginConfig,
        names: Arc<Names>,
        reporter: Reporter,
    ) -> Result<Instance, Fault> {
        let log = Arc::new(Mutex::new(LogBudget::new(Arc::clone(&names))));
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(LogStream {
            budget: Arc::clone(&log),
            level: Level::Info,
        })
        .stderr(LogStream {
            budget: Arc::clone(&log),
            level: Level::Warn,
        });
        for (key, value) in &config.env {
            wasi.env(key, value);
        }
        for (guest, host) in &config.dirs {
            wasi.preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|err| {
                    Fault::Invalid(format!("cannot open {} for it: {err:#}", host.display()))
                })?;
        }
        if config.network {
            // Any address; TCP and UDP, which WASI's context refuses unless told.
            wasi.inherit_network()
                .allow_ip_name_lookup(true)
                .allow_tcp(true)
                .allow_udp(true);
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_RESOURCES);
        let state = PluginState {
            wasi: wasi.build(),
            table,
            limits: store_limits(config.memory_limit),
            names,
            config: Arc::from(config.config.as_str()),
            log,
            deadline: Instant::now(),
            reporter,
        };
        let engine = engine().map_err(|err| Fault::Invalid(err.to_string()))?;
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        let limits = Limits {
            time: config.time_limit,
            memory: config.memory_limit,
        };
        limits.arm(&mut store);
        let instance_pre = match &compiled.pre {
            Pre::Packet(pre) => pre.instance_pre(),
            Pre::Frame(pre) => pre.instance_pre(),
            Pre::Picture(pre) => pre.instance_pre(),
        };
        let instance = instance_pre
            .instantiate(&mut store)
            .map_err(|err| limits.fault(err))?;
        let bindings = match &compiled.pre {
            Pre::Packet(_) => {
                packet_world::PacketPlugin::new(&mut store, &instance).map(Bindings::Packet)
            }
            Pre::Frame(_) => {
                frame_world::FramePlugin::new(&mut store, &instance).map(Bindings::Frame)
            }
            Pre::Picture(_) => {
                picture_world::PicturePlugin::new(&mut store, &instance).map(Bindings::Picture)
            }
        }
        .map_err(|err| limits.fault(err))?;
        let state = compiled
            .state
            .as_ref()
            .map(|indices| indices.load(&mut store, &instance))
            .transpose()
            .map_err(|err| limits.fault(err))?;
        limits.arm(&mut store);
        let init = match &bindings {
            Bindings::Packet(b) => b.wasmcast_plugin_packet_filter().call_init(&mut store),
            Bindings::Frame(b) => b.wasmcast_plugin_frame_filter().call_init(&mut store),
            Bindings::Picture(b) => b.wasmcast_plugin_picture_filter().call_init(&mut store),
        };
        match init {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(Fault::Init(why)),
            Err(err) => return Err(limits.fault(err)),
        }
        let wanted = match &compiled.wants {
            Some(indices) => {
                let wants = indices
                    .load(&mut store, &instance)
                    .map_err(|err| limits.fault(err))?;
                limits.arm(&mut store);
                let codecs = wants
                    .call_codecs(&mut store)
                    .map_err(|err| limits.fault(err))?;
                Some(
                    codecs
                        .into_iter()
                        .fold(0, |bits, codec| bits | codec_bit(codec)),
                )
            }
            None => None,
        };
        Ok(Instance {
            store,
            bindings,
            state,
            wanted,
            limits,
            last_dts: Vec::new(),
        })
    }

    /// The instance's state, when the plugin exports `state`; `None` for an empty snapshot too.
    pub fn snapshot(&mut self) -> Result<Option<Vec<u8>>, Fault> {
        let Some(state) = &self.state else {
            return Ok(None);
        };
        self.limits.arm(&mut self.store);
        let snapshot = state
            .call_snapshot(&mut self.store)
            .map_err(|err| self.limits.fault(err))?;
        if snapshot.len() > MAX_SNAPSHOT_BYTES {
            return Err(Fault::Invalid(format!(
                "made a snapshot of {} bytes; at most {MAX_SNAPSHOT_BYTES}",
                snapshot.len()
            )));
        }
        Ok((!snapshot.is_empty()).then_some(snapshot))
    }

    /// Hands `snapshot` to the instance; the inner error is the plugin's own refusal.
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<Result<(), String>, Fault> {
        let Some(state) = &self.state else {
            return Ok(Ok(()));
        };
        self.limits.arm(&mut self.store);
        state
            .call_restore(&mut self.store, snapshot)
            .map_err(|err| self.limits.fault(err))
    }

    /// Whether the packet plugin is called for units of `codec` (it may name the codecs it wants).
    pub fn wants(&self, codec: &Codec) -> bool {
        self.wanted
            .is_none_or(|wanted| wanted & codec_bit(wit_codec(codec)) != 0)
    }

    /// Runs the packet plugin on `unit`.
    pub fn process_unit(
        &mut self,
        unit: &AccessUnit,
        codec: &Codec,
        tracks: &[Track],
    ) -> Result<Verdict, Fault> {
        let Bindings::Packet(bindings) = &self.bindings else {
            return Ok(Verdict::Pass);
        };
        let input = wit::AccessUnitParam {
            track: u32::try_from(unit.track).unwrap_or(u32::MAX),
            codec: wit_codec(codec),
            clock_rate: codec.clock_rate(),
            pts: unit.pts,
            dts: unit.dts,
            keyframe: unit.keyframe,
            data: &unit.data,
        };
        self.limits.arm(&mut self.store);
        let verdict = bindings
            .wasmcast_plugin_packet_filter()
            .call_process(&mut self.store, input)
            .map_err(|err| self.limits.fault(err))?;
        // The source's own times are right by definition; a publisher that starts over starts the
        // check over.
        let last = self.last_dts_mut(unit.track);
        *last = unit.dts.min(*last);
        Ok(match verdict {
            wit::Verdict::Pass => {
                *self.last_dts_mut(unit.track) = unit.dts;
                Verdict::Pass
            }
            wit::Verdict::Drop => Verdict::Drop,
            wit::Verdict::Replace(units) => {
                let bytes: usize = units.iter().map(|u| u.data.len()).sum();
                if units.len() > MAX_REPLACE_UNITS || bytes > MAX_REPLACE_BYTES {
                    return Err(Fault::Invalid(format!(
                        "returned {} units of {bytes} bytes in all; a call may return at most \
                         {MAX_REPLACE_UNITS} units and {MAX_REPLACE_BYTES} bytes",
                        units.len()
                    )));
                }
                let mut out = Vec::with_capacity(units.len());
                for made in units {
                    let track = usize::try_from(made.track).unwrap_or(usize::MAX);
                    let fits = tracks
                        .get(track)
                        .is_some_and(|t| wit_codec(&t.codec) == made.codec);
                    if !fits {
                        return Err(Fault::Invalid(format!(
                            "returned a {:?} unit for track {}, which the stream does not have \
                             with that codec",
                            made.codec, made.track
                        )));
                    }
                    self.check_timing(track, made.pts, made.dts)?;
                    // A false keyframe would seed the GOP new readers start from.
                    if made.keyframe && !starts_a_picture_sequence(made.codec, &made.data) {
                        return Err(Fault::Invalid(format!(
                            "returned a {:?} unit marked keyframe that holds no IDR/IRAP picture",
                            made.codec
                        )));
                    }
                    out.push(AccessUnit {
                        track,
                        pts: made.pts,
                        dts: made.dts,
                        keyframe: made.keyframe,
                        data: Bytes::from(made.data),
                    });
                }
                Verdict::Replace(out)
            }
        })
    }
}

impl Instance {
    fn last_dts_mut(&mut self, track: usize) -> &mut i64 {
        if self.last_dts.len() <= track {
            self.last_dts.resize(track + 1, i64::MIN);
        }
        &mut self.last_dts[track]
    }

    /// Refuses a unit whose decode time goes back on its track or comes after its presentation
    /// time; notes it as the track's latest otherwise.
    fn check_timing(&mut self, track: usize, pts: i64, dts: i64) -> Result<(), Fault> {
        let last = self.last_dts_mut(track);
        if dts < *last || pts < dts {
            return Err(Fault::Invalid(format!(
                "returned a unit of track {track} with dts {dts} and pts {pts} after dts {}: \
                 decode times only grow, and a picture is shown no earlier than it is decoded",
                *last
            )));
        }
        *last = dts;
        Ok(())
    }
}

/// Whether `data` can start decoding: an H.264 IDR or H.265 IRAP picture (audio units always).
fn starts_a_picture_sequence(codec: wit::Codec, data: &[u8]) -> bool {
    match codec {
        wit::Codec::H264 => crate::media::annex_b_nal_units(data)
            .any(|nal| nal.first().is_some_and(|header| header & 0x1f == 5)),
        wit::Codec::H265 => crate::media::annex_b_nal_units(data).any(|nal| {
            nal.first()
                .is_some_and(|header| (16..=21).contains(&((header >> 1) & 0x3f)))
        }),
        wit::Codec::Aac | wit::Codec::Opus => true,
    }
}

/// What a frame plugin made of a picture.
#[derive(Debug)]
pub enum FrameVerdict {
    /// Keep the picture (a picture plugin may have changed it in place).
    Pass,
    Drop,
    /// New contents for the picture (same size).
    Replace(Vec<u8>),
}

impl Instance {
    /// Runs the frame plugin on `picture`: a picture plugin changes it in place, a plugin of the
    /// `frame-plugin` world gets a copy and may hand back new contents.
    pub fn process_picture(&mut self, picture: &mut Picture) -> Result<FrameVerdict, Fault> {
        use frame_world::wasmcast::plugin::frames as wit_frames;
        let bindings = match &self.bindings {
            Bindings::Frame(bindings) => bindings,
            Bindings::Picture(bindings) => {
                return lend_picture(bindings, &mut self.store, self.limits, picture);
            }
            Bindings::Packet(_) => return Ok(FrameVerdict::Pass),
        };
        let input = wit_frames::FrameParam {
            width: picture.width,
            height: picture.height,
            y_stride: picture.width,
            u_stride: picture.chroma_width(),
            v_stride: picture.chroma_width(),
            pts: picture.pts,
            data: &picture.data,
        };
        self.limits.arm(&mut self.store);
        let verdict = bindings
            .wasmcast_plugin_frame_filter()
            .call_process(&mut self.store, input)
            .map_err(|err| self.limits.fault(err))?;
        Ok(match verdict {
            wit_frames::FrameVerdict::Pass => FrameVerdict::Pass,
            wit_frames::FrameVerdict::Drop => FrameVerdict::Drop,
            wit_frames::FrameVerdict::Replace(frame) => {
                let same_shape = frame.width == picture.width
                    && frame.height == picture.height
                    && frame.y_stride == picture.width
                    && frame.u_stride == picture.chroma_width()
                    && frame.v_stride == picture.chroma_width()
                    && frame.data.len() == picture.data.len();
                if !same_shape {
                    return Err(Fault::Invalid(format!(
                        "returned a {}x{} picture (strides {}/{}/{}, {} bytes) for a {}x{} one; \
                         change the picture in place",
                        frame.width,
                        frame.height,
                        frame.y_stride,
                        frame.u_stride,
                        frame.v_stride,
                        frame.data.len(),
                        picture.width,
                        picture.height
                    )));
                }
                FrameVerdict::Replace(frame.data)
            }
        })
    }
}

/// Lends `picture` to a picture plugin for one call: its buffer moves into the store's table and
/// back (whatever the call's outcome), so nothing is copied but what the plugin reads and writes.
fn lend_picture(
    bindings: &picture_world::PicturePlugin,
    store: &mut Store<PluginState>,
    limits: Limits,
    picture: &mut Picture,
) -> Result<FrameVerdict, Fault> {
    use picture_world::exports::wasmcast::plugin::picture_filter::PictureVerdict;
    let lent = store
        .data_mut()
        .table
        .push(LentPicture(std::mem::take(picture)))
        .map_err(|err| Fault::Invalid(format!("cannot lend it the picture: {err}")))?;
    let borrowed = wasmtime::component::Resource::<LentPicture>::new_borrow(lent.rep());
    limits.arm(store);
    let verdict = bindings
        .wasmcast_plugin_picture_filter()
        .call_process(&mut *store, borrowed);
    // The table gives the picture back even when the call trapped or ran out of time: the
    // store is only thrown away after this.
    match store.data_mut().table.delete(lent) {
        Ok(LentPicture(back)) => *picture = back,
        Err(err) => return Err(Fault::Invalid(format!("kept the picture: {err}"))),
    }
    match verdict.map_err(|err| limits.fault(err))? {
        PictureVerdict::Keep => Ok(FrameVerdict::Pass),
        PictureVerdict::Drop => Ok(FrameVerdict::Drop),
    }
}

/// A codec's bit in an instance's set of wanted codecs.
fn codec_bit(codec: wit::Codec) -> u8 {
    match codec {
        wit::Codec::H264 => 1,
        wit::Codec::H265 => 2,
        wit::Codec::Aac => 4,
        wit::Codec::Opus => 8,
    }
}

fn wit_codec(codec: &Codec) -> wit::Codec {
    match codec {
        Codec::H264 { .. } => wit::Codec::H264,
        Codec::H265 { .. } => wit::Codec::H265,
        Codec::Aac { .. } => wit::Codec::Aac,
        Codec::Opus { .. } => wit::Codec::Opus,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module whose `grow` export grows its table by a million elements: what a table bomb
    /// does, written out by hand (stable Rust has no way to emit `table.grow`).
    const TABLE_BOMB: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f, // types: () -> i32
        0x03, 0x02, 0x01, 0x00, // functions: one of type 0
        0x04, 0x04, 0x01, 0x70, 0x00, 0x01, // tables: funcref, at least 1
        0x07, 0x08, 0x01, 0x04, b'g', b'r', b'o', b'w', 0x00, 0x00, // export "grow"
        0x0a, 0x0d, 0x01, 0x0b, 0x00, // code: one body of 11 bytes, no locals
        0xd0, 0x70, // ref.null func
        0x41, 0xc0, 0x84, 0x3d, // i32.const 1000000
        0xfc, 0x0f, 0x00, // table.grow 0
        0x0b, // end
    ];

    #[test]
    fn a_table_that_grows_past_its_cap_is_a_table_limit_fault() {
        let engine = engine().expect("engine");
        let module = wasmtime::Module::new(engine, TABLE_BOMB).expect("a valid module");
        let mut store = Store::new(engine, store_limits(64 << 20));
        store.limiter(|limits| limits);
        store.set_epoch_deadline(1 << 40);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instance");
        let grow = instance
            .get_typed_func::<(), i32>(&mut store, "grow")
            .expect("grow");
        let err = grow.call(&mut store, ()).expect_err("the limiter stops it");
        let limits = Limits {
            time: Duration::from_millis(50),
            memory: 64 << 20,
        };
        assert!(matches!(limits.fault(err), Fault::TableLimit));
    }
}
