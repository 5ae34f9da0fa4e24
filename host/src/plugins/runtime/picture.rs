//! The `pictures` interface: a decoded picture lent to a picture plugin for one call. The picture's
//! buffer moves into the instance's resource table for the call and back out after it (no copy);
//! the plugin copies out the rectangles it reads and copies in those it writes.

use wasmtime::component::Resource;

use super::host::PluginState;
use super::picture_world::wasmcast::plugin::pictures::{Host, HostPicture, Plane};
use crate::media::Picture;

/// A picture on loan to a plugin: what the `picture` resource stands for.
pub struct LentPicture(pub Picture);

/// Where a rectangle of a plane lies in a picture's buffer.
struct Rectangle {
    /// Offset of its first sample, and of each row from the one before.
    start: usize,
    stride: usize,
    width: usize,
    height: usize,
}

impl Rectangle {
    /// Byte ranges of its rows, first to last.
    fn rows(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        (0..self.height).map(|row| {
            let from = self.start + row * self.stride;
            from..from + self.width
        })
    }
}

impl LentPicture {
    /// The rectangle of `plane` at (`x`, `y`) of `width` x `height` samples, when it fits.
    fn rectangle(
        &self,
        plane: Plane,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    ) -> Result<Rectangle, String> {
        let picture = &self.0;
        let (luma_w, luma_h) = (picture.width as usize, picture.height as usize);
        let (chroma_w, chroma_h) = (luma_w.div_ceil(2), luma_h.div_ceil(2));
        let (plane_start, plane_w, plane_h) = match plane {
            Plane::Y => (0, luma_w, luma_h),
            Plane::U => (luma_w * luma_h, chroma_w, chroma_h),
            Plane::V => (luma_w * luma_h + chroma_w * chroma_h, chroma_w, chroma_h),
        };
        let (x, y, width, height) = (x as usize, y as usize, width as usize, height as usize);
        if x.checked_add(width).is_none_or(|end| end > plane_w)
            || y.checked_add(height).is_none_or(|end| end > plane_h)
        {
            return Err(format!(
                "{width}x{height} at ({x}, {y}) does not fit in the {plane:?} plane of \
                 {plane_w}x{plane_h}"
            ));
        }
        Ok(Rectangle {
            start: plane_start + y * plane_w + x,
            stride: plane_w,
            width,
            height,
        })
    }

    fn read(
        &self,
        plane: Plane,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, String> {
        let rectangle = self.rectangle(plane, x, y, width, height)?;
        let mut out = Vec::with_capacity(rectangle.width * rectangle.height);
        for row in rectangle.rows() {
            out.extend_from_slice(&self.0.data[row]);
        }
        Ok(out)
    }

    fn write(
        &mut self,
        plane: Plane,
        x: u32,
        y: u32,
        width: u32,
        data: &[u8],
    ) -> Result<(), String> {
        if width == 0 || !data.len().is_multiple_of(width as usize) {
            return Err(format!(
                "{} bytes are not whole rows of {width} samples",
                data.len()
            ));
        }
        let height = u32::try_from(data.len() / width as usize).unwrap_or(u32::MAX);
        let rectangle = self.rectangle(plane, x, y, width, height)?;
        for (row, source) in rectangle.rows().zip(data.chunks_exact(rectangle.width)) {
            self.0.data[row].copy_from_slice(source);
        }
        Ok(())
    }

    fn fill(
        &mut self,
        plane: Plane,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        value: u8,
    ) -> Result<(), String> {
        let rectangle = self.rectangle(plane, x, y, width, height)?;
        if rectangle.width == rectangle.stride {
            // Whole rows: one run of memory.
            let from = rectangle.start;
            self.0.data[from..from + rectangle.width * rectangle.height].fill(value);
        } else {
            for row in rectangle.rows() {
                self.0.data[row].fill(value);
            }
        }
        Ok(())
    }
}

// The guest only borrows a picture for a call, so a handle it holds names one in the table; were
// it not so, the call traps rather than the host panicking.
impl PluginState {
    fn lent(&self, picture: &Resource<LentPicture>) -> wasmtime::Result<&LentPicture> {
        Ok(self.table.get(picture)?)
    }

