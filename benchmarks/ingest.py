#!/usr/bin/env python3
"""Ingest cost: server CPU-seconds per media-second of one publisher, per recorder set.

One run publishes the same clip (default the 4 Mbit/s one, made by publish.py) in real time
to rtmpd with each recorder set (--record none, hls, hls,flv and all four) and to nginx-rtmp
with HLS + record, each on a fresh server pinned to core 0 (publisher on core 1), and reads
the server's utime + stime from /proc/PID/stat over a window of --window seconds after
--warmup seconds of publishing. The publisher is paced in real time, so media-seconds = the
window's wall-clock seconds. Repetitions are interleaved (all configurations once, then
again), so a disturbance hits one repetition of each rather than every repetition of one.

  benchmarks/ingest.py                                   # ~5 min: 5 configurations x 3
  benchmarks/ingest.py --reps 5 --window 20              # longer, tighter spread
  benchmarks/ingest.py --only none,hls,flv               # a subset (nginx: "nginx")
  benchmarks/ingest.py --build before=/tmp/old-rtmpd --build after=/work/main
  benchmarks/ingest.py --profile hls,flv                 # rtmpd under cProfile, one run each

--build NAME=DIR[@ARGS] runs rtmpd from another source tree (PYTHONPATH=DIR; the venv is
this tree's) with more options ARGS, once per build, in the same interleaved run, so
before/after share the machine's conditions. --publisher ffmpeg publishes with `ffmpeg -re -stream_loop -1 -c copy` instead
of publish.py (ffmpeg's RTMP muxer: different chunking, so different reads).

Writes <out>/results.json and results.md (default benchmarks/out/ingest-<time>/).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import publish  # noqa: E402
import run  # noqa: E402
from run import CLK_TCK, ROOT, TWISTD, VENV_PY, cpu_times, free_port, log, spawn, stop, wait_port  # noqa: E402

#: The recorder sets of issue 14, by the name used in the tables.
RECORD_SETS = {
    "none": "none",
    "hls": "hls",
    "hls,flv": "hls,flv",
    "all four": "hls,flv,fmp4,fmp4-separate",
}
NGINX = "nginx hls+record"
#: The issue's targets, CPU-s per media-second (hls,flv: at most nginx's in the same run).
TARGETS = {"none": 0.008, "all four": 0.015}


class IngestServer:
    """One server process on core 0 with a fresh working directory."""

    def __init__(self, workdir: str, nice: int) -> None:
        self.dir = workdir
        self.nice = nice
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        os.makedirs(workdir, exist_ok=True)

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/bench"

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)


class RtmpdIngest(IngestServer):
    def __init__(self, workdir: str, nice: int, record: str, tree: str, extra: list[str],
                 profile: str | None = None) -> None:  # fmt: skip
        super().__init__(workdir, nice)
        self.record = record
        self.tree = tree
        self.extra = extra
        self.profile = profile

    def start(self) -> bool:
        root = os.path.join(self.dir, "media")
        os.makedirs(root, exist_ok=True)
        args = ["-n", "--pidfile", os.path.join(self.dir, "twistd.pid"), "rtmpd",
                "--rtmp", f"tcp:{self.port}:interface=127.0.0.1",
                "--http", f"tcp:{free_port()}:interface=127.0.0.1",
                "--web", f"tcp:{free_port()}:interface=127.0.0.1",
                "--root", root, "--record", self.record, *self.extra]  # fmt: skip
        if self.profile:
            # twistd's own profiler writes the stats when the reactor stops (SIGINT below).
            args = ["--profile", self.profile, "--profiler", "cprofile", "--savestats", *args]
        env_path = self.tree + os.pathsep + os.environ.get("PYTHONPATH", "")
        os.environ["PYTHONPATH"] = env_path
        try:
            self.proc = spawn([TWISTD, *args], cpu=0, nice=self.nice, log_path=os.path.join(self.dir, "server.log"),
                              cwd=self.dir)  # fmt: skip
        finally:
            os.environ.pop("PYTHONPATH")
        return wait_port(self.port, 30, self.proc)

    def stop(self) -> None:
        if self.proc and self.profile and self.proc.poll() is None:
            # SIGINT lets the reactor stop, so twistd writes the profile.
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        super().stop()


class NginxIngest(IngestServer):
    """nginx-rtmp with HLS (2 s fragments, 6 in the playlist, as rtmpd's defaults) and
    `record all` (one FLV per publish), one worker process, no master."""

    def start(self) -> bool:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        module = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
        if not os.path.exists(nginx) or not os.path.exists(module):
            log("nginx-rtmp missing: apt-get install -y nginx libnginx-mod-rtmp")
            return False
        for sub in ("logs", "hls", "rec"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        conf = f"""load_module {module};
daemon off;
master_process off;
worker_processes 1;
error_log {self.dir}/logs/error.log warn;
pid {self.dir}/nginx.pid;
events {{ worker_connections 1024; }}
rtmp {{
  server {{
    listen 127.0.0.1:{self.port};
    chunk_size 4096;
    application live {{
      live on;
      hls on;
      hls_path {self.dir}/hls;
      hls_fragment 2s;
      hls_playlist_length 12s;
      record all;
      record_path {self.dir}/rec;
    }}
  }}
}}
"""
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        # `taskset` execs nginx, so proc.pid is nginx's pid (master_process off: one process).
        self.proc = spawn([nginx, "-p", self.dir, "-c", path, "-e", f"{self.dir}/logs/error.log"], cpu=0,
                          nice=self.nice, log_path=os.path.join(self.dir, "server.log"))  # fmt: skip
        return wait_port(self.port, 15, self.proc)


def proc_cpu_s(pid: int) -> float:
    return run.proc_cpu_ticks(pid) / CLK_TCK


def start_publisher(url: str, a, workdir: str, clip: str) -> subprocess.Popen:
    duration = a.warmup + a.window + 5
    if a.publisher == "ffmpeg":
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", clip,
               "-t", str(duration), "-c", "copy", "-f", "flv", url]  # fmt: skip
    else:
        cmd = [VENV_PY if os.path.exists(VENV_PY) else sys.executable, os.path.join(HERE, "publish.py"),
               "--url", url, "--bitrate", a.bitrate, "--duration", str(duration), "--quiet"]  # fmt: skip
    return spawn(cmd, cpu=1, nice=a.nice, log_path=os.path.join(workdir, "publisher.log"))


def measure(server: IngestServer, a, workdir: str, clip: str) -> dict:
    """Publish for warmup + window; the server's CPU over the window."""
    pub = start_publisher(server.url, a, workdir, clip)
    try:
        time.sleep(a.warmup)
        if pub.poll() is not None or server.proc is None or server.proc.poll() is not None:
            return {"error": "publisher or server exited early (see " + workdir + ")"}
        c0, t0, s0 = proc_cpu_s(server.pid), time.monotonic(), cpu_times()
        time.sleep(a.window)
        c1, t1, s1 = proc_cpu_s(server.pid), time.monotonic(), cpu_times()
        if pub.poll() is not None:
            return {"error": "publisher exited during the window (see " + workdir + ")"}
        media_s = t1 - t0
        usage = run.core_usage(s0, s1)
        cpu0 = usage.get("cpu0", {})
        server_pct = 100 * (c1 - c0) / media_s
        return {
            "cpu_s": round(c1 - c0, 3),
            "media_s": round(media_s, 2),
            "cpu_s_per_media_s": round((c1 - c0) / media_s, 5),
            "core0_other_pct": round(max(0.0, cpu0.get("busy_pct", 0) - server_pct - cpu0.get("softirq_pct", 0)), 1),
            "core0_steal_pct": cpu0.get("steal_pct", 0),
        }
    finally:
        stop(pub)


def configurations(a) -> list[tuple[str, str | None, str, list[str]]]:
    """(label, build tree or None for nginx, record option, more rtmpd options)."""
    # a.only: the names of --only, with "flv" standing for the hls,flv set; "all" for all four.
    only = a.only or None
    sets = [k for k in RECORD_SETS if only is None or k in only or (k == "all four" and "all" in only)]
    out: list[tuple[str, str | None, str, list[str]]] = []
    for build_name, tree, args in a.builds:
        for s in sets:
            label = s if len(a.builds) == 1 else f"{build_name}: {s}"
            out.append((label, tree, RECORD_SETS[s], args))
    if not a.no_nginx and (only is None or "nginx" in only):
        out.append((NGINX, None, "", []))
    return out


def summarize(samples: list[float]) -> dict:
    if not samples:
        return {}
    return {
        "median": round(statistics.median(samples), 5),
        "min": round(min(samples), 5),
        "max": round(max(samples), 5),
        "n": len(samples),
    }


def write_outputs(a, results: dict, meta: dict) -> str:
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    nginx = results.get(NGINX, {}).get("summary", {}).get("median")
    lines = [
        f"Ingest cost, {meta['bitrate']} clip published in real time by {a.publisher} "
        f"({meta['when']}, {a.reps} × {a.window:.0f} s after {a.warmup:.0f} s warm-up, server on core 0)",
        "",
        "| server / recorders | CPU-s per media-s, median | min – max | target | ratio to nginx | core-0 other % (max) |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        s = r.get("summary", {})
        if not s:
            lines.append(f"| {label} | failed | | | | |")
            continue
        base = label.split(": ", 1)[-1]
        target = f"≤ {TARGETS[base]}" if base in TARGETS else ("≤ nginx" if base == "hls,flv" else "")
        ratio = f"{s['median'] / nginx:.2f}" if nginx and label != NGINX else ""
        other = max((x.get("core0_other_pct", 0) for x in r["runs"] if "error" not in x), default=0)
        lines.append(f"| {label} | {s['median']:.4f} | {s['min']:.4f} – {s['max']:.4f} | {target} | {ratio} | {other:.0f} |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each configuration (default 3)")
    ap.add_argument("--window", type=float, default=15, help="measured seconds per repetition (default 15)")
    ap.add_argument("--warmup", type=float, default=4, help="seconds of publishing before the window (default 4)")
    ap.add_argument("--bitrate", default="4M", help="clip bitrate (default 4M, as issue 14)")
    ap.add_argument("--publisher", choices=["publish.py", "ffmpeg"], default="publish.py")
    ap.add_argument("--only", default="",
                    help="comma list of configurations: none, hls, flv (= hls,flv), all, nginx (default: all five)")
    ap.add_argument("--no-nginx", action="store_true", help="skip nginx-rtmp")
    ap.add_argument("--build", action="append", default=[],
                    help="NAME=DIR: also run rtmpd from source tree DIR (repeatable; default: this tree)")
    ap.add_argument("--rtmpd-args", default="", help="more options for rtmpd")
    ap.add_argument("--profile", default="",
                    help="recorder set(s) to profile instead of measuring (comma list of none, hls, flv, all): "
                         "one cProfile run each, stats in <out>/profile-<set>.prof")
    ap.add_argument("--nice", type=int, default=-10, help="nice value of server and publisher")
    ap.add_argument("--max-minutes", type=float, default=8, help="hard limit for the whole run")
    ap.add_argument("--out", default=None, help="output directory (default benchmarks/out/ingest-<time>)")
    a = ap.parse_args(argv)
    # "flv" stands for the hls,flv set (a comma list cannot hold it otherwise).
    a.only = ["hls,flv" if x.strip() == "flv" else x.strip() for x in a.only.split(",") if x.strip()]
    a.builds = []
    for b in a.build:
        name, _, spec = b.partition("=")
        tree, _, args = spec.partition("@")
        if not tree or not os.path.isdir(os.path.join(tree, "rtmpd")):
            ap.error(f"--build {b!r}: want NAME=DIR[@ARGS] with DIR/rtmpd")
        a.builds.append((name, os.path.abspath(tree), shlex.split(args)))
    if not a.builds:
        a.builds = [("this tree", ROOT, [])]
    a.out = os.path.abspath(a.out or os.path.join(run.OUT, "ingest-" + time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(a.out, exist_ok=True)
    if (os.cpu_count() or 1) < 2:
        log("needs 2 cores (server on 0, publisher on 1)")
        return 2
    s = a.bitrate.upper()
    bps = int(float(s[:-1]) * 1_000_000) if s.endswith("M") else int(float(s[:-1]) * 1000)
    clip, manifest = publish.make_clip(bps)
    signal.signal(signal.SIGALRM, lambda *_: (log("time limit reached"), sys.exit(124)))
    signal.alarm(int(a.max_minutes * 60))
    extra = shlex.split(a.rtmpd_args)

    if a.profile:
        wanted = ["hls,flv" if x.strip() == "flv" else x.strip() for x in a.profile.split(",")]
        for w in wanted:
            key = "all four" if w == "all" else w
            if key not in RECORD_SETS:
                ap.error(f"--profile: unknown set {w!r}")
            tag = key.replace(",", "+").replace(" ", "")
            workdir = os.path.join(a.out, "tmp", f"profile-{tag}")
            prof = os.path.join(a.out, f"profile-{tag}.prof")
            _, tree, args = a.builds[-1]
            srv = RtmpdIngest(workdir, a.nice, RECORD_SETS[key], tree, extra + args, profile=prof)
            if not srv.start():
                log(f"rtmpd did not start (see {workdir})")
                continue
            try:
                r = measure(srv, a, workdir, clip)
            finally:
                srv.stop()
            log(f"profile {key}: {r} -> {prof}")
        return 0

    confs = configurations(a)
    results: dict = {label: {"runs": []} for label, _, _, _ in confs}
    for rep in range(a.reps):
        for i, (label, tree, record, args) in enumerate(confs):
            workdir = os.path.join(a.out, "tmp", f"{i}-rep{rep}")
            srv: IngestServer
            if tree is None:
                srv = NginxIngest(workdir, a.nice)
            else:
                srv = RtmpdIngest(workdir, a.nice, record, tree, extra + args)
            if not srv.start():
                log(f"{label}: server did not start (see {workdir})")
                results[label]["runs"].append({"error": "server did not start"})
                srv.stop()
                continue
            try:
                r = measure(srv, a, workdir, clip)
            finally:
                srv.stop()
            results[label]["runs"].append(r)
            log(f"rep {rep + 1}/{a.reps} {label}: " + (r.get("error") or
                f"{r['cpu_s_per_media_s']:.4f} CPU-s/media-s (core-0 other {r['core0_other_pct']} %)"))
    for r in results.values():
        r["summary"] = summarize([x["cpu_s_per_media_s"] for x in r["runs"] if "error" not in x])
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "bitrate": publish.rate_name(bps),
        "media_bps": manifest.get("media_bps"),
        "publisher": a.publisher,
        "reps": a.reps,
        "window_s": a.window,
        "warmup_s": a.warmup,
        "builds": {name: [tree, *args] for name, tree, args in a.builds},
        "rtmpd_args": a.rtmpd_args,
        "machine": run.machine_info(),
    }
    md = write_outputs(a, results, meta)
    log(f"results in {a.out}/results.md, results.json")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
