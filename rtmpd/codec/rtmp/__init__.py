"""RTMP: handshake, chunk stream, messages and a sans-IO connection."""
