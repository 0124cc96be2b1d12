#!/usr/bin/env python3
"""Fan-out benchmark runner: one server, one publisher, a ladder of viewer counts.

For each server and protocol it starts the server pinned to core 0, the publisher
(publish.py, 1 Mbit/s clip with send-time SEI stamps), then for each viewer count N runs
bin/loadgen pinned to core 1 and samples, over loadgen's measurement window, the server
process's CPU (/proc/PID/stat) and RSS (/proc/PID/status VmRSS; the baseline is taken with
the publisher on and no viewer, so RSS/viewer = (RSS_N - RSS_0) / N). It stops climbing a
server/protocol once fewer than 95 % of the viewers are healthy.

Writes <out>/results.json, results.md (table) and results.png (healthy viewers and CPU vs N).

  benchmarks/run.py --all                      # rtmpd + nginx-rtmp + nms, every protocol each serves
  benchmarks/run.py --server nms --proto ws-flv --viewers 1000,8000
  benchmarks/run.py --server nginx-rtmp --viewers 1000 --window 8
  benchmarks/run.py --server rtmpd --server flvgateway --proto http-flv --viewers 4000,8000
  benchmarks/run.py --server flvgateway --proto http-flv --viewers 19500 --hold-s 5 --window 60

flvgateway: an rtmpd origin on core 1 (with the publisher; its one viewer is the gateway's
pull) and `twistd flvgateway` on core 0, the measured process; viewers play from the gateway.
--hold-s S: churn, each viewer is replaced S s after its join (loadgen --hold-s), at
VIEWERS / S joins per second; the figures are then per join.

Everything runs on 127.0.0.1, every child has a timeout, and all children are killed on exit.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import shlex
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
LOADGEN = os.path.join(HERE, "bin", "loadgen")
NMS_DIR = os.path.join(OUT, "nms")
NMS_VERSION = "2.7.4"
TWISTD = os.path.join(ROOT, ".venv", "bin", "twistd")
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")

SERVERS = {
    "rtmpd": ["rtmp", "http-flv", "ws-flv"],
    "nginx-rtmp": ["rtmp"],
    "nms": ["rtmp", "http-flv", "ws-flv"],
    "flvgateway": ["http-flv", "ws-flv"],
}
LADDER = [1000, 2000, 4000, 8000, 12000, 16000]
HEALTHY_STOP = 95.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

_children: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[run {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def kill_children() -> None:
    for p in _children:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + 5
    for p in _children:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
    _children.clear()


atexit.register(kill_children)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def spawn(cmd: list[str], *, cpu: int | str | None, nice: int, log_path: str, cwd: str | None = None,
          stdout=None) -> subprocess.Popen:  # fmt: skip
    def pre() -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
        if nice:
            try:
                os.nice(nice)
            except OSError:
                pass

    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    logf = open(log_path, "ab")
    p = subprocess.Popen(cmd, cwd=cwd, stdout=stdout or logf, stderr=logf, stdin=subprocess.DEVNULL,
                         preexec_fn=pre, start_new_session=True)  # fmt: skip
    _children.append(p)
    return p


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
    if p in _children:
        _children.remove(p)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _one_cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _one_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (rtmpd --workers: its workers), from /proc's children lists."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found.extend(children)
            queue.extend(children)
    return found


def _tree_sum(one, pid: int) -> int:
    """`one(pid)` (OSError if `pid` is gone) plus the same of every live descendant."""
    total = one(pid)
    for child in _descendants(pid):
        try:
            total += one(child)
        except OSError:
            pass  # ended meanwhile
    return total


def proc_cpu_ticks(pid: int) -> int:
    """CPU ticks of `pid` and its descendants (a --workers parent's are its workers')."""
    return _tree_sum(_one_cpu_ticks, pid)


def proc_rss_kb(pid: int) -> int:
    """RSS of `pid` and its descendants, KiB."""
    return _tree_sum(_one_rss_kb, pid)


def cpu_times() -> dict[str, list[int]]:
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                parts = line.split()
                out[parts[0]] = [int(x) for x in parts[1:]]
    return out


def core_usage(a: dict, b: dict) -> dict:
    """Per core: busy %, softirq %, steal % between two /proc/stat samples."""
    res = {}
    for k in a:
        d = [y - x for x, y in zip(a[k], b[k])]
        total = sum(d[:8]) or 1  # user nice system idle iowait irq softirq steal
        res[k] = {
            "busy_pct": round(100 * (total - d[3] - d[4] - d[7]) / total, 1),
            "softirq_pct": round(100 * d[6] / total, 1),
            "steal_pct": round(100 * d[7] / total, 1),
        }
    return res


# --------------------------------------------------------------------------- servers


class Server:
    name = ""

    def __init__(self, workdir: str, nice: int) -> None:
        self.dir = workdir
        self.nice = nice
        self.rtmp_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """The process whose CPU and memory are measured."""
        assert self.proc
        return self.proc.pid

    def publish_url(self) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/bench"

    def port_for(self, proto: str) -> int:
        return self.rtmp_port if proto == "rtmp" else self.http_port

    def side_procs(self) -> dict[str, subprocess.Popen]:
        """Our other server processes (not measured as the server, not 'other' load either)."""
        return {}

    def logs(self) -> dict[str, str]:
        """The server's log files by role, scanned for tracebacks after each step."""
        return {"server": os.path.join(self.dir, "server.log")}

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)


