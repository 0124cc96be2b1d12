#!/usr/bin/env python3
"""Soak test (issue 16 part 3): one live stream played by 500 viewers for an hour.

rtmpd runs with every recorder on (hls, flv, fmp4, fmp4-separate). ffmpeg publishes a small
pre-encoded clip in a loop (``-re -stream_loop -1 -c copy``: it costs almost no CPU). Viewers:

* 95 % well-behaved, played by three ``bin/loadgen`` processes (RTMP, HTTP-FLV, WS-FLV, a third
  each). Each viewer leaves ``100 / churn`` seconds after its join and a new one takes its place
  (``--hold-s``), so 1 % of all viewers are replaced every second.
* 5 % slow or stalled, in this process (one thread each, protocols in turn): half never read,
  half read at a quarter of the stream's rate, both with a 16 KiB receive buffer so the backlog
  piles up in the server. The server must drop each (its viewer queue bound); the viewer then
  reads what is left, sees the end, and a new one takes its place. A play still live after
  ``--stall-s`` seconds of that is a failure (the backpressure did not work).

Every 10 s the server's RSS and CPU time are sampled (``samples.csv``). At the end: a least-squares
line through the samples after the warm-up, its slope in MiB/hour with its standard error, and
the verdict "flat" when the growth it predicts over that span is within the noise (at most three
standard errors of the slope times the span, twice the samples' spread around the line, or
1 MiB); the log's tracebacks and unhandled errors (must be none); every recording checked as the e2e tests do
(ffprobe reads it, ``ffmpeg -v error ... -f null -`` decodes it without a word, no recording left
unfinished). ``report.md``, ``report.json``, ``rss.png`` (when matplotlib is installed) and the
server's log go to ``benchmarks/out/soak-<time>/``. Exit status 1 when any check fails.

Run niced (``make soak`` does ``nice -n 5``): the machine is shared. Usage::

    benchmarks/soak.py --minutes 60            # make soak (SOAK_MINUTES=60)
    benchmarks/soak.py --minutes 3 --warmup-minutes 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from publish import amf_num, amf_obj, amf_str, rtmp_chunks  # noqa: E402

TWISTD = os.path.join(ROOT, ".venv", "bin", "twistd")
LOADGEN = os.path.join(HERE, "bin", "loadgen")
FORMATS = ("hls", "flv", "fmp4", "fmp4-separate")
STREAM = "soak"
SAMPLE_S = 10.0
#: The clip: small (320x240, 25 fps, 1 s GOP), so 500 viewers and four recorders stay light.
CLIP_SECONDS = 30
VIDEO_BPS = 300_000
AUDIO_BPS = 64_000
#: A slow viewer's receive buffer: small, so its backlog piles up in the server, not the kernel.
SLOW_RCVBUF = 16 * 1024
#: Growth over the trend's span that is never called a trend: the allocators take memory
#: from the system in steps of about this size.
MIN_GROWTH_MIB = 1.0
TRACEBACK_MARKS = ("Traceback (most recent call last)", "Unhandled Error", "Unhandled error")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} soak: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def make_clip(path: str) -> None:
    """The looped clip, made once (cached beside the benchmarks' clips)."""
    if os.path.exists(path):
        return
    tmp = path + ".tmp.flv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={CLIP_SECONDS}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={CLIP_SECONDS}",
         "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-keyint_min", "25",
         "-sc_threshold", "0", "-b:v", str(VIDEO_BPS), "-maxrate", str(VIDEO_BPS),
         "-bufsize", str(VIDEO_BPS), "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", str(AUDIO_BPS), "-f", "flv", tmp],
        check=True, timeout=300,
    )  # fmt: skip
    os.replace(tmp, path)


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- slow viewers


def rtmp_play_bytes(port: int, stream: str) -> bytes:
    """connect, createStream and play, sent at once after the handshake."""
    connect = (
        amf_str("connect")
        + amf_num(1)
        + amf_obj(
            {"app": "live", "flashVer": "LNX 9,0,124,2", "tcUrl": f"rtmp://127.0.0.1:{port}/live"}
        )
    )
    create = amf_str("createStream") + amf_num(2) + b"\x05"
    play = amf_str("play") + amf_num(3) + b"\x05" + amf_str(stream) + amf_num(-1000)
    return (
        rtmp_chunks(3, 20, 0, 0, connect, 128)
        + rtmp_chunks(3, 20, 0, 0, create, 128)
        + rtmp_chunks(8, 20, 1, 0, play, 128)
    )


