"""The clients: RTMP(S), HTTP-FLV and WS-FLV publish sessions with their
connectors, pacing and file sources for the pusher (``rtmpd-push``), which
the relay's forwards (:mod:`rtmpd.services.forward`) drive from a live stream
instead; and the HTTP-FLV and RTMP pulls that an upstream (a gateway's, or
rtmpd's ``--pull``) is made of. Nothing here is imported by the server's core."""