class Nginx(Server):
    name = "nginx-rtmp"

    def start(self) -> bool:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        module = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
        if not os.path.exists(nginx) or not os.path.exists(module):
            log("nginx-rtmp missing: apt-get install -y nginx libnginx-mod-rtmp")
            return False
        os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        conf = f"""load_module {module};
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {nofile};
error_log {self.dir}/logs/error.log warn;
pid {self.dir}/nginx.pid;
events {{ worker_connections {max(1024, nofile - 100)}; multi_accept on; }}
rtmp {{
  server {{
    listen 127.0.0.1:{self.rtmp_port};
    chunk_size 4096;
    ping 30s;
    application live {{ live on; }}
  }}
}}
"""
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = spawn([nginx, "-p", self.dir, "-c", path, "-e", f"{self.dir}/logs/error.log"], cpu=0,
                          nice=self.nice, log_path=os.path.join(self.dir, "server.log"))  # fmt: skip
        # `taskset` execs nginx, so proc.pid is nginx's pid (master_process off: one process)
        return wait_port(self.rtmp_port, 15, self.proc)


class Nms(Server):
    name = "nms"

    def start(self) -> bool:
        if not shutil.which("node"):
            log("node missing")
            return False
        mod = os.path.join(NMS_DIR, "node_modules", "node-media-server")
        if not os.path.exists(mod):
            os.makedirs(NMS_DIR, exist_ok=True)
            if not os.path.exists(os.path.join(NMS_DIR, "package.json")):
                with open(os.path.join(NMS_DIR, "package.json"), "w") as f:
                    json.dump({"name": "nms-bench", "private": True}, f)
            log(f"npm install node-media-server@{NMS_VERSION}")
            r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", f"node-media-server@{NMS_VERSION}"],
                               cwd=NMS_DIR, timeout=600)  # fmt: skip
            if r.returncode:
                return False
        app = os.path.join(self.dir, "app.js")
        with open(app, "w") as f:
            f.write(f"""const NodeMediaServer = require({json.dumps(mod)});
new NodeMediaServer({{
  logType: 1,
  rtmp: {{ port: {self.rtmp_port}, chunk_size: 60000, gop_cache: true, ping: 30, ping_timeout: 60 }},
  http: {{ port: {self.http_port}, allow_origin: '*', mediaroot: {json.dumps(os.path.join(self.dir, 'media'))} }},
}}).run();
""")
        self.proc = spawn(["node", app], cpu=0, nice=self.nice, log_path=os.path.join(self.dir, "server.log"),
                          cwd=self.dir)  # fmt: skip
        return wait_port(self.rtmp_port, 20, self.proc) and wait_port(self.http_port, 10, self.proc)


class Rtmpd(Server):
    name = "rtmpd"
    #: More command-line options for every rtmpd started (--rtmpd-args).
    extra_args: list[str] = []
    #: `taskset -c` of the measured rtmpd (--server-cores): "0", or "0,1" for --workers 2.
    server_cores = "0"

    def __init__(self, workdir: str, nice: int) -> None:
        super().__init__(workdir, nice)
        self.web_port = free_port()

    @property
    def api_port(self) -> int:
        """Where /metrics and /api/streams are."""
        return self.web_port

    def start_rtmpd(self, cpu: int | str, log_name: str) -> subprocess.Popen | None:
        """Start rtmpd on `cpu` and wait for its RTMP and HTTP ports; None if it did not come up."""
        if not os.path.exists(TWISTD):
            log(f"{TWISTD} missing")
            return None
        root = os.path.join(self.dir, "media")
        os.makedirs(root, exist_ok=True)
        cmd = [TWISTD, "-n", "--pidfile", os.path.join(self.dir, "twistd.pid"), "rtmpd",
               "--rtmp", f"tcp:{self.rtmp_port}:interface=127.0.0.1",
               "--http", f"tcp:{self.http_port}:interface=127.0.0.1",
               "--web", f"tcp:{self.web_port}:interface=127.0.0.1", "--root", root, "--record", "none",
               *Rtmpd.extra_args]  # fmt: skip
        p = spawn(cmd, cpu=cpu, nice=self.nice, log_path=os.path.join(self.dir, log_name), cwd=self.dir)
        if wait_port(self.rtmp_port, 30, p) and wait_port(self.http_port, 10, p):
            return p
        stop(p)
        return None

    def start(self) -> bool:
        self.proc = self.start_rtmpd(cpu=Rtmpd.server_cores, log_name="server.log")
        return self.proc is not None


