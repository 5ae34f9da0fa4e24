"""A WHEP player and a WHIP publisher made with aiortc, a WebRTC stack independent of wasmcast's.

    aiortc_client.py play BASE_URL ROUTE SECONDS
        Plays ROUTE over WHEP for SECONDS and prints the frames it decoded as JSON:
        {"video": N, "audio": N, "width": W, "height": H}.
    aiortc_client.py publish BASE_URL FEED FILE SECONDS
        Publishes FILE (looped; aiortc encodes it as H.264 and Opus) over WHIP for SECONDS,
        then ends with DELETE; prints {"status": HTTP status of the offer}.
    aiortc_client.py sync BASE_URL ROUTE SECONDS
        Plays ROUTE (white flashes and beeps) for SECONDS and places each flash and each beep on
        the sender's wall clock, through the RTP-to-NTP mapping of its track's sender reports;
        prints {"flashes": [...], "beeps": [...], "reports": {"video": N, "audio": N}} (seconds).
    aiortc_client.py lossy BASE_URL ROUTE SECONDS
        Plays ROUTE for SECONDS as if the network lost the first copy of every 10th video RTP
        packet: aiortc asks for each again with a NACK; prints {"dropped": N, "recovered": N,
        "nacked": N, "video": frames decoded}, where recovered counts dropped packets that came
        again.
"""

import array
import asyncio
import json
import sys
import time
import urllib.request

import aioice

from aiortc import (
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaPlayer
from aiortc.rtp import RtcpSrPacket


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


class SenderClocks:
    """The latest sender report of each kind of track: its RTP time and its NTP time."""

    def __init__(self):
        self.latest = {}
        self.count = {"video": 0, "audio": 0}
        seen = self
        handle = RTCRtpReceiver._handle_rtcp_packet

        async def watched(receiver, packet):
            if isinstance(packet, RtcpSrPacket) and receiver.track is not None:
                info = packet.sender_info
                kind = receiver.track.kind
                seen.latest[kind] = (info.rtp_timestamp, info.ntp_timestamp / 2**32)
                seen.count[kind] += 1
            await handle(receiver, packet)

        RTCRtpReceiver._handle_rtcp_packet = watched

    def wall_clock(self, kind, timestamp, rate):
        """Where the sender's reports put RTP `timestamp` of `kind`, in NTP seconds."""
        if kind not in self.latest:
            return None
        rtp, ntp = self.latest[kind]
        # The 32-bit distance taken as signed: the nearest way round.
        distance = (timestamp - rtp + 2**31) % 2**32 - 2**31
        return ntp + distance / rate


async def sync(base, route, seconds):
    clocks = SenderClocks()
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    # RTP timestamps of the first white frame of each flash and the first loud sample of each
    # beep; placed on the wall clock at the end, with the last reports.
    marks = {"video": [], "audio": []}

    # An onset is marked only after 200 ms of dark frames (of quiet samples): flashes and beeps
    # are 40 and 80 ms long, a second apart. Both start as if a flash (a beep) were under way, so
    # one that was when the viewer joined has no onset to mark. A shorter pause is not enough: the
    # route's Opus rendition starts its AAC decoder in the middle of the stream when the first
    # viewer comes, and its first 48 ms or so are near silence (measured), so the rest of a beep
    # it joined looked like an onset 60 ms late, beside a flash the viewer saw no onset of.
    async def watch_video(track):
        dark_run = 0
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            luma = frame.planes[0]
            white = sum(bytes(luma)) / (luma.line_size * frame.height) > 128
            if white and dark_run >= 5:
                marks["video"].append(frame.pts)
            dark_run = 0 if white else dark_run + 1

    async def watch_audio(track):
        quiet_run = 0
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            plane = bytes(frame.planes[0])
            if frame.format.name.startswith("s16"):
                samples = array.array("h", plane)
                scale = 32768.0
            else:
                samples = array.array("f", plane)
                scale = 1.0
            step = 1 if frame.format.is_planar else len(frame.layout.channels)
            pause = frame.sample_rate // 5
            for index in range(0, frame.samples):
                loud = abs(samples[index * step]) / scale > 0.3
                if loud and quiet_run >= pause:
                    marks["audio"].append(frame.pts + index)
                quiet_run = 0 if loud else quiet_run + 1

    # aiortc counts each track's frame times from its first RTP timestamp (its TimestampMapper).
    origins = {}

    def on_track(track):
        receiver = next(r for r in pc.getReceivers() if r.track is track)
        origins[track.kind] = receiver._RTCRtpReceiver__timestamp_mapper
        watch = watch_video if track.kind == "video" else watch_audio
        asyncio.ensure_future(watch(track))

    pc.on("track", on_track)
    await exchange(pc, f"{base}/{route}/whep")
    await asyncio.sleep(seconds)
    await pc.close()
    placed = {
        kind: [
            clocks.wall_clock(kind, origins[kind]._origin + t, rate) for t in marks[kind]
        ]
        for kind, rate in (("video", 90000), ("audio", 48000))
    }
    print(
        json.dumps(
            {
                "flashes": [t for t in placed["video"] if t is not None],
                "beeps": [t for t in placed["audio"] if t is not None],
                "reports": clocks.count,
            }
        )
    )


async def lossy(base, route, seconds):
    losses = {"dropped": set(), "recovered": set(), "nacked": set()}
    losing = True
    receive = aioice.Connection.recv
    send_nack = RTCRtpReceiver._send_rtcp_nack

    # Lost on the way, before SRTP: a packet that reached SRTP and came again would be refused
    # as a replay, as a browser's SRTP would. Only the video track is offered, so every RTP
    # packet is video.
    async def lose(connection):
        while True:
            data = await receive(connection)
            is_rtp = len(data) >= 12 and 127 < data[0] < 192 and not 192 <= data[1] <= 223
            if not is_rtp:
                return data
            sequence = int.from_bytes(data[2:4], "big")
            if sequence in losses["dropped"]:
                losses["recovered"].add(sequence)
            elif losing and sequence % 10 == 0:
                losses["dropped"].add(sequence)
                continue
            return data

    async def nack(receiver, media_ssrc, lost):
        losses["nacked"].update(lost)
        await send_nack(receiver, media_ssrc, lost)

    aioice.Connection.recv = lose
    RTCRtpReceiver._send_rtcp_nack = nack
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    frames = {"video": 0}

    async def consume(track):
        while True:
            try:
                await track.recv()
            except Exception:
                return
            frames["video"] += 1

    pc.on("track", lambda track: asyncio.ensure_future(consume(track)))
    await exchange(pc, f"{base}/{route}/whep")
    await asyncio.sleep(seconds)
    # Time for the last packets dropped to come again.
    losing = False
    await asyncio.sleep(1)
    await pc.close()
    print(
        json.dumps(
            {
                "dropped": len(losses["dropped"]),
                "recovered": len(losses["recovered"]),
                "nacked": len(losses["nacked"] & losses["dropped"]),
                "video": frames["video"],
            }
        )
    )


def main():
    mode, base = sys.argv[1], sys.argv[2].rstrip("/")
    if mode == "play":
        asyncio.run(play(base, sys.argv[3], float(sys.argv[4])))
    elif mode == "sync":
        asyncio.run(sync(base, sys.argv[3], float(sys.argv[4])))
    elif mode == "lossy":
        asyncio.run(lossy(base, sys.argv[3], float(sys.argv[4])))
    elif mode == "publish":
        asyncio.run(publish(base, sys.argv[3], sys.argv[4], float(sys.argv[5])))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
