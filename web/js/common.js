// Shared by rtmpd's player pages: the query and the form fields, the
// server's /config.json and the URLs made from it, the status line, the nav
// bar, watching a <video>, quiet retries, and loading the vendored players.
// Nothing here runs at import time but the guard for unexpected errors.

export const DEFAULT_APP = "live";
export const DEFAULT_STREAM = "test";
/** Names the server accepts for an app or a stream (as rtmpd.registry). */
export const NAME = /^[A-Za-z0-9_-]{1,128}$/;
/** How long a page waits before it asks again for a stream that is not there. */
export const RETRY_MS = 3000;
/** A playing video whose time has not moved for this long is stalled. */
export const STALL_MS = 3000;

/** What a page assumes when /config.json cannot be read: the defaults. */
const FALLBACK_CONFIG = Object.freeze({
  version: "",
  rtmp: { port: 1935, tls: false },
  http: { port: 8501, tls: false },
  web: { port: null, tls: false },
  record: ["hls"],
  hls_fragment_s: 2,
  play_key: false,
  signed: false,
  api: "token",
});

let configPromise = null;

/** The server's /config.json (once per page), or the defaults. */
export function loadConfig() {
  if (configPromise === null) {
    configPromise = fetch(new URL("config.json", location.href), { cache: "no-cache" })
      .then((response) => (response.ok ? response.json() : {}))
      .catch(() => ({}))
      .then((config) => ({ ...FALLBACK_CONFIG, ...config }));
  }
  return configPromise;
}

/** The query: ``app``, ``stream`` and ``url`` (trimmed, "" when absent),
 * the raw parameters, and whether it names something to play. */
export function readQuery() {
  const params = new URLSearchParams(location.search);
  const get = (name) => (params.get(name) ?? "").trim();
  return {
    app: get("app"),
    stream: get("stream"),
    url: get("url"),
    params,
    names: get("stream") !== "" || get("url") !== "",
  };
}

/** Replace the page's query (no reload), so the address can be shared;
 * the credentials in it stay. */
