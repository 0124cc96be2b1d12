"""The clients: RTMP, HTTP-FLV and WS-FLV connectors, pacing and file
sources for the pusher (``rtmpd-push``), and the HTTP-FLV pull that a
gateway's upstream is made of. Nothing here is imported by the server's core."""