class FlvGateway(Rtmpd):
    """`twistd flvgateway` (core 0, measured) pulling from an rtmpd origin (core 1).

    The publisher publishes to the origin over RTMP as for rtmpd; the origin, on the
    publisher's and loadgen's core, serves one viewer: the gateway's pull. Viewers play
    from the gateway's --listen port (HTTP-FLV, WS-FLV; /metrics and /api there too)."""

    name = "flvgateway"
    #: More command-line options for the gateway (--gateway-args); --rtmpd-args go to the origin.
    gateway_args: list[str] = []

    def __init__(self, workdir: str, nice: int) -> None:
        super().__init__(workdir, nice)
        self.gw_port = free_port()
        self.origin: subprocess.Popen | None = None

    @property
    def api_port(self) -> int:
        return self.gw_port

    def port_for(self, proto: str) -> int:
        return self.gw_port

    def side_procs(self) -> dict[str, subprocess.Popen]:
        return {"origin": self.origin} if self.origin else {}

    def logs(self) -> dict[str, str]:
        return {"gateway": os.path.join(self.dir, "gateway.log"), "origin": os.path.join(self.dir, "origin.log")}

    def start(self) -> bool:
        self.origin = self.start_rtmpd(cpu=1, log_name="origin.log")
        if self.origin is None:
            return False
        cmd = [TWISTD, "-n", "--pidfile", os.path.join(self.dir, "flvgateway.pid"), "flvgateway",
               "--listen", f"tcp:{self.gw_port}:interface=127.0.0.1",
               "--upstream", f"http://127.0.0.1:{self.http_port}", "--stats-interval", "0",
               *self.gateway_args]  # fmt: skip
        self.proc = spawn(cmd, cpu=0, nice=self.nice, log_path=os.path.join(self.dir, "gateway.log"), cwd=self.dir)
        return wait_port(self.gw_port, 30, self.proc)

    def stop(self) -> None:
        super().stop()
        if self.origin:
            stop(self.origin)


SERVER_CLASSES = {"rtmpd": Rtmpd, "nginx-rtmp": Nginx, "nms": Nms, "flvgateway": FlvGateway}


# --------------------------------------------------------------------------- one step


def wait_quiet(server: Server, pub: subprocess.Popen, a) -> float:
    """Wait (up to --quiet-wait s) until other processes use < --max-other % of either core.

    Other work on the machine (other people's test runs) competes with the server and loadgen
    and is not ours to stop; the cores are shared through cgroups, so nice does not shield us.
    Returns the other load seen last (%)."""
    deadline = time.monotonic() + a.quiet_wait
    while True:
        ours = [server.pid, pub.pid] + [p.pid for p in server.side_procs().values()]
        t0, c0 = cpu_times(), sum(_ticks(p) for p in ours)
        time.sleep(2)
        t1, c1 = cpu_times(), sum(_ticks(p) for p in ours)
        u = core_usage(t0, t1)
        busy = sum(v["busy_pct"] for v in u.values())
        other = busy - 100 * (c1 - c0) / CLK_TCK / 2
        if other < a.max_other or time.monotonic() >= deadline:
            if other >= a.max_other:
                log(f"other processes still use {other:.0f} % of a core; measuring anyway")
            return round(other, 1)
        log(f"other processes use {other:.0f} % of a core; waiting for quiet")


def _ticks(pid: int) -> int:
    try:
        return proc_cpu_ticks(pid)
    except OSError:
        return 0


