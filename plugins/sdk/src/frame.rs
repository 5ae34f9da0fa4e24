//! Frame plugins: they see every decoded picture of their route's video.

use crate::Config;
use crate::draw::{Canvas, Plane};

pub use crate::bindings::frame::wasmcast::plugin::frames::{Frame, FrameVerdict};

/// A frame plugin. The host makes one value per route with [`FramePlugin::new`], then calls
/// [`FramePlugin::process`] for every decoded picture, in presentation order.
pub trait FramePlugin: Sized + 'static {
    /// Reads the plugin's config; an error refuses the plugin (say which key is wrong and why).
    fn new(config: &Config) -> Result<Self, String>;

    /// Decides what becomes of `frame`: change `frame.data` in place and return
    /// [`FrameVerdict::Replace`], or [`FrameVerdict::Pass`] to keep the picture as it was.
    fn process(&mut self, frame: Frame) -> FrameVerdict;

    /// As [`crate::PacketPlugin::snapshot`].
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    /// As [`crate::PacketPlugin::restore`].
    fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

impl Frame {
    /// The Y, U and V planes, each with its stride and height in rows.
    pub fn planes_mut(&mut self) -> [(&mut [u8], usize, usize); 3] {
        let chroma_rows = self.height.div_ceil(2) as usize;
        let y_len = self.y_stride as usize * self.height as usize;
        let u_len = self.u_stride as usize * chroma_rows;
        let v_len = self.v_stride as usize * chroma_rows;
        let total = self.data.len();
        let (y, rest) = self.data.split_at_mut(y_len.min(total));
        let (u, rest) = rest.split_at_mut(u_len.min(rest.len()));
        let v_end = v_len.min(rest.len());
        let v = &mut rest[..v_end];
        [
            (y, self.y_stride as usize, self.height as usize),
            (u, self.u_stride as usize, chroma_rows),
            (v, self.v_stride as usize, chroma_rows),
        ]
    }
}

impl Frame {
    /// The picture to draw on (see [`crate::draw`]).
    pub fn canvas(&mut self) -> Canvas<'_> {
        let (width, height) = (self.width, self.height);
        let [
            (y, y_stride, _),
            (u, u_stride, chroma_rows),
            (v, v_stride, _),
        ] = self.planes_mut();
        let chroma = |data, stride| Plane {
            data,
            stride,
            width: width.div_ceil(2),
            height: chroma_rows as u32,
        };
        Canvas {
            y: Plane {
                data: y,
                stride: y_stride,
                width,
                height,
            },
            u: chroma(u, u_stride),
            v: chroma(v, v_stride),
        }
    }
}

/// Exports a [`FramePlugin`] type as the plugin's implementation of the `frame-plugin` world.
#[macro_export]
macro_rules! export_frame_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct Export;

            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            impl $crate::bindings::frame::exports::wasmcast::plugin::frame_filter::Guest
                for Export
            {
                fn init() -> ::core::result::Result<(), ::std::string::String> {
                    let config = $crate::Config::from_host()?;
                    let plugin = <$plugin as $crate::FramePlugin>::new(&config)?;
                    STATE.with(|state| *state.borrow_mut() = ::core::option::Option::Some(plugin));
                    ::core::result::Result::Ok(())
                }

                fn process(frame: $crate::Frame) -> $crate::FrameVerdict {
                    STATE.with(|state| match state.borrow_mut().as_mut() {
                        ::core::option::Option::Some(plugin) => {
                            $crate::FramePlugin::process(plugin, frame)
                        }
                        ::core::option::Option::None => $crate::FrameVerdict::Pass,
                    })
                }
            }

            $crate::__export_state!(frame, FramePlugin);

            $crate::bindings::frame::export_frame_world!(
                Export with_types_in $crate::bindings::frame
            );
        };
    };
}