export function writeQuery(values) {
  const params = credentials();
  for (const [name, value] of Object.entries(values)) {
    if (value !== "" && value !== undefined && value !== null) params.set(name, String(value));
  }
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

/** Why ``app``/``stream`` cannot name a stream, or "" when they can. */
export function badName(app, stream) {
  if (!NAME.test(app)) return `bad app name "${app}": use 1 to 128 of A-Z a-z 0-9 _ -`;
  if (!NAME.test(stream)) return `bad stream name "${stream}": use 1 to 128 of A-Z a-z 0-9 _ -`;
  return "";
}

/** A host and port on this page's host name: pages work behind any name. */
function hostWithPort(port) {
  return port ? `${location.hostname}:${port}` : location.host;
}

/** Query parameters a play may need (``--play-key``, ``--sign-secret``),
 * taken from the page's own query and passed on to the FLV port. */
export const CREDENTIALS = ["key", "expires", "sig"];

function credentials() {
  const given = new URLSearchParams(location.search);
  const kept = new URLSearchParams();
  for (const name of CREDENTIALS) {
    if (given.has(name)) kept.set(name, given.get(name));
  }
  return kept;
}

/** The FLV port a page uses: the server's TLS twin (``--https``) when the
 * page itself came over HTTPS and there is one (a secure page may not open
 * ``ws://``), else ``--http``. */
export function flvListener(config) {
  if (location.protocol === "https:" && config.https?.port) return config.https;
  return config.http;
}

/** The HTTP-FLV (``ws`` false) or WS-FLV play URL of a stream, with the
 * page's credentials if it has any. */
export function flvUrl(config, app, stream, ws = false) {
  const listener = flvListener(config);
  const tls = listener?.port ? Boolean(listener.tls) : location.protocol === "https:";
  const scheme = ws ? (tls ? "wss" : "ws") : tls ? "https" : "http";
  const path = `${encodeURIComponent(app)}/${encodeURIComponent(stream)}.flv`;
  const query = credentials().toString();
  return `${scheme}://${hostWithPort(listener?.port)}/${path}${query ? `?${query}` : ""}`;
}

/** An absolute URL on the web port (where this page came from). */
export function webUrl(path) {
  return new URL(path, location.href).href;
}

/** ``ws(s)://`` as ``http(s)://``: the same listener answers HEAD there. */
export function httpForm(url) {
  return url.replace(/^ws(s?):/i, "http$1:");
}

/** The status line: one of idle, connecting, playing, stalled, ended,
 * missing, error, with a detail; mirrored on ``<body data-state>``. */
export class Status {
  static LABELS = {
    idle: "idle",
    connecting: "connecting",
    playing: "playing",
    stalled: "stalled",
    ended: "ended",
    missing: "not found",
    error: "error",
  };

  constructor(element) {
    this.element = element;
    this.state = "idle";
    this.detail = "";
  }

  set(state, detail = "") {
    this.state = state;
    this.detail = detail;
    this.element.dataset.state = state;
    document.body.dataset.state = state;
    const label = Status.LABELS[state] ?? state;
    this.element.textContent = detail ? `${label}: ${detail}` : label;
  }
}

/** Point the nav bar's links at the same app and stream. */
export function linkNav(nav, app, stream) {
  const here = location.pathname.split("/").pop() || "index.html";
  for (const link of nav.querySelectorAll("a[href]")) {
    const target = new URL(link.getAttribute("href"), location.href);
    if (target.origin !== location.origin) continue;
    target.search = new URLSearchParams({ app, stream }).toString();
    link.href = target.pathname.split("/").pop() + target.search;
    if (target.pathname.split("/").pop() === here) link.setAttribute("aria-current", "page");
  }
}

/** One attempt at playing: stopped as a whole (timers, listeners,
 * players) when the user plays something else. */
export class Session {
  constructor() {
    this.alive = true;
    this.cleanups = new Set();
  }

  /** Run ``cleanup`` when the session stops. */
  defer(cleanup) {
    this.cleanups.add(cleanup);
    return () => this.cleanups.delete(cleanup);
  }

  /** Wait ``ms``; resolves true, or false as soon as the session stops. */
  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        forget();
        resolve(this.alive);
      }, ms);
      const forget = this.defer(() => {
        clearTimeout(timer);
        resolve(false);
      });
    });
  }

  /** ``target.addEventListener`` until the session stops. */
  listen(target, type, handler) {
    target.addEventListener(type, handler);
    this.defer(() => target.removeEventListener(type, handler));
  }

  stop() {
    if (!this.alive) return;
    this.alive = false;
    for (const cleanup of [...this.cleanups].reverse()) {
      try {
        cleanup();
      } catch (error) {
        console.warn("rtmpd: cleanup failed", error);
      }
    }
    this.cleanups.clear();
  }
}

/** A message for anything thrown. */
export function describe(error) {
  if (error instanceof Error) return error.message || error.name;
  return String(error);
}

/** Runs one session at a time: ``start(run)`` stops the current one and
 * runs ``run(session)``, showing what it throws on the status line. */
export function sessionRunner(status) {
  let current = null;
  return function start(run) {
    current?.stop();
    const session = (current = new Session());
    Promise.resolve()
      .then(() => run(session))
      .catch((error) => {
        if (session.alive) status.set("error", describe(error));
      });
    return session;
  };
}

/** Whether a URL answers HEAD with 2xx (true) or 404 (false); any other
 * answer is an error with its status. */
export async function exists(url, session) {
  const controller = new AbortController();
  const forget = session.defer(() => controller.abort());
  try {
    const response = await fetch(httpForm(url), {
      method: "HEAD",
      cache: "no-store",
      signal: controller.signal,
    });
    if (response.ok) return true;
    if (response.status === 404) return false;
    const reasons = { 401: "not authorized", 403: "refused", 503: "the server is full" };
    throw new Error(`${reasons[response.status] ?? "answered"} (HTTP ${response.status})`);
  } finally {
    forget();
  }
}

/** Waits until ``url`` exists, saying so on the status line while it does
 * not (``missingText``) and asking again every RETRY_MS; false when the
 * session stopped first. */
export async function waitUntilExists(url, session, status, missingText) {
  const again = `retrying every ${RETRY_MS / 1000} s`;
  for (;;) {
    let found = false;
    let problem = "";
    try {
      found = await exists(url, session);
    } catch (error) {
      problem = describe(error);
    }
    if (!session.alive) return false;
    if (found) return true;
    if (problem) status.set("error", `${problem}; ${again}`);
    else status.set("missing", `${missingText}; ${again}`);
    if (!(await session.sleep(RETRY_MS))) return false;
  }
}

