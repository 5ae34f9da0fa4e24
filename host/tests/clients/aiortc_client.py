"""A WHEP player and a WHIP publisher made with aiortc, a WebRTC stack independent of wasmcast's.

    aiortc_client.py play BASE_URL ROUTE SECONDS
        Plays ROUTE over WHEP for SECONDS and prints the frames it decoded as JSON:
        {"video": N, "audio": N, "width": W, "height": H}.
    aiortc_client.py publish BASE_URL FEED FILE SECONDS
        Publishes FILE (looped; aiortc encodes it as H.264 and Opus) over WHIP for SECONDS,
        then ends with DELETE; prints {"status": HTTP status of the offer}.
"""

import asyncio
import json
import sys
import time
import urllib.request

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer


def request(method, url, body=b"", content_type="application/sdp"):
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": content_type}, method=method
    )
    with urllib.request.urlopen(req, timeout=15) as reply:
        return reply.status, reply.read().decode(), reply.headers.get("Location")


async def exchange(pc, url):
    await pc.setLocalDescription(await pc.createOffer())
    status, answer, location = await asyncio.to_thread(
        request, "POST", url, pc.localDescription.sdp.encode()
    )
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return status, location


async def play(base, route, seconds):
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    seen = {"video": 0, "audio": 0, "width": 0, "height": 0}

    async def consume(track):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            seen[track.kind] += 1
            if track.kind == "video":
                seen["width"], seen["height"] = frame.width, frame.height

    pc.on("track", lambda track: asyncio.ensure_future(consume(track)))
    await exchange(pc, f"{base}/{route}/whep")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0.2)
    await pc.close()
    print(json.dumps(seen))


async def publish(base, feed, path, seconds):
    player = MediaPlayer(path, loop=True)
    pc = RTCPeerConnection()
    video = pc.addTransceiver(player.video, direction="sendonly")
    pc.addTransceiver(player.audio, direction="sendonly")
    # wasmcast takes H.264: offer it first.
    codecs = RTCRtpSender.getCapabilities("video").codecs
    video.setCodecPreferences([c for c in codecs if c.mimeType == "video/H264"])
    status, location = await exchange(pc, f"{base}/{feed}/whip")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0.2)
    await asyncio.to_thread(request, "DELETE", base + location, b"", "text/plain")
    await pc.close()
    print(json.dumps({"status": status}))


def main():
    mode, base = sys.argv[1], sys.argv[2].rstrip("/")
    if mode == "play":
        asyncio.run(play(base, sys.argv[3], float(sys.argv[4])))
    elif mode == "publish":
        asyncio.run(publish(base, sys.argv[3], sys.argv[4], float(sys.argv[5])))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
