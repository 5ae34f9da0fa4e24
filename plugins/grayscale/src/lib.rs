//! Takes the colour out of every picture: the chroma planes become neutral (128).

use wasmcast_plugin_sdk::{Config, Frame, FramePlugin, FrameVerdict};

struct Grayscale;

impl FramePlugin for Grayscale {
    fn new(_config: &Config) -> Result<Self, String> {
        Ok(Grayscale)
    }

    fn process(&mut self, mut frame: Frame) -> FrameVerdict {
        let [_, (u, ..), (v, ..)] = frame.planes_mut();
        u.fill(128);
        v.fill(128);
        FrameVerdict::Replace(frame)
    }
}

wasmcast_plugin_sdk::export_frame_plugin!(Grayscale);
