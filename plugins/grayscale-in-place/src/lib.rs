//! Takes the colour out of every picture where the host holds it: the chroma planes are set to
//! neutral (128) and nothing is copied in or out, unlike `grayscale`, which gets the whole picture
//! copied into it and back.

use wasmcast_plugin_sdk::{Config, Level, Picture, PicturePlugin, PictureVerdict, Plane, log};

pub struct GrayscaleInPlace;

impl PicturePlugin for GrayscaleInPlace {
    fn new(_config: &Config) -> Result<Self, String> {
        Ok(GrayscaleInPlace)
    }

    fn process(&mut self, picture: &mut Picture<'_>) -> PictureVerdict {
        for plane in [Plane::U, Plane::V] {
            let (width, height) = picture.plane_size(plane);
            if let Err(why) = picture.fill(plane, 0, 0, width, height, 128) {
                log(Level::Error, &why);
            }
        }
        PictureVerdict::Keep
    }
}

wasmcast_plugin_sdk::export_picture_plugin!(GrayscaleInPlace);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcast_plugin_sdk::mock::PictureBuffer;

    #[test]
    fn chroma_goes_neutral_and_luma_stays() {
        let mut buffer = PictureBuffer::filled(5, 3, [77, 10, 240]);
        let mut plugin = GrayscaleInPlace::new(&Config::default()).expect("new");
        let verdict = plugin.process(&mut Picture::mock(&mut buffer));
        assert_eq!(verdict, PictureVerdict::Keep);
        assert!(buffer.data[..15].iter().all(|&y| y == 77));
        assert!(buffer.data[15..].iter().all(|&c| c == 128));
    }
}
