//! A picture plugin that misbehaves halfway through its work: on every 10th picture of an
//! instance it blacks out the top rows, then panics. The host must take its picture back from the
//! trapped instance, restart the plugin and keep the route flowing. Every picture it gets, it
//! also asks for a rectangle past the picture's edge, which must be an error and nothing more.

use wasmcast_plugin_sdk::{Config, Picture, PicturePlugin, PictureVerdict, Plane, add_metric};

struct PictureTrap {
    seen: u32,
}

impl PicturePlugin for PictureTrap {
    fn new(_config: &Config) -> Result<Self, String> {
        Ok(PictureTrap { seen: 0 })
    }

    fn process(&mut self, picture: &mut Picture<'_>) -> PictureVerdict {
        self.seen += 1;
        let (width, height) = (picture.width(), picture.height());
        if picture
            .read(Plane::Y, width - 8, height - 8, 16, 16)
            .is_err()
        {
            add_metric("refused-rectangles", 1.0);
        }
        if self.seen == 10 {
            let rows = 16.min(height);
            picture
                .fill(Plane::Y, 0, 0, width, rows, 0)
                .expect("the top rows fit");
            panic!("this is the 10th picture");
        }
        PictureVerdict::Keep
    }
}

wasmcast_plugin_sdk::export_picture_plugin!(PictureTrap);