/** The reason a media element failed. */
export function mediaErrorText(error) {
  if (!error) return "unknown media error";
  const kinds = {
    1: "playback aborted",
    2: "network error while loading media",
    3: "the media could not be decoded",
    4: "the media or its format is not supported",
  };
  const text = kinds[error.code] ?? `media error ${error.code}`;
  return error.message ? `${text} (${error.message})` : text;
}

/** ``video.play()``, reporting only what the user must act on. */
export function startPlaying(video, status) {
  const promise = video.play();
  if (promise === undefined) return;
  promise.catch((error) => {
    if (error?.name === "AbortError") return; // a new source replaced this one
    if (error?.name === "NotAllowedError") {
      status.set("stalled", "the browser wants a click on the video to start");
      return;
    }
    status.set("error", describe(error));
  });
}

/** Keeps the status line in step with a video element for the session:
 * playing once pictures move, stalled when they stop, error with the
 * media error's reason. ``detail`` is shown while playing. */
export function watchVideo(video, status, session, detail = "") {
  let lastTime = -1;
  let lastMove = performance.now();
  const playing = () => {
    if (status.state !== "playing" || status.detail !== detail) status.set("playing", detail);
  };
  session.listen(video, "playing", playing);
  session.listen(video, "waiting", () => {
    if (status.state === "playing") status.set("stalled", "waiting for data");
  });
  session.listen(video, "error", () => status.set("error", mediaErrorText(video.error)));
  const timer = setInterval(() => {
    if (video.paused || video.ended || video.readyState === 0) return;
    const now = performance.now();
    if (video.currentTime !== lastTime) {
      lastTime = video.currentTime;
      lastMove = now;
      if (status.state === "stalled" || status.state === "connecting") playing();
    } else if (status.state === "playing" && now - lastMove > STALL_MS) {
      status.set("stalled", `no new picture for ${((now - lastMove) / 1000).toFixed(0)} s`);
    }
  }, 500);
  session.defer(() => clearInterval(timer));
}

/** Detach whatever a video element plays. */
export function resetVideo(video) {
  video.pause();
  video.removeAttribute("src");
  video.load();
}

/** Fill a form's fields from ``values`` and call ``play(values)`` with its
 * fields (text trimmed, checkboxes as booleans) on submit. */
export function bindForm(form, values, play) {
  for (const [name, value] of Object.entries(values)) {
    const field = form.elements.namedItem(name);
    if (field === null) continue;
    if (field instanceof RadioNodeList) field.value = value;
    else if (field.type === "checkbox") field.checked = Boolean(value);
    else field.value = value;
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const read = {};
    for (const field of form.elements) {
      if (!field.name) continue;
      if (field.type === "checkbox") read[field.name] = field.checked;
      else if (field.type === "radio") {
        if (field.checked) read[field.name] = field.value;
      } else read[field.name] = field.value.trim();
    }
    play(read);
  });
}

/** Sets up a page that plays one live stream named by app and stream: its
 * form (``#form``) filled from the URL's query (``options(query)`` gives the page's own
 * fields, e.g. an engine, or a ``url`` that is played instead of the names),
 * the nav links (``#nav``) and the live streams offered. On submit, or at once when the
 * URL named something, the names are checked (a bad one is shown on
 * ``status``), the page's options made safe by ``normalize``, everything
 * written back to the URL (``toQuery`` gives the page's own query values),
 * and ``run(session, chosen)`` started, one session at a time. */
export function streamPage({ status, run, options, toQuery, normalize = (c) => c }) {
  const form = document.getElementById("form");
  const nav = document.getElementById("nav");
  const start = sessionRunner(status);
  const query = readQuery();
  const values = {
    app: query.app || DEFAULT_APP,
    stream: query.stream || DEFAULT_STREAM,
    ...options(query),
  };
  linkNav(nav, values.app, values.stream);
  const play = (fields) => {
    const problem = fields.url ? "" : badName(fields.app, fields.stream);
    if (problem) {
      start(() => status.set("error", problem));
      return;
    }
    const chosen = normalize(fields);
    writeQuery({ app: chosen.app, stream: chosen.stream, ...toQuery(chosen) });
    linkNav(nav, chosen.app, chosen.stream);
    start((session) => run(session, chosen));
  };
  offerLiveStreams(form);
  // A submit plays the names in the form: a URL from the query is not kept.
  bindForm(form, values, (fields) => play({ ...fields, url: "" }));
  if (query.names) play(values);
}