def run_loadgen(server: Server, proto: str, n: int, a, manifest_path: str, tag: str) -> dict:
    # churn: n viewers at a time, each replaced after --hold-s, so n / hold joins per second
    rate = n / a.hold_s if a.hold_s else a.rate
    duration = n / rate + a.settle + a.window
    jpath = os.path.join(a.out, "runs", f"{tag}.json")
    cmd = [LOADGEN, "--proto", proto, "--port", str(server.port_for(proto)), "--app", "live", "--stream", "bench",
           "--viewers", str(n), "--rate", f"{rate:g}", "--duration", f"{duration:.1f}", "--window", str(a.window),
           "--manifest", manifest_path, "--json", jpath, "--cpu", "1"]  # fmt: skip
    if a.batch_ms is not None:
        cmd += ["--batch-ms", str(a.batch_ms)]
    if a.hold_s:
        cmd += ["--hold-s", str(a.hold_s)]
    src_addrs = a.src_addrs or -(-n // 12000)  # auto: one source address per 12 000 viewers
    if src_addrs > 1:
        cmd += ["--src-addrs", str(src_addrs)]
    p = spawn(cmd, cpu=None, nice=a.nice, log_path=os.path.join(a.out, "runs", f"{tag}.log"), stdout=subprocess.PIPE)
    pid = server.pid
    sides = {k: v.pid for k, v in server.side_procs().items()}
    sample = {}
    deadline = time.monotonic() + duration + 60
    assert p.stdout
    for raw in p.stdout:
        line = raw.decode().strip()
        try:
            if line.startswith("WINDOW_START"):
                sample["t0"], sample["cpu0"], sample["stat0"] = time.monotonic(), proc_cpu_ticks(pid), cpu_times()
                sample["side0"] = {k: _ticks(v) for k, v in sides.items()}
            elif line.startswith("WINDOW_END"):
                sample["t1"], sample["cpu1"], sample["stat1"] = time.monotonic(), proc_cpu_ticks(pid), cpu_times()
                sample["side1"] = {k: _ticks(v) for k, v in sides.items()}
                sample["rss"] = proc_rss_kb(pid)
        except OSError:
            sample["server_died"] = True
        if time.monotonic() > deadline:
            break
    try:
        p.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    stop(p)
    try:
        res = json.load(open(jpath))
    except (OSError, ValueError):
        res = {"error": "loadgen produced no JSON", "healthy": 0, "healthy_pct": 0.0}
    if "t1" in sample and "t0" in sample:
        secs = sample["t1"] - sample["t0"]
        res["server_cpu_pct"] = round(100 * (sample["cpu1"] - sample["cpu0"]) / CLK_TCK / secs, 1)
        res["server_rss_kb"] = sample["rss"]
        res["cores"] = core_usage(sample["stat0"], sample["stat1"])
        c0 = res["cores"].get("cpu0", {})
        # what else ran on the server's core: busy - server process - softirq (approximate)
        res["core0_other_pct"] = round(max(0.0, c0.get("busy_pct", 0) - res["server_cpu_pct"] - c0.get("softirq_pct", 0)), 1)
        for k in sides:  # e.g. the gateway's origin, on core 1
            res[f"{k}_cpu_pct"] = round(100 * (sample["side1"][k] - sample["side0"][k]) / CLK_TCK / secs, 1)
    else:
        res["server_died"] = True
    return res


class LogWatch:
    """Counts what a server's logs gained since the last look: Python tracebacks, lines
    about unhandled errors or failures, and keeps the first few of them."""

    MARKS = ("Traceback (most recent call last)", "Unhandled", "#critical]", "#error]", "#warn]", "[Failure instance")

    def __init__(self, server: Server) -> None:
        self.paths = server.logs()
        self.offsets = {k: self._size(p) for k, p in self.paths.items()}

    @staticmethod
    def _size(path: str) -> int:
        try:
            return os.path.getsize(path)
        except OSError:
            return 0

    def new_problems(self) -> dict:
        out = {}
        for k, path in self.paths.items():
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets[k])
                    data = f.read()
            except OSError:
                continue
            self.offsets[k] += len(data)
            lines = data.decode("utf-8", "replace").splitlines()
            tracebacks = sum("Traceback (most recent call last)" in line for line in lines)
            marked = [line for line in lines if any(m in line for m in self.MARKS)]
            errors = [line for line in lines
                      if ("error" in line.lower() or "fail" in line.lower()) and line not in marked]  # fmt: skip
            out[k] = {"lines": len(lines), "tracebacks": tracebacks, "marked": len(marked), "error_lines": len(errors),
                      "first": (marked + errors)[:5]}  # fmt: skip
        return out