    fn lent_mut(&mut self, picture: &Resource<LentPicture>) -> wasmtime::Result<&mut LentPicture> {
        Ok(self.table.get_mut(picture)?)
    }
}

impl Host for PluginState {}

impl HostPicture for PluginState {
    fn width(&mut self, picture: Resource<LentPicture>) -> wasmtime::Result<u32> {
        Ok(self.lent(&picture)?.0.width)
    }

    fn height(&mut self, picture: Resource<LentPicture>) -> wasmtime::Result<u32> {
        Ok(self.lent(&picture)?.0.height)
    }

    fn pts(&mut self, picture: Resource<LentPicture>) -> wasmtime::Result<i64> {
        Ok(self.lent(&picture)?.0.pts)
    }

    fn keyframe(&mut self, picture: Resource<LentPicture>) -> wasmtime::Result<bool> {
        Ok(self.lent(&picture)?.0.keyframe)
    }

    fn read(
        &mut self,
        picture: Resource<LentPicture>,
        plane: Plane,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        Ok(self.lent(&picture)?.read(plane, x, y, width, height))
    }

    fn write(
        &mut self,
        picture: Resource<LentPicture>,
        plane: Plane,
        x: u32,
        y: u32,
        width: u32,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.lent_mut(&picture)?.write(plane, x, y, width, &data))
    }

    fn fill(
        &mut self,
        picture: Resource<LentPicture>,
        plane: Plane,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        value: u8,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self
            .lent_mut(&picture)?
            .fill(plane, x, y, width, height, value))
    }

    fn drop(&mut self, _picture: Resource<LentPicture>) -> wasmtime::Result<()> {
        // Only borrowed by the guest: the host takes it back from the table after the call.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lent(width: u32, height: u32) -> LentPicture {
        LentPicture(Picture {
            width,
            height,
            pts: 0,
            keyframe: false,
            data: vec![0; Picture::size_of(width, height)],
        })
    }

    #[test]
    fn rectangles_of_odd_pictures_land_in_their_planes() {
        let picture = lent(5, 3);
        // Y is 5x3 (15 bytes), U and V are 3x2 (6 bytes each).
        let v = picture.rectangle(Plane::V, 1, 1, 2, 1).expect("fits");
        assert_eq!(v.rows().collect::<Vec<_>>(), vec![15 + 6 + 4..15 + 6 + 6]);
        let y = picture.rectangle(Plane::Y, 0, 1, 5, 2).expect("fits");
        assert_eq!(y.rows().collect::<Vec<_>>(), vec![5..10, 10..15]);
    }

    #[test]
    fn a_rectangle_written_reads_back_and_a_fill_stays_inside_it() {
        let mut picture = lent(6, 4);
        picture
            .write(Plane::U, 1, 0, 2, &[1, 2, 3, 4])
            .expect("fits");
        assert_eq!(picture.read(Plane::U, 1, 0, 2, 2), Ok(vec![1, 2, 3, 4]));
        picture.fill(Plane::Y, 2, 1, 3, 2, 9).expect("fits");
        let luma = picture.read(Plane::Y, 0, 0, 6, 4).expect("the whole plane");
        let nines: Vec<usize> = (0..24).filter(|&i| luma[i] == 9).collect();
        assert_eq!(nines, vec![8, 9, 10, 14, 15, 16]);
        assert!(
            picture.write(Plane::V, 0, 0, 2, &[1, 2, 3]).is_err(),
            "not whole rows"
        );
        assert!(
            picture.fill(Plane::V, 0, 1, 3, 2, 0).is_err(),
            "past the plane"
        );
    }

    #[test]
    fn rectangles_past_the_plane_or_wrapping_are_refused() {
        let picture = lent(4, 4);
        assert!(picture.rectangle(Plane::U, 1, 0, 2, 1).is_err());
        assert!(picture.rectangle(Plane::Y, 0, 3, 4, 2).is_err());
        assert!(picture.rectangle(Plane::Y, u32::MAX, 0, 2, 1).is_err());
        assert!(picture.rectangle(Plane::Y, 4, 0, 0, 1).is_ok());
    }
}
