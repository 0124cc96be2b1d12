"""rtmpd-push's URL: scheme, host, port, app and stream, checked as the server checks them."""

from __future__ import annotations

import pytest

from rtmpd.client.target import PushTarget, UsageError, parse_target


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("rtmp://h/live/cam1", PushTarget("rtmp", "h", 1935, "live", "cam1")),
        ("rtmp://h:1936/app/inst/s?key=1", PushTarget("rtmp", "h", 1936, "app/inst", "s", "key=1")),
        ("http://127.0.0.1:8501/live/a", PushTarget("http", "127.0.0.1", 8501, "live", "a")),
        ("https://h/live/a", PushTarget("https", "h", 443, "live", "a")),
        ("ws://h:8501/live/a", PushTarget("ws", "h", 8501, "live", "a")),
        ("wss://[::1]/live/a", PushTarget("wss", "::1", 443, "live", "a")),
    ],
)
def test_urls_parse(url: str, want: PushTarget) -> None:
    assert parse_target(url) == want


@pytest.mark.parametrize(
    "url", ["ftp://h/live/a", "rtmp:///live/a", "http://h/live", "http://h/li ve/a",
            "http://h/live/a.b", "ws://h:99999/live/a", "http://h/a/b/c"],
)
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        parse_target(url)
