"""A wasmcast frame plugin in Python: takes the colour out of every picture.

The chroma planes of an I420 picture follow its luma plane; setting them all to 128 leaves a grey
picture. The plugin also counts pictures in its metric `pictures`.
"""

from wit_world import exports
from wit_world.imports import frames, host

pictures = 0


class FrameFilter(exports.FrameFilter):
    def init(self) -> None:
        host.log(host.Level.INFO, "grayscale in Python, on route " + host.route())

    def process(self, frame: frames.Frame) -> frames.FrameVerdict:
        global pictures
        luma = frame.y_stride * frame.height
        frame.data = frame.data[:luma] + b"\x80" * (len(frame.data) - luma)
        pictures += 1
        host.set_metric("pictures", float(pictures))
        return frames.FrameVerdict_Replace(frame)
