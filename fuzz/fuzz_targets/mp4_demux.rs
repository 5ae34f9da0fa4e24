//! A file's bytes through the MP4 demuxer and every sample's conversion to an access unit.
//!
//! `Mp4Media::parse` contains panics of the re_mp4 box parser (its sample-table arithmetic) with
//! `catch_unwind`, as the server does; libFuzzer's panic hook would abort before that, so this
//! target silences the hook. A panic anywhere else still unwinds out of the target and is reported.
#![no_main]

use std::sync::Once;

use wasmcast::sources::Mp4Media;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static QUIET_PANICS: Once = Once::new();
    QUIET_PANICS.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Ok(media) = Mp4Media::parse(std::io::Cursor::new(data), data.len() as u64) else {
        return;
    };
    for entry in media.schedule().iter().take(10_000) {
        let Some(sample) = media.sample(entry.track, entry.sample) else {
            continue;
        };
        let start = usize::try_from(sample.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(sample.size).unwrap_or(usize::MAX));
        if let Some(bytes) = data.get(start..end) {
            for pass in [0, 1, u64::MAX / 2] {
                let _ = media.access_unit(entry.track, entry.sample, bytes, pass);
            }
        }
    }
});
