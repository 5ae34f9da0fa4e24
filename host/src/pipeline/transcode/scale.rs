//! I420 scaling, plane by plane, bilinear in 16.16 fixed point.

use crate::media::Picture;

/// `picture` scaled to `width` x `height` (both even).
pub fn scale(picture: &Picture, width: u32, height: u32) -> Picture {
    let mut out = Picture {
        width,
        height,
        pts: picture.pts,
        keyframe: picture.keyframe,
        data: vec![0; Picture::size_of(width, height)],
    };
    let (src_w, src_h) = (picture.width as usize, picture.height as usize);
    let (dst_w, dst_h) = (width as usize, height as usize);
    let (src_cw, src_ch) = (src_w.div_ceil(2), src_h.div_ceil(2));
    let (dst_cw, dst_ch) = (dst_w.div_ceil(2), dst_h.div_ceil(2));
    let (src_y, src_chroma) = picture.data.split_at(src_w * src_h);
    let (src_u, src_v) = src_chroma.split_at(src_cw * src_ch);
    let (dst_y, dst_chroma) = out.data.split_at_mut(dst_w * dst_h);
    let (dst_u, dst_v) = dst_chroma.split_at_mut(dst_cw * dst_ch);
    plane(src_y, src_w, src_h, dst_y, dst_w, dst_h);
    plane(src_u, src_cw, src_ch, dst_u, dst_cw, dst_ch);
    plane(src_v, src_cw, src_ch, dst_v, dst_cw, dst_ch);
    out
}

fn plane(src: &[u8], sw: usize, sh: usize, dst: &mut [u8], dw: usize, dh: usize) {
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 || src.len() < sw * sh {
        return;
    }
    // Sample centres map to centres: x_src = (x + 0.5) * sw / dw - 0.5.
    let step_x = ((sw as u64) << 16) / dw as u64;
    let step_y = ((sh as u64) << 16) / dh as u64;
    let columns: Vec<(usize, usize, u32)> = (0..dw)
        .map(|x| {
            let fx = ((x as u64 * step_x) + step_x / 2).saturating_sub(1 << 15);
            let x0 = ((fx >> 16) as usize).min(sw - 1);
            let x1 = (x0 + 1).min(sw - 1);
            (x0, x1, (fx & 0xffff) as u32)
        })
        .collect();
    for (y, row) in dst.chunks_exact_mut(dw).take(dh).enumerate() {
        let fy = ((y as u64 * step_y) + step_y / 2).saturating_sub(1 << 15);
        let y0 = ((fy >> 16) as usize).min(sh - 1);
        let y1 = (y0 + 1).min(sh - 1);
        let wy = (fy & 0xffff) as u32;
        let (top, bottom) = (&src[y0 * sw..][..sw], &src[y1 * sw..][..sw]);
        for (out, &(x0, x1, wx)) in row.iter_mut().zip(&columns) {
            let t = u32::from(top[x0]) * (0x10000 - wx) + u32::from(top[x1]) * wx;
            let b = u32::from(bottom[x0]) * (0x10000 - wx) + u32::from(bottom[x1]) * wx;
            let v = (u64::from(t >> 8) * u64::from(0x10000 - wy)
                + u64::from(b >> 8) * u64::from(wy))
                >> 24;
            *out = v.min(255) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_picture_stays_flat_and_takes_the_new_size() {
        let picture = Picture {
            width: 64,
            height: 48,
            pts: 7,
            keyframe: false,
            data: [vec![200; 64 * 48], vec![90; 32 * 24], vec![160; 32 * 24]].concat(),
        };
        let small = scale(&picture, 20, 10);
        assert_eq!((small.width, small.height, small.pts), (20, 10, 7));
        assert_eq!(small.data.len(), 20 * 10 + 2 * 10 * 5);
        assert!(small.data[..200].iter().all(|&v| v == 200));
        assert!(small.data[200..250].iter().all(|&v| v == 90));
        assert!(small.data[250..].iter().all(|&v| v == 160));
    }

    #[test]
    fn a_gradient_keeps_its_ends() {
        let width = 256u32;
        let luma: Vec<u8> = (0..width).map(|x| x as u8).collect();
        let picture = Picture {
            width,
            height: 2,
            pts: 0,
            keyframe: false,
            data: [luma.clone(), luma, vec![128; 256]].concat(),
        };
        let half = scale(&picture, 128, 2);
        assert!(half.data[0] <= 2, "{}", half.data[0]);
        assert!(half.data[127] >= 252, "{}", half.data[127]);
        assert!(half.data[..128].windows(2).all(|w| w[0] <= w[1]));
    }
}