def probe_stream(server: Server, proto: str, manifest_path: str, a) -> bool:
    """Wait until one viewer gets media (the publisher is on)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = subprocess.run([LOADGEN, "--proto", proto, "--port", str(server.port_for(proto)), "--viewers", "1",
                            "--duration", "3", "--window", "2", "--manifest", manifest_path, "--json", "-",
                            "--quiet"], capture_output=True, timeout=20)  # fmt: skip
        try:
            if json.loads(r.stdout)["healthy"] == 1:
                return True
        except (ValueError, KeyError):
            pass
        time.sleep(1)
    return False


def bench_server(name: str, protos: list[str], ladder: list[int], a, manifest_path: str, manifest: dict,
                 results: list) -> None:  # fmt: skip
    workdir = tempfile.mkdtemp(prefix=f"bench-{name}-", dir=os.path.join(a.out, "tmp"))
    for proto in protos:
        # a fresh server per protocol, so one protocol's aftermath does not weigh on the next
        server = SERVER_CLASSES[name](workdir, a.nice)
        log(f"{name}: starting (rtmp :{server.rtmp_port}, http :{server.http_port}) for {proto}")
        if not server.start():
            log(f"{name}: did not start; see {workdir}/server.log")
            results.append({"server": name, "proto": proto, "viewers": 0, "error": "server did not start"})
            server.stop()
            return
        pub_cmd = [VENV_PY if os.path.exists(VENV_PY) else sys.executable, os.path.join(HERE, "publish.py"),
                   "--url", server.publish_url(), "--bitrate", a.bitrate, "--retry", "20",
                   "--duration", str(a.max_minutes * 60)]  # fmt: skip
        pub = spawn(pub_cmd, cpu=1, nice=a.nice, log_path=os.path.join(workdir, f"publish-{proto}.log"))
        scraper = Scraper(server, a.scrape_s) if a.scrape_s > 0 and isinstance(server, Rtmpd) else None
        try:
            if not probe_stream(server, proto, manifest_path, a):
                log(f"{name}/{proto}: no media reaches a viewer; skipping (see {workdir})")
                results.append({"server": name, "proto": proto, "viewers": 0, "error": "no media"})
                continue
            time.sleep(2)
            rss0 = proc_rss_kb(server.pid)
            logs = LogWatch(server)
            for n in ladder:
                tag = (f"{name}-{proto}-{n}" + (f"-hold{a.hold_s:g}" if a.hold_s else "")
                       + (f"-rep{a.rep}" if a.repeat > 1 else ""))
                quiet = wait_quiet(server, pub, a)
                log(f"{tag}: {n} viewers{f', each held {a.hold_s:g} s' if a.hold_s else ''} ... "
                    f"(other load before: {quiet} %)")  # fmt: skip
                res = run_loadgen(server, proto, n, a, manifest_path, tag)
                res.update({"server": name, "proto": proto, "rss0_kb": rss0, "bitrate": a.bitrate, "repeat": a.rep,
                            "publisher_alive": pub.poll() is None, "other_before_pct": quiet,
                            "logs": logs.new_problems()})  # fmt: skip
                if a.hold_s:
                    res["hold_s"] = a.hold_s
                if res.get("server_rss_kb"):
                    res["rss_per_viewer_kb"] = round((res["server_rss_kb"] - rss0) / n, 2)
                cpu = res.get("server_cpu_pct")
                if cpu and not a.hold_s:
                    res["healthy_per_core"] = round(res.get("healthy", 0) / (cpu / 100))
                results.append(res)
                write_outputs(results, a, manifest)
                lat = res.get("latency_ms", {})
                churn = res.get("churn", {}).get("window")
                log(f"{tag}: healthy {res.get('healthy_pct', 0):.1f}%, server CPU {cpu} %, "
                    f"RSS/viewer {res.get('rss_per_viewer_kb')} KiB, latency p50 {lat.get('p50')} ms, "
                    f"loadgen CPU {res.get('loadgen', {}).get('cpu_pct_window')} %"
                    + (f", joins held {churn['completed']} ({churn['completed_per_s']}/s), failed {churn['failed']}, "
                       f"dropped {churn['dropped']}" if churn else "")
                    + "".join(f", {k} CPU {res[k + '_cpu_pct']} %" for k in server.side_procs() if k + "_cpu_pct" in res)
                    + "".join(f", {k} log: {v['tracebacks']} tracebacks, {v['marked'] + v['error_lines']} error lines"
                              for k, v in res["logs"].items() if v["marked"] or v["error_lines"]))  # fmt: skip
                if res.get("server_died") or server.proc.poll() is not None:
                    log(f"{name}: server gone")
                    break
                if res.get("healthy_pct", 0) < HEALTHY_STOP:
                    break
                time.sleep(a.pause)
        finally:
            if scraper is not None:
                scraper.stop()
                log(f"{name}/{proto}: scraped /metrics and /api/streams {scraper.scrapes} times, "
                    f"{scraper.errors} errors, slowest {scraper.slowest_ms:.0f} ms")
            stop(pub)
            server.stop()
            time.sleep(1)


class Scraper:
    """Reads rtmpd's /metrics and /api/streams every few seconds, as a
    Prometheus server and a dashboard would, so their cost shows in the run."""

    def __init__(self, server: "Rtmpd", every_s: float) -> None:
        self.urls = [f"http://127.0.0.1:{server.api_port}/metrics",
                     f"http://127.0.0.1:{server.api_port}/api/streams"]  # fmt: skip
        self.every_s = every_s
        self.scrapes = self.errors = 0
        self.slowest_ms = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import urllib.request

        while not self._done.wait(self.every_s):
            for url in self.urls:
                started = time.monotonic()
                try:
                    with urllib.request.urlopen(url, timeout=10) as r:
                        r.read()
                    self.scrapes += 1
                except OSError:
                    self.errors += 1
                self.slowest_ms = max(self.slowest_ms, (time.monotonic() - started) * 1000)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=15)


# --------------------------------------------------------------------------- outputs


def fmt(x, nd=0):
    if x is None:
        return "–"
    return f"{x:.{nd}f}" if isinstance(x, (int, float)) else str(x)


def write_outputs(results: list, a, manifest: dict) -> None:
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine_info(),
        "bitrate": a.bitrate,
        "media_bps": manifest.get("media_bps"),
        "rate": a.rate,
        "hold_s": a.hold_s,
        "window_s": a.window,
        "nice": a.nice,
    }
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    lines = [
        f"Clip {a.bitrate} ({(manifest.get('media_bps') or 0) / 1e6:.2f} Mbit/s media), "
        + (f"churn: each viewer held {a.hold_s:g} s, joins viewers / {a.hold_s:g} per second, " if a.hold_s
           else f"joins {a.rate:.0f}/s, ")
        + f"window {a.window:.0f} s; server on core 0, loadgen on core 1. {meta['when']}",
        "",
        "| server | proto | viewers | healthy % | server CPU % | healthy/core | RSS MiB | RSS/viewer KiB "
        "| 1st keyframe start p50 / p99 ms | 1st keyframe end p50 / p99 ms | latency p50 / p99 ms | stalls "
        "| loadgen CPU % | core0 softirq / other / steal % | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    churn_lines = [
        "",
        "Churn (loadgen --hold-s): each viewer leaves after its hold and a new one joins in its place; "
        "per join, over the joins whose hold ended in the window.",
        "",
        "| server | proto | viewers at a time (min / avg) | hold s | joins held | held/s | failed | dropped | healthy % "
        "| server CPU % | RSS MiB | RSS/viewer KiB | 1st keyframe start p50 / p99 ms | 1st keyframe end p50 / p99 ms "
        "| latency p50 / p99 ms | loadgen CPU % | core0 softirq / other / steal % | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.get("error") and not r.get("viewers"):
            lines.append(f"| {r['server']} | {r['proto']} | – | {r['error']} | | | | | | | | | | | |")
            continue
        lat = r.get("latency_ms", {})
        core0 = r.get("cores", {}).get("cpu0", {})
        notes = "; ".join(
            [f"{k[:-8]} CPU {fmt(v)} %" for k, v in r.items() if k.endswith("_cpu_pct") and k != "server_cpu_pct"]
            + [f"{k} log: {v['tracebacks']} tracebacks, {v['marked'] + v['error_lines']} error lines"
               for k, v in r.get("logs", {}).items() if v.get("marked") or v.get("error_lines")]
            + (["server died"] if r.get("server_died") else []))  # fmt: skip
        kf = r.get("first_keyframe_ms", {})  # to the keyframe's last byte
        ks = r.get("first_keyframe_start_ms", {})  # to its first bytes
        keyframe = f"| {fmt(ks.get('p50'))} / {fmt(ks.get('p99'))} | {fmt(kf.get('p50'))} / {fmt(kf.get('p99'))} "
        if r.get("churn"):
            w = r["churn"]["window"]
            churn_lines.append(
                f"| {r['server']} | {r['proto']} | {r['viewers']} ({w['alive_min']} / {w['alive_avg']:.0f}) "
                f"| {r['churn']['hold_s']:g} | {w['completed']} | {w['completed_per_s']:.0f} | {w['failed']} "
                f"| {w['dropped']} | {fmt(r.get('healthy_pct'), 1)} | {fmt(r.get('server_cpu_pct'))} "
                f"| {fmt((r.get('server_rss_kb') or 0) / 1024, 1)} | {fmt(r.get('rss_per_viewer_kb'), 1)} "
                + keyframe + f"| {fmt(lat.get('p50'), 1)} / {fmt(lat.get('p99'), 1)} "
                f"| {fmt(r.get('loadgen', {}).get('cpu_pct_window'))} "
                f"| {fmt(core0.get('softirq_pct'))} / {fmt(r.get('core0_other_pct'))} / {fmt(core0.get('steal_pct'))} "
                f"| {notes} |"
            )
            continue
        lines.append(
            f"| {r['server']} | {r['proto']} | {r['viewers']} | {fmt(r.get('healthy_pct'), 1)} "
            f"| {fmt(r.get('server_cpu_pct'))} | {fmt(r.get('healthy_per_core'))} "
            f"| {fmt((r.get('server_rss_kb') or 0) / 1024, 1)} | {fmt(r.get('rss_per_viewer_kb'), 1)} "
            + keyframe + f"| {fmt(lat.get('p50'), 1)} / {fmt(lat.get('p99'), 1)} "
            f"| {r.get('stalls_total', '–')} | {fmt(r.get('loadgen', {}).get('cpu_pct_window'))} "
            f"| {fmt(core0.get('softirq_pct'))} / {fmt(r.get('core0_other_pct'))} / {fmt(core0.get('steal_pct'))} "
            f"| {notes} |"
        )
    if len(lines) == 4:  # churn rows only: no empty table
        lines = lines[:2]
    if len(churn_lines) > 5:
        lines += churn_lines[1:] if len(lines) == 2 else churn_lines
    lines += spread_lines(results)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(results, os.path.join(a.out, "results.png"))


def spread_lines(results: list) -> list[str]:
    """With --repeat: each step's figures over its runs, median (min – max), since one run of a
    join storm on a VM can move the first keyframe by a factor of two or more."""
    steps: dict = {}
    for r in results:
        if r.get("viewers") and not r.get("churn") and "repeat" in r:
            steps.setdefault((r["server"], r["proto"], r["viewers"]), []).append(r)
    if not any(len(runs) > 1 for runs in steps.values()):
        return []

    def spread(values: list) -> str:
        values = sorted(v for v in values if v is not None)
        if not values:
            return "–"
        return f"{fmt(statistics.median(values), 1)} ({fmt(values[0], 1)} – {fmt(values[-1], 1)})"

    out = ["", "Over the repeats, median (min – max):", "",
           "| server | proto | viewers | runs | healthy % | 1st keyframe end p50 ms | latency p50 ms | RSS/viewer KiB |",
           "|---|---|---|---|---|---|---|---|"]
    for (server, proto, viewers), runs in steps.items():
        out.append(
            f"| {server} | {proto} | {viewers} | {len(runs)} "
            f"| {spread([r.get('healthy_pct') for r in runs])} "
            f"| {spread([r.get('first_keyframe_ms', {}).get('p50') for r in runs])} "
            f"| {spread([r.get('latency_ms', {}).get('p50') for r in runs])} "
            f"| {spread([r.get('rss_per_viewer_kb') for r in runs])} |")
    return out


def plot(results: list, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot (.venv/bin/pip install matplotlib)")
        return
    series: dict[str, list] = {}
    for r in results:
        if r.get("viewers") and "healthy" in r and not r.get("churn"):
            series.setdefault(f"{r['server']} {r['proto']}", []).append(r)
    if not series:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for label, rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["viewers"])
        xs = [r["viewers"] for r in rs]
        ax1.plot(xs, [r.get("healthy", 0) for r in rs], marker="o", label=label)
        ax2.plot(xs, [r.get("server_cpu_pct") or 0 for r in rs], marker="o", label=label)
    top = max(r["viewers"] for rs in series.values() for r in rs)
    ax1.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="all healthy")
    ax1.set(xlabel="viewers offered", ylabel="healthy viewers (≥ 90 % of the stream)", title="Healthy viewers")
    ax2.set(xlabel="viewers offered", ylabel="server CPU % (one core = 100)", title="Server CPU")
    ax2.axhline(100, color="grey", linestyle=":", linewidth=1)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_info() -> dict:
    info = {"cores": os.cpu_count(), "kernel": os.uname().release}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["os"] = dict(l.strip().split("=", 1) for l in open("/etc/os-release") if "=" in l).get("PRETTY_NAME", "").strip('"')
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    # Prefer the project venv (it has matplotlib for the plot); plain python3 works without the plot.
    if argv is None and os.path.exists(VENV_PY) and os.path.realpath(sys.prefix) != os.path.realpath(os.path.join(ROOT, ".venv")):
        try:
            subprocess.run([VENV_PY, "-c", "import matplotlib"], check=True, capture_output=True, timeout=60)
            os.execv(VENV_PY, [VENV_PY, os.path.abspath(__file__)] + sys.argv[1:])
        except (subprocess.SubprocessError, OSError):
            pass
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="rtmpd, nginx-rtmp and nms, every protocol each serves")
    ap.add_argument("--server", choices=sorted(SERVERS), action="append", help="server(s) to bench")
    ap.add_argument("--proto", choices=["rtmp", "http-flv", "ws-flv"], action="append", help="protocol(s)")
    ap.add_argument("--viewers", default=",".join(map(str, LADDER)), help="comma-separated viewer counts")
    ap.add_argument("--rate", type=float, default=2000, help="joins per second")
    ap.add_argument("--window", type=float, default=20, help="measurement window, s (the issue: 20)")
    ap.add_argument("--settle", type=float, default=5, help="seconds between the last join and the window")
    ap.add_argument("--pause", type=float, default=3, help="seconds between steps")
    ap.add_argument("--bitrate", default="1M", help="clip bitrate: 1M or 4M")
    ap.add_argument("--batch-ms", type=float, default=None, help="passed to loadgen (default: its automatic choice)")
    ap.add_argument("--nice", type=int, default=-10, help="nice value for server, publisher and loadgen")
    ap.add_argument("--max-other", type=float, default=15, help="wait while other processes use more CPU %% than this")
    ap.add_argument("--quiet-wait", type=float, default=120, help="longest wait for quiet cores, s")
    ap.add_argument("--max-minutes", type=float, default=60, help="hard limit for the whole run")
    ap.add_argument("--rtmpd-args", default="", help="more options for rtmpd (the flvgateway's origin too), e.g. '--no-metrics'")
    ap.add_argument("--gateway-args", default="", help="more options for twistd flvgateway, e.g. '--merge-ms=0'")
    ap.add_argument("--src-addrs", type=int, default=0,
                    help="loadgen connects from 127.0.0.1..127.0.0.K (default 0: one per 12 000 viewers; "
                         "past ~14 000 connections one address's ephemeral ports get slow to find)")
    ap.add_argument("--hold-s", type=float, default=0,
                    help="churn: each viewer leaves this many s after its join and a new one takes its place "
                         "(joins/s = viewers / hold; --rate is ignored)")
    ap.add_argument("--scrape-s", type=float, default=0,
                    help="GET rtmpd's /metrics and /api/streams every this many s during the run (0: never)")
    ap.add_argument("--server-cores", default="0",
                    help="cores of the measured rtmpd (taskset -c): 0,1 with --rtmpd-args=--workers=2 "
                         "(its CPU and RSS are summed over its workers; the loadgen shares core 1)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each server and protocol's ladder this many times, each on a fresh server, "
                         "interleaved (all once, then again); the table then ends with each step's spread")
    ap.add_argument("--out", default=None, help="output directory (default benchmarks/out/results-<time>)")
    a = ap.parse_args(argv)
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")
    Rtmpd.extra_args = shlex.split(a.rtmpd_args)
    Rtmpd.server_cores = a.server_cores
    FlvGateway.gateway_args = shlex.split(a.gateway_args)
    if a.hold_s and a.hold_s <= 1:
        ap.error("--hold-s must be more than 1 s (a join's first second is not judged)")

    names = sorted(SERVERS) if a.all or not a.server else a.server
    if a.all:
        names = ["rtmpd", "nginx-rtmp", "nms"]
    ladder = [int(x) for x in a.viewers.split(",") if x.strip()]
    # Absolute: nginx and node run with their own working directories.
    a.out = os.path.abspath(a.out or os.path.join(OUT, "results-" + time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(os.path.join(a.out, "runs"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "tmp"), exist_ok=True)
    if (os.cpu_count() or 1) < 2:
        log("needs 2 cores (server on 0, loadgen on 1)")
        return 2
    if not os.path.exists(LOADGEN) or os.path.getmtime(LOADGEN) < os.path.getmtime(os.path.join(HERE, "loadgen.c")):
        subprocess.run(["sh", os.path.join(HERE, "build.sh")], check=True, timeout=120)
    sys.path.insert(0, HERE)
    import publish

    s = a.bitrate.upper()
    bps = int(float(s[:-1]) * 1_000_000) if s.endswith("M") else int(float(s[:-1]) * 1000)
    _clip, manifest = publish.make_clip(bps)
    manifest_path = os.path.join(OUT, f"clip_{publish.rate_name(bps)}.json")

    signal.signal(signal.SIGALRM, lambda *_: (log("time limit reached"), sys.exit(124)))
    signal.alarm(int(a.max_minutes * 60))
    results: list = []
    for rep in range(1, a.repeat + 1):
        a.rep = rep
        for name in names:
            protos = [p for p in SERVERS[name] if not a.proto or p in a.proto]
            if protos:
                bench_server(name, protos, ladder, a, manifest_path, manifest, results)
    write_outputs(results, a, manifest)
    log(f"results in {a.out}/results.md, results.json, results.png")
    print(open(os.path.join(a.out, "results.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