@dataclass
class SlowStats:
    """What the slow viewers saw (shared by their threads; counters only)."""

    plays: int = 0
    dropped: int = 0
    #: Plays still getting live media after --stall-s: the server never dropped them.
    not_dropped: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)


class SlowViewer(threading.Thread):
    """One slow (``read_bps`` > 0) or stalled (0) viewer slot over ``protocol``,
    played again and again until :attr:`quit` is set."""

    def __init__(
        self,
        protocol: str,
        port: int,
        read_bps: int,
        stall_s: float,
        stats: SlowStats,
        quit: threading.Event,
    ) -> None:
        super().__init__(daemon=True, name=f"slow {protocol} {read_bps}")
        self.protocol, self.port, self.read_bps = protocol, port, read_bps
        self.stall_s, self.stats, self.quit = stall_s, stats, quit

    def run(self) -> None:
        while not self.quit.is_set():
            try:
                self.play_once()
            except OSError as e:
                with self.stats.lock:
                    if len(self.stats.errors) < 20:
                        self.stats.errors.append(f"{self.protocol}: {e!r}")
                self.quit.wait(2)

    def connect(self) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.port))
        if self.protocol == "rtmp":
            sock.sendall(b"\x03" + bytes(1536))
            got = b""
            while len(got) < 1 + 2 * 1536:
                data = sock.recv(1 + 2 * 1536 - len(got))
                if not data:
                    raise ConnectionError("closed during the handshake")
                got += data
            sock.sendall(got[1:1537] + rtmp_play_bytes(self.port, STREAM))
        else:
            upgrade = (
                (
                    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                )
                if self.protocol == "ws"
                else ""
            )
            sock.sendall(
                f"GET /live/{STREAM}.flv HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}\r\n".encode()
            )
        return sock

    def play_once(self) -> None:
        sock = self.connect()
        self.stats.add("plays")
        try:
            end = time.monotonic() + self.stall_s
            ended = False
            while not ended and time.monotonic() < end and not self.quit.is_set():
                if self.read_bps:
                    ended = self.read(sock, self.read_bps // 4)
                    self.quit.wait(0.25)
                else:
                    self.quit.wait(1)
            if self.quit.is_set():
                return
            # Read what is left at full speed: a dropped play ends within seconds;
            # one that goes on for 10 s is live still.
            end = time.monotonic() + 10
            while not ended and time.monotonic() < end:
                ended = self.read(sock, 1 << 16)
            self.stats.add("dropped" if ended else "not_dropped")
        finally:
            sock.close()

    @staticmethod
    def read(sock: socket.socket, size: int) -> bool:
        """Read up to ``size`` bytes; True when the server has closed the play."""
        try:
            return sock.recv(size) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


# --------------------------------------------------------------------------- the run


@dataclass
class Sample:
    t_s: float
    rss_kib: int
    server_cpu_pct: float
    others_cpu_pct: float
    viewers: int


def viewer_count(web_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/api/streams", timeout=5) as r:
            data = json.load(r)
    except (OSError, ValueError):
        return -1
    streams = data.get("streams", []) if isinstance(data, dict) else data
    return sum(int(s.get("viewers_total", 0)) for s in streams if isinstance(s, dict))


def fit(samples: list[Sample], warmup_s: float) -> dict[str, float | bool | int]:
    """Least-squares RSS trend after the warm-up: slope and its standard error in MiB/hour,
    the samples' spread around the line (MiB), and whether the growth it predicts over the
    span stays within that noise."""
    pts = [(s.t_s / 3600, s.rss_kib / 1024) for s in samples if s.t_s >= warmup_s]
    n = len(pts)
    if n < 3:
        return {"samples": n, "flat": False}
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    resid = [y - (my + slope * (x - mx)) for x, y in pts]
    sd = math.sqrt(sum(r * r for r in resid) / (n - 2))
    se = sd / math.sqrt(sxx)
    span_h = pts[-1][0] - pts[0][0]
    growth = slope * span_h
    # The same line through the second half alone: a leak grows in both halves,
    # memory still settling (allocator arenas reaching their high-water mark)
    # only in the first.
    late = pts[n // 2 :]
    lx = sum(x for x, _ in late) / len(late)
    ly = sum(y for _, y in late) / len(late)
    lxx = sum((x - lx) ** 2 for x, _ in late)
    late_slope = sum((x - lx) * (y - ly) for x, y in late) / lxx if lxx else 0.0
    late_sd = math.sqrt(
        sum((y - ly - late_slope * (x - lx)) ** 2 for x, y in late) / max(1, len(late) - 2)
    )
    return {
        "samples": n, "span_min": round(span_h * 60, 1),
        "slope_mib_per_h": round(slope, 2), "slope_se_mib_per_h": round(se, 2),
        "growth_mib": round(growth, 2), "resid_sd_mib": round(sd, 2),
        "rss_mib_min": round(min(y for _, y in pts), 1),
        "rss_mib_max": round(max(y for _, y in pts), 1),
        "flat": growth <= max(3 * se * span_h, 2 * sd, MIN_GROWTH_MIB),
        "late_half_slope_mib_per_h": round(late_slope, 2),
        "late_half_slope_se_mib_per_h": round(late_sd / math.sqrt(lxx), 2) if lxx else None,
    }  # fmt: skip


def read_text(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def run_checked(cmd: list[str], timeout_s: float = 1800) -> str:
    """stderr of a check command ('' when it said nothing and exited 0)."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    return r.stderr.strip() + ("" if r.returncode == 0 else f" (exit {r.returncode})")


def check_recordings(root: str, out: str) -> dict[str, str]:
    """Each recording: '' when ffprobe reads it and ffmpeg decodes it clean, else why not."""
    base = {
        "hls": f"{root}/hls/live/{STREAM}",
        "flv": f"{root}/flv/live/{STREAM}",
        "fmp4": f"{root}/mp4/live/{STREAM}/output_merge",
        "fmp4-separate": f"{root}/mp4/live/{STREAM}/output_separate",
    }
    inputs: dict[str, str] = {
        "flv": f"{base['flv']}/index.flv",
        "hls": f"{base['hls']}/index.m3u8",
        "fmp4": f"{base['fmp4']}/stream_full.mp4",
    }
    for track in ("audio", "video"):
        d = base["fmp4-separate"]
        parts = (
            sorted(p for p in os.listdir(d) if p.startswith(f"{track}_") and p.endswith(".m4s"))
            if os.path.isdir(d)
            else []
        )
        joined = os.path.join(out, f"{track}_separate.mp4")
        with open(joined, "wb") as f:
            for name in [f"{track}_init.mp4", *parts]:
                with open(os.path.join(d, name), "rb") as part:
                    f.write(part.read())
        inputs[f"fmp4-separate {track}"] = joined
    result = {}
    for what, path in inputs.items():
        if not os.path.exists(path):
            result[what] = "missing"
            continue
        problem = run_checked(["ffprobe", "-v", "error", "-show_streams", "-of", "json", path])
        problem = problem or run_checked(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-f", "null", "-"]
        )
        if what == "hls" and not problem and "#EXT-X-ENDLIST" not in read_text(path):
            problem = "playlist not closed (no #EXT-X-ENDLIST)"
        result[what] = problem[:500]
        log(f"recording {what}: {problem[:200] or 'valid'}")
    for what in ("audio", "video"):
        os.unlink(inputs[f"fmp4-separate {what}"])
    unfinished = [
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f == ".recording"
    ]
    if unfinished:
        result["unfinished"] = ", ".join(unfinished)
    return result


def plot(
    samples: list[Sample], trend: dict[str, float | bool | int], warmup_s: float, path: str
) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot([s.t_s / 60 for s in samples], [s.rss_kib / 1024 for s in samples], lw=1, label="RSS")
    ax.axvline(warmup_s / 60, color="grey", ls=":", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("rtmpd RSS, MiB")
    ax.set_title(
        f"rtmpd soak: slope {trend.get('slope_mib_per_h')} ± {trend.get('slope_se_mib_per_h')} MiB/h "
        f"after warm-up"
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--minutes", type=float, default=60, help="how long the viewers play (default 60)"
    )
    ap.add_argument(
        "--warmup-minutes",
        type=float,
        default=None,
        help="samples before this are left out of the trend (default: a sixth of the run, at most 10)",
    )
    ap.add_argument("--viewers", type=int, default=500, help="viewers at any time (default 500)")
    ap.add_argument(
        "--slow-percent", type=float, default=5, help="slow or stalled viewers (default 5)"
    )
    ap.add_argument(
        "--churn-percent", type=float, default=1, help="viewers replaced per second (default 1)"
    )
    ap.add_argument(
        "--stall-s",
        type=float,
        default=240,
        help="a slow viewer the server has not dropped after this long is a failure",
    )
    ap.add_argument(
        "--keep-media", action="store_true", help="keep the recordings after a passing run"
    )
    ap.add_argument(
        "--out", default=None, help="output directory (default benchmarks/out/soak-<time>)"
    )
    a = ap.parse_args(argv)

    out = os.path.abspath(a.out or os.path.join(HERE, "out", time.strftime("soak-%Y%m%d-%H%M%S")))
    os.makedirs(out, exist_ok=True)
    duration_s = a.minutes * 60
    warmup_s = 60 * (a.warmup_minutes if a.warmup_minutes is not None else min(10.0, a.minutes / 6))
    if not os.path.exists(LOADGEN):
        subprocess.run(["sh", os.path.join(HERE, "build.sh")], check=True)
    clip = os.path.join(HERE, "out", "soak_clip.flv")
    make_clip(clip)
    clip_bps = os.path.getsize(clip) * 8 / CLIP_SECONDS

    rtmp_port, http_port, web_port = free_port(), free_port(), free_port()
    root = os.path.join(out, "media")
    os.makedirs(root, exist_ok=True)
    log_path = os.path.join(out, "rtmpd.log")
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with open(os.path.join(out, log_name), "wb") as f:
            p = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=out
            )
        procs.append(p)
        return p

    server = spawn([TWISTD, "--nodaemon", "--pidfile=", "--logfile=-", "rtmpd",
                    "--rtmp", f"tcp:{rtmp_port}:interface=127.0.0.1",
                    "--http", f"tcp:{http_port}:interface=127.0.0.1",
                    "--web", f"tcp:{web_port}:interface=127.0.0.1",
                    "--root", root, "--record", ",".join(FORMATS)], "rtmpd.log")  # fmt: skip
    failures: list[str] = []
    samples: list[Sample] = []
    quit = threading.Event()
    slow = SlowStats()
    loadgens: dict[str, subprocess.Popen[bytes]] = {}
    started = time.monotonic()
    try:
        if not all(wait_port(p, 30, server) for p in (rtmp_port, http_port, web_port)):
            raise RuntimeError("rtmpd did not start; see rtmpd.log")
        publisher = spawn(["ffmpeg", "-nostdin", "-v", "error", "-re", "-stream_loop", "-1", "-i", clip,
                           "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{rtmp_port}/live/{STREAM}"],
                          "ffmpeg.log")  # fmt: skip
        end = time.monotonic() + 30
        while viewer_count(web_port) < 0 or not _live(http_port):
            if time.monotonic() > end or publisher.poll() is not None:
                raise RuntimeError("the stream never went live; see ffmpeg.log")
            time.sleep(0.5)

        n_slow = round(a.viewers * a.slow_percent / 100)
        n_fast = a.viewers - n_slow
        hold_s = 100 / a.churn_percent
        protocols = ("rtmp", "http-flv", "ws-flv")
        log(
            f"{n_fast} viewers by loadgen (each replaced after {hold_s:.0f} s), {n_slow} slow/stalled, "
            f"{a.minutes:g} min, output in {out}"
        )
        for i, proto in enumerate(protocols):
            n = n_fast // 3 + (1 if i < n_fast % 3 else 0)
            loadgens[proto] = spawn(
                [LOADGEN, "--proto", proto, "--port", str(rtmp_port if proto == "rtmp" else http_port),
                 "--stream", STREAM, "--viewers", str(n), "--rate", f"{n / hold_s:.3f}",
                 "--hold-s", str(hold_s), "--duration", str(duration_s), "--window", "60",
                 "--expect-bps", str(int(clip_bps)), "--probes", "10", "--cpu-target", "20",
                 "--json", os.path.join(out, f"loadgen-{proto}.json"), "--quiet"],
                f"loadgen-{proto}.log")  # fmt: skip
        threads = []
        for i in range(n_slow):
            proto = ("rtmp", "http", "ws")[i % 3]
            read_bps = 0 if i % 2 == 0 else int(clip_bps / 8 / 4)
            t = SlowViewer(
                proto, rtmp_port if proto == "rtmp" else http_port, read_bps, a.stall_s, slow, quit
            )
            t.start()
            threads.append(t)

        others = [publisher, *loadgens.values()]
        last_t, last_cpu = time.monotonic(), proc_cpu_s(server.pid)
        last_other = sum(proc_cpu_s(p.pid) for p in others)
        next_sample = started + SAMPLE_S
        with open(os.path.join(out, "samples.csv"), "w") as csv:
            csv.write("t_s,rss_kib,server_cpu_pct,others_cpu_pct,viewers\n")
            while time.monotonic() - started < duration_s + 5:
                time.sleep(max(0.0, next_sample - time.monotonic()))
                next_sample += SAMPLE_S
                if server.poll() is not None:
                    raise RuntimeError(f"rtmpd exited ({server.returncode}) during the run")
                if publisher.poll() is not None:
                    raise RuntimeError(
                        "the publisher (ffmpeg) exited during the run; see ffmpeg.log"
                    )
                now, cpu = time.monotonic(), proc_cpu_s(server.pid)
                other = sum(proc_cpu_s(p.pid) for p in others)
                s = Sample(
                    round(now - started, 1),
                    proc_rss_kib(server.pid),
                    round(100 * (cpu - last_cpu) / (now - last_t), 1),
                    round(100 * (other - last_other) / (now - last_t), 1),
                    viewer_count(web_port),
                )
                last_t, last_cpu, last_other = now, cpu, other
                samples.append(s)
                csv.write(
                    f"{s.t_s},{s.rss_kib},{s.server_cpu_pct},{s.others_cpu_pct},{s.viewers}\n"
                )
                csv.flush()
                if len(samples) % 6 == 0:
                    log(
                        f"{s.t_s / 60:.1f} min: RSS {s.rss_kib / 1024:.1f} MiB, server CPU {s.server_cpu_pct} %, "
                        f"viewers {s.viewers}, slow plays {slow.plays} (dropped {slow.dropped})"
                    )
        quit.set()
        for proto, p in loadgens.items():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                failures.append(f"loadgen {proto} did not end")
        # ffmpeg ends its publish cleanly on SIGTERM; the recorders then finalise.
        publisher.send_signal(signal.SIGTERM)
        publisher.wait(timeout=30)
        end = time.monotonic() + 300
        while time.monotonic() < end:
            text = read_text(log_path)
            if all(f"{fmt} recording of live/{STREAM} finalised" in text for fmt in FORMATS):
                break
            time.sleep(1)
        else:
            failures.append("not every recording was finalised within 300 s of the publisher's end")
    except RuntimeError as e:
        failures.append(str(e))
    finally:
        quit.set()
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                failures.append(f"{p.args[0]} did not stop on SIGTERM")
    ran_s = time.monotonic() - started

    text = read_text(log_path)
    exceptions = sum(text.count(mark) for mark in TRACEBACK_MARKS)
    if exceptions:
        failures.append(f"{exceptions} tracebacks/unhandled errors in rtmpd.log")
    drops_logged = text.count("bytes behind, over the queue limit")
    trend = fit(samples, warmup_s)
    if not trend.get("flat"):
        failures.append(f"RSS grows after the warm-up: {trend}")
    if slow.not_dropped:
        failures.append(f"{slow.not_dropped} slow/stalled plays were never dropped by the server")
    log("checking the recordings")
    recordings = (
        check_recordings(root, out) if os.path.isdir(root) else {"all": "no media directory"}
    )
    bad = {k: v for k, v in recordings.items() if v}
    if bad:
        failures.append(f"recordings not valid: {bad}")
    loadgen_summary = {}
    for proto in loadgens:
        try:
            with open(os.path.join(out, f"loadgen-{proto}.json")) as f:
                res = json.load(f)
        except (OSError, ValueError):
            failures.append(f"loadgen {proto} wrote no summary")
            continue
        run = res.get("churn", {}).get("run", {})
        loadgen_summary[proto] = {
            k: run.get(k) for k in ("started", "completed", "failed", "dropped")
        }
        # A well-behaved viewer the server dropped or never served is a failure
        # (at most 1 %: a join can fail on a machine this busy).
        lost = (run.get("failed") or 0) + (run.get("dropped") or 0)
        if lost > 0.01 * max(1, run.get("started") or 0):
            failures.append(
                f"loadgen {proto}: {lost} of {run.get('started')} viewers failed or were dropped"
            )
    after = [s for s in samples if s.t_s >= warmup_s]
    report = {
        "minutes": round(ran_s / 60, 1), "viewers": a.viewers, "slow_percent": a.slow_percent,
        "churn_percent_per_s": a.churn_percent, "formats": FORMATS, "clip_bps": int(clip_bps),
        "rss_mib_first": round(samples[0].rss_kib / 1024, 1) if samples else None,
        "rss_mib_at_warmup_end": round(after[0].rss_kib / 1024, 1) if after else None,
        "rss_mib_last": round(samples[-1].rss_kib / 1024, 1) if samples else None,
        "trend": trend,
        "server_cpu_pct_mean": round(sum(s.server_cpu_pct for s in after) / len(after), 1) if after else None,
        "others_cpu_pct_mean": round(sum(s.others_cpu_pct for s in after) / len(after), 1) if after else None,
        "exceptions_in_log": exceptions, "slow_viewer_drops_logged": drops_logged,
        "slow_plays": slow.plays, "slow_dropped": slow.dropped, "slow_not_dropped": slow.not_dropped,
        "slow_errors": slow.errors, "recordings": recordings, "loadgen": loadgen_summary,
        "failures": failures,
    }  # fmt: skip
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    png = plot(samples, trend, warmup_s, os.path.join(out, "rss.png"))
    write_markdown(report, os.path.join(out, "report.md"), png)
    if not failures and not a.keep_media:
        subprocess.run(["rm", "-rf", root], check=False)
    print(read_text(os.path.join(out, "report.md")))
    log("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 1 if failures else 0


def _live(http_port: int) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/live/{STREAM}.flv", method="HEAD"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def write_markdown(r: dict, path: str, png: bool) -> None:
    t = r["trend"]
    lines = [
        f"# rtmpd soak, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"* {r['minutes']} min, {r['viewers']} viewers (RTMP/HTTP-FLV/WS-FLV), {r['slow_percent']:g} % slow or "
        f"stalled, {r['churn_percent_per_s']:g} %/s churn, recorders {', '.join(r['formats'])}, "
        f"clip {r['clip_bps'] / 1000:.0f} kbit/s",
        f"* RSS: {r['rss_mib_first']} MiB at the first sample, {r['rss_mib_at_warmup_end']} MiB after the "
        f"warm-up, {r['rss_mib_last']} MiB at the end (range after warm-up {t.get('rss_mib_min')}-"
        f"{t.get('rss_mib_max')} MiB)",
        f"* trend after warm-up ({t.get('samples')} samples over {t.get('span_min')} min): "
        f"{t.get('slope_mib_per_h')} ± {t.get('slope_se_mib_per_h')} MiB/h, predicted growth "
        f"{t.get('growth_mib')} MiB, spread around the line {t.get('resid_sd_mib')} MiB: "
        f"**{'flat' if t.get('flat') else 'GROWING'}**; over its second half alone "
        f"{t.get('late_half_slope_mib_per_h')} ± {t.get('late_half_slope_se_mib_per_h')} MiB/h",
        f"* CPU after warm-up: rtmpd {r['server_cpu_pct_mean']} % of a core; publisher + loadgens "
        f"{r['others_cpu_pct_mean']} %",
        f"* tracebacks/unhandled errors in the log: {r['exceptions_in_log']}",
        f"* slow/stalled plays: {r['slow_plays']}, dropped by the server {r['slow_dropped']} (log: "
        f"{r['slow_viewer_drops_logged']} queue-limit drops), never dropped {r['slow_not_dropped']}",
        "* recordings: "
        + ", ".join(
            f"{k} {'valid' if not v else 'INVALID: ' + v}" for k, v in r["recordings"].items()
        ),
        "* well-behaved viewers (loadgen joins over the run): "
        + "; ".join(
            f"{proto} {v['started']} joined, {v['completed']} held to the end of their time, {v['failed']} failed, "
            f"{v['dropped']} dropped"
            for proto, v in r["loadgen"].items()
        ),
        "",
        "**PASS**" if not r["failures"] else "**FAIL**: " + "; ".join(r["failures"]),
    ]
    if png:
        lines += ["", "![RSS](rss.png)"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
