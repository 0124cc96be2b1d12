"""Pure wire-format codecs: bytes in, events out. No I/O, no Twisted, no clock."""
