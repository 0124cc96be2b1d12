"""rtmpd.codec is pure: no Twisted, no network, no clock, no threads, no files.

Every module under ``rtmpd/codec`` is found by walking the package, so a new
codec module is checked without anyone adding it here. Two checks per module:

* at run time, in a fresh interpreter: importing the module pulls in none of
  :data:`FORBIDDEN`, directly or through anything it imports. The interpreter
  itself loads some of these at startup (``os`` through ``site``, ``time``
  through ``zipimport``), so only modules that are new after the import count;
* in the source: no ``import`` of :data:`FORBIDDEN_IN_SOURCE` anywhere in the
  file (including inside functions, which the run-time check cannot see, and
  ``os``/``time``, which it cannot tell apart from the startup ones), and no
  call to ``open``.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import rtmpd.codec

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = frozenset(
    {
        "twisted",
        "autobahn",
        "zope",
        "socket",
        "time",
        "os",
        "logging",
        "asyncio",
        "threading",
        "select",
        "subprocess",
    }
)
# Not flagged at run time because the standard library itself loads them
# (``io`` at startup, ``random`` through ``secrets``), but a codec must not use
# them directly: it does no file I/O and takes randomness from ``secrets``.
FORBIDDEN_IN_SOURCE = FORBIDDEN | {"io", "pathlib", "random"}

# The modules that exist today: discovery must find at least these, so the
# tests below cannot pass on an empty or truncated list.
KNOWN_MODULES = frozenset(
    {
        "rtmpd.codec",
        "rtmpd.codec.aac",
        "rtmpd.codec.amf0",
        "rtmpd.codec.amf3",
        "rtmpd.codec.avc",
        "rtmpd.codec.bits",
        "rtmpd.codec.buffer",
        "rtmpd.codec.errors",
        "rtmpd.codec.flv",
        "rtmpd.codec.hevc",
        "rtmpd.codec.hls",
        "rtmpd.codec.mp4",
        "rtmpd.codec.mp4.boxes",
        "rtmpd.codec.mp4.demux",
        "rtmpd.codec.mp4.fmp4",
        "rtmpd.codec.mp4.progressive",
        "rtmpd.codec.mpegts",
        "rtmpd.codec.rtmp",
        "rtmpd.codec.rtmp.chunk",
        "rtmpd.codec.rtmp.connection",
        "rtmpd.codec.rtmp.events",
        "rtmpd.codec.rtmp.handshake",
        "rtmpd.codec.rtmp.messages",
        "rtmpd.codec.sentinel",
    }
)

# Run in the child: snapshot sys.modules, import the module, print what is new.
# Only builtins are used before the snapshot, so nothing of ours hides in it.
_CHILD = """\
import sys
before = set(sys.modules)
__import__(sys.argv[1])
print("\\n".join(sorted(set(sys.modules) - before)))
"""


def _discover() -> list[str]:
    found = {rtmpd.codec.__name__}
    for info in pkgutil.walk_packages(rtmpd.codec.__path__, prefix=f"{rtmpd.codec.__name__}."):
        found.add(info.name)
    return sorted(found)


MODULES = _discover()


def _forbidden(name: str, forbidden: frozenset[str]) -> bool:
    """``name`` or its package is forbidden; ``_socket`` counts as ``socket``."""
    return name.split(".")[0].lstrip("_") in forbidden


def test_discovery_finds_every_codec_module() -> None:
    missing = KNOWN_MODULES - set(MODULES)
    assert not missing, f"pkgutil did not find {sorted(missing)}"


@pytest.mark.parametrize("module", MODULES)
def test_import_pulls_in_nothing_impure(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"importing {module} failed:\n{result.stderr}"
    new = result.stdout.split()
    assert module in new, f"{module} was already imported at startup; nothing was checked"
    impure = [name for name in new if _forbidden(name, FORBIDDEN)]
    assert not impure, f"importing {module} imports {impure}"


@pytest.mark.parametrize("module", MODULES)
def test_source_imports_nothing_impure(module: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), filename=spec.origin)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            assert not _forbidden(name, FORBIDDEN_IN_SOURCE), (
                f"{module} line {node.lineno} imports {name}"
            )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "open", f"{module} line {node.lineno} opens a file"
