#!/usr/bin/env sh
# Regenerates media/sample.mp4, the clip the default config loops.
# Run once by a maintainer; the result is committed so nothing is generated at build or run time.
#
# The picture is FFmpeg's testsrc2 (moving colour bars, a gradient and a running counter); the
# sound is a 440 Hz tone that beeps once a second. Both are easy to recognise in a player. H.264 constrained baseline without B-frames plays in every RTSP client and every browser;
# one keyframe a second lets a new reader start at once.
set -eu
cd "$(dirname "$0")"
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc2=size=640x360:rate=25:duration=10" \
  -f lavfi -i "sine=frequency=440:beep_factor=2:sample_rate=48000:duration=10" \
  -map 0:v -map 1:a \
  -c:v libx264 -profile:v baseline -level 3.1 -preset medium -crf 30 -g 25 -keyint_min 25 -sc_threshold 0 \
  -pix_fmt yuv420p \
  -c:a aac -b:a 64k -ac 2 \
  -movflags +faststart \
  sample.mp4
ls -l sample.mp4
