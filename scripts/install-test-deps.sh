#!/usr/bin/env bash
# Installs the system packages the test suite uses: the players it proves wasmcast against
# (ffmpeg/ffprobe, GStreamer's rtspsrc with an H.264 decoder, headless Chromium for WebRTC), nasm
# and cmake for the codec builds (openh264; libopus, which the opus crate builds from source), make
# for jemalloc's; componentize-py (PyPI) and componentize-js (npm), which build the Python and
# JavaScript example plugins; clang, lld, wasi-libc and the wasm32 compiler-rt, which build the C
# example plugin; aiortc (PyPI), a WebRTC client nobody here wrote; and gst-rtsp-server with the
# system python's GObject bindings, the peer the readers bench measures wasmcast against in the same
# run (benches are not tests, but a bench that skips its peer on a fresh machine measures nothing).
# Debian/Ubuntu; run as root (CI does) or it uses sudo.
set -euo pipefail

packages=(
  ffmpeg
  gstreamer1.0-tools
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  gstreamer1.0-libav
  nasm
  cmake
  make
  chromium
  clang
  lld
  wasi-libc
  libclang-rt-dev-wasm32
  python3-gi
  gir1.2-gst-rtsp-server-1.0
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  echo "install-test-deps: all packages present"
else
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# componentize-py (PyPI) builds the Python example plugin; its wheel carries what it needs.
if ! python3 -c 'import componentize_py' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore componentize-py==0.25.1
fi
# aiortc (PyPI) is an independent WebRTC stack: it plays over WHEP and publishes over WHIP.
if ! python3 -c 'import aiortc' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore aiortc==1.16.0
fi
# componentize-js (npm, pinned by the lock file) builds the JavaScript example plugin.
javascript="$(dirname "$0")/../plugins/javascript-grayscale"
if [ ! -x "$javascript/node_modules/.bin/componentize-js" ]; then
  (cd "$javascript" && npm ci --no-audit --no-fund --loglevel=error)
fi
