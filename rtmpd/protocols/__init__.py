"""Thin Twisted adapters between sockets and the pure core."""
