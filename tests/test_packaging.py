"""The built wheel ships the twistd dropin: after installing it into a fresh
venv, ``twistd --help`` lists rtmpd (a plugin left out of the wheel is a
classic Twisted packaging bug)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installed_in_a_fresh_venv_provides_the_twistd_plugin(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
         str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    wheels = list(dist.glob("rtmpd-*.whl"))
    assert len(wheels) == 1, wheels
    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(fresh)
    subprocess.run(
        [str(fresh / "bin" / "pip"), "install", "--quiet", str(wheels[0])],
        check=True, capture_output=True, timeout=600,
    )
    # Run from an empty directory so the source tree is not importable.
    result = subprocess.run(
        [str(fresh / "bin" / "twistd"), "--help"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "rtmpd" in result.stdout
    options = subprocess.run(
        [str(fresh / "bin" / "twistd"), "rtmpd", "--help"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert "--viewer-queue-bytes" in options.stdout, options.stderr
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "twisted/plugins/rtmpd_plugins.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