/** Whether this page was loaded from a loopback address (as the server sees it). */
function loopbackPage() {
  const host = location.hostname;
  return host === "localhost" || host === "[::1]" || /^127\./.test(host);
}

/** Offers the live streams as suggestions for a form's stream field (and
 * fills the app when one is picked), from /api/streams where this page may
 * read it: the server lets loopback clients read it without a token.
 * Anywhere else the field just has no suggestions. */
export async function offerLiveStreams(form) {
  const input = form.elements.namedItem("stream");
  if (input === null) return;
  const config = await loadConfig();
  if (config.api !== "loopback" || !loopbackPage()) return;
  let streams = [];
  try {
    const response = await fetch(webUrl("api/streams"), { cache: "no-store" });
    if (!response.ok) return;
    streams = (await response.json()).streams ?? [];
  } catch {
    return;
  }
  const list = document.createElement("datalist");
  list.id = "live-streams";
  const apps = new Map();
  for (const stream of streams) {
    const option = document.createElement("option");
    option.value = stream.name;
    const picture = stream.video ? `, ${stream.video.width}×${stream.video.height}` : "";
    option.label = `${stream.app}/${stream.name}${picture}`;
    list.append(option);
    apps.set(stream.name, stream.app);
  }
  document.body.append(list);
  input.setAttribute("list", list.id);
  input.addEventListener("change", () => {
    const app = form.elements.namedItem("app");
    if (app !== null && apps.has(input.value)) app.value = apps.get(input.value);
  });
}

/** Seconds as ``1.2 s``. */
export function seconds(value) {
  return Number.isFinite(value) ? `${value.toFixed(1)} s` : "–";
}

/** Bytes as ``12.3 MB``. */
export function bytes(value) {
  if (!Number.isFinite(value)) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let n = value;
  let unit = 0;
  while (n >= 1000 && unit < units.length - 1) {
    n /= 1000;
    unit += 1;
  }
  return `${n.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** Sets the text of the ``<dd>`` of each ``data-stat`` name in ``stats``. */
export function showStats(stats, values) {
  for (const [name, value] of Object.entries(values)) {
    const cell = stats.querySelector(`[data-stat="${name}"]`);
    if (cell !== null && cell.textContent !== value) cell.textContent = value;
  }
}

const classicScripts = new Map();

/** Load a classic (non-module) script once and resolve to the global it defines. */
function loadClassicScript(src, globalName) {
  if (!classicScripts.has(src)) {
    classicScripts.set(
      src,
      new Promise((resolve, reject) => {
        const script = document.createElement("script");
        script.src = src;
        script.async = true;
        script.onload = () => {
          if (window[globalName]) resolve(window[globalName]);
          else reject(new Error(`${src} did not define ${globalName}`));
        };
        script.onerror = () => reject(new Error(`cannot load ${src}: run \`make web\``));
        document.head.append(script);
      }),
    );
  }
  return classicScripts.get(src);
}

/** mpegts.js (a UMD bundle) from the web port, quiet but for warnings and errors. */
export async function loadMpegts() {
  const mpegts = await loadClassicScript(
    new URL("../vendor/mpegts.js", import.meta.url).href,
    "mpegts",
  );
  mpegts.LoggingControl.enableVerbose = false;
  mpegts.LoggingControl.enableDebug = false;
  mpegts.LoggingControl.enableInfo = false;
  return mpegts;
}

/** hls.js (its ES module build) from the web port. */
export async function loadHls() {
  try {
    const module = await import("../vendor/hls.min.mjs");
    return module.default;
  } catch (error) {
    throw new Error(`cannot load hls.js (${describe(error)}): run \`make web\``);
  }
}

// Anything thrown that no page code caught is a bug: show it rather than
// fail silently (the browser still reports it).
window.addEventListener("unhandledrejection", (event) => {
  const line = document.querySelector(".status");
  if (line !== null) line.textContent = `error: ${describe(event.reason)}`;
});
