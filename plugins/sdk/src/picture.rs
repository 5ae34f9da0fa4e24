//! Picture plugins: they see every decoded picture of their route's video, held by the host. A
//! plugin reads the rectangles it looks at and writes those it changes; nothing else is copied.

use crate::Config;

pub use crate::bindings::picture::wasmcast::plugin::pictures::{PictureVerdict, Plane};

/// A picture plugin. The host makes one value per route with [`PicturePlugin::new`], then calls
/// [`PicturePlugin::process`] for every decoded picture, in presentation order.
pub trait PicturePlugin: Sized + 'static {
    /// Reads the plugin's config; an error refuses the plugin (say which key is wrong and why).
    fn new(config: &Config) -> Result<Self, String>;

    /// Reads and changes `picture` through its methods, then keeps it ([`PictureVerdict::Keep`],
    /// with the changes) or leaves it out ([`PictureVerdict::Drop`]).
    fn process(&mut self, picture: &mut Picture<'_>) -> PictureVerdict;

    /// As [`crate::PacketPlugin::snapshot`].
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    /// As [`crate::PacketPlugin::restore`].
    fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// A decoded I420 picture lent by the host for one call. Rectangles are in samples of their
/// plane (the chroma planes are half the size, rounded up), their data packed row after row; one
/// that does not fit its plane is an error and reads or writes nothing.
pub struct Picture<'a> {
    #[cfg(target_arch = "wasm32")]
    lent: &'a crate::bindings::picture::wasmcast::plugin::pictures::Picture,
    #[cfg(not(target_arch = "wasm32"))]
    lent: &'a mut crate::mock::PictureBuffer,
}

#[cfg(target_arch = "wasm32")]
impl<'a> Picture<'a> {
    #[doc(hidden)]
    pub fn lent(lent: &'a crate::bindings::picture::wasmcast::plugin::pictures::Picture) -> Self {
        Picture { lent }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<'a> Picture<'a> {
    /// A picture over `buffer`, for a plugin's own tests (see [`crate::mock`]).
    pub fn mock(buffer: &'a mut crate::mock::PictureBuffer) -> Self {
        Picture { lent: buffer }
    }

    /// Only the wasm build is lent pictures by a host; the export macro names this either way.
    #[doc(hidden)]
    pub fn lent(_: &'a crate::bindings::picture::wasmcast::plugin::pictures::Picture) -> Self {
        unreachable!("a host lends pictures to the plugin's wasm build only")
    }
}

impl Picture<'_> {
    /// The picture's size (its Y plane) in pixels.
    pub fn width(&self) -> u32 {
        self.lent.width()
    }

    pub fn height(&self) -> u32 {
        self.lent.height()
    }

    /// The size of `plane` in samples.
    pub fn plane_size(&self, plane: Plane) -> (u32, u32) {
        let (width, height) = (self.width(), self.height());
        match plane {
            Plane::Y => (width, height),
            Plane::U | Plane::V => (width.div_ceil(2), height.div_ceil(2)),
        }
    }

    /// Presentation time in 90 kHz ticks.
    pub fn pts(&self) -> i64 {
        self.lent.pts()
    }

    /// Whether the picture was decoded from a keyframe.
    pub fn keyframe(&self) -> bool {
        self.lent.keyframe()
    }

    /// A copy of the `width` x `height` rectangle of `plane` at column `x`, row `y`.
    pub fn read(
        &self,
        plane: Plane,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, String> {
        self.lent.read(plane, x, y, width, height)
    }

    /// Writes `data`, whole rows of `width` samples, into `plane` from column `x`, row `y`.
    pub fn write(
        &mut self,
        plane: Plane,
        x: u32,
        y: u32,
        width: u32,
        data: &[u8],
    ) -> Result<(), String> {
        self.lent.write(plane, x, y, width, data)
    }

    /// Sets every sample of a rectangle of `plane` to `value`.
    pub fn fill(
        &mut self,
        plane: Plane,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        value: u8,
    ) -> Result<(), String> {
        self.lent.fill(plane, x, y, width, height, value)
    }
}

/// Exports a [`PicturePlugin`] type as the plugin's implementation of the `picture-plugin` world.
#[macro_export]
macro_rules! export_picture_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct Export;

            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            impl $crate::bindings::picture::exports::wasmcast::plugin::picture_filter::Guest
                for Export
            {
                fn init() -> ::core::result::Result<(), ::std::string::String> {
                    let config = $crate::Config::from_host()?;
                    let plugin = <$plugin as $crate::PicturePlugin>::new(&config)?;
                    STATE.with(|state| *state.borrow_mut() = ::core::option::Option::Some(plugin));
                    ::core::result::Result::Ok(())
                }

                fn process(
                    picture: &$crate::bindings::picture::wasmcast::plugin::pictures::Picture,
                ) -> $crate::PictureVerdict {
                    STATE.with(|state| match state.borrow_mut().as_mut() {
                        ::core::option::Option::Some(plugin) => $crate::PicturePlugin::process(
                            plugin,
                            &mut $crate::Picture::lent(picture),
                        ),
                        ::core::option::Option::None => $crate::PictureVerdict::Keep,
                    })
                }
            }

            $crate::__export_state!(picture, PicturePlugin);

            $crate::bindings::picture::export_picture_world!(
                Export with_types_in $crate::bindings::picture
            );
        };
    };
}
