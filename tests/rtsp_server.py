"""GStreamer's RTSP server for the camera tests: serves an H.264 MP4 at /cam on a free
port of 127.0.0.1, each client from the video's start, in real time; prints the port.

Run by Debian's python3 (python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-rtsp,
gstreamer1.0-plugins-good), not the project's venv: ``rtsp_server.py VIDEO.mp4``.
``--check`` only says whether everything it needs is installed (exit 0) or not.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

#: The MP4's H.264 payloaded as it is: no decoding or encoding in the server.
PIPELINE = "( filesrc location={video} ! qtdemux ! rtph264pay name=pay0 pt=96 config-interval=1 )"
ELEMENTS = ("filesrc", "qtdemux", "rtph264pay")


def main(argv: list[str]) -> int:
    Gst.init(None)
    missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        print(f"missing GStreamer elements: {', '.join(missing)}", file=sys.stderr)
        return 1
    if argv[1:] == ["--check"]:
        return 0
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service("0")  # a free port, read back once bound
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE.format(video=argv[1]))
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print("could not bind the RTSP server", file=sys.stderr)
        return 1
    print(server.get_bound_port(), flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
