"""rtmpd: a live-streaming server for the FLV family (RTMP, HTTP-FLV, WS-FLV) with HLS and MP4
recording, built on Twisted."""

from rtmpd._version import __version__

__all__ = ["__version__"]
