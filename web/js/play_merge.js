// play_merge.html: the live fMP4 recording through Media Source Extensions.
// The recorder writes, in mp4/{app}/{stream}/output_merge/, init.mp4 then
// 000001.m4s, 000002.m4s... (each written whole under a temporary name and
// renamed), and in output_separate/ video_init.mp4 + audio_init.mp4 with
// video_000001.m4s, audio_000001.m4s... /recordings.json reports, per
// directory, whether the recorder still writes it ("live") and the number
// of its last fragment, so the page fetches only fragments that exist: the
// init segment(s), then from the newest fragment on, each one in order.
// When the recording stops being live and every fragment is in, the media
// source is ended and the video plays out to its end.

import {
  RETRY_MS,
  Status,
  describe,
  loadConfig,
  seconds,
  showStats,
  startPlaying,
  streamPage,
  watchVideo,
  webUrl,
} from "./common.js";
import { mimeOfTracks, tracksOfInit } from "./mp4box.js";

/** Media kept behind the playing position; older is removed from the buffers. */
const KEEP_BEHIND_S = 30;

const video = document.getElementById("video");
const status = new Status(document.getElementById("status"));
const stats = document.getElementById("stats");

/** The recorder's directory entry in /recordings.json, or null. */
async function recordingEntry(session, app, stream, path) {
  const controller = new AbortController();
  const forget = session.defer(() => controller.abort());
  try {
    const query = new URLSearchParams({ app, stream });
    const response = await fetch(webUrl(`recordings.json?${query}`), {
      cache: "no-store",
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(`/recordings.json answered HTTP ${response.status}`);
    const listing = await response.json();
    return listing.recordings.find((entry) => entry.path === path) ?? null;
  } finally {
    forget();
  }
}

/** GET a file of the recording as an ArrayBuffer. */
async function fetchBytes(session, url) {
  const controller = new AbortController();
  const forget = session.defer(() => controller.abort());
  try {
    const response = await fetch(url, { signal: controller.signal });
    if (!response.ok) throw new Error(`${url} answered HTTP ${response.status}`);
    return await response.arrayBuffer();
  } finally {
    forget();
  }
}

/** Resolves once ``target`` fires ``type`` (or rejects on ``failure``). */
function once(session, target, type, failure = "") {
  return new Promise((resolve, reject) => {
    const done = (handler) => (event) => {
      target.removeEventListener(type, ok);
      if (failure) target.removeEventListener(failure, bad);
      handler(event);
    };
    const ok = done(resolve);
    const bad = done(() => reject(new Error(`${type} failed`)));
    target.addEventListener(type, ok);
    if (failure) target.addEventListener(failure, bad);
    session.defer(() => {
      target.removeEventListener(type, ok);
      if (failure) target.removeEventListener(failure, bad);
    });
  });
}

/** Append to a SourceBuffer and wait until it has taken the bytes. */
async function append(session, buffer, bytes) {
  const done = once(session, buffer, "updateend", "error");
  buffer.appendBuffer(bytes);
  await done;
}

/** Drop media far behind the playing position, so a long stream fits. */
async function trim(session, buffer) {
  const ranges = buffer.buffered;
  if (ranges.length === 0 || buffer.updating) return;
  const until = video.currentTime - KEEP_BEHIND_S;
  if (until > ranges.start(0) + 1) {
    const done = once(session, buffer, "updateend", "error");
    buffer.remove(ranges.start(0), until);
    await done;
  }
}

/** One fMP4 track file series: its init segment name and fragment prefix. */
function seriesOf(layout, inits) {
  if (layout === "merge") return [{ init: "init.mp4", prefix: "" }];
  return ["video", "audio"]
    .filter((track) => inits.includes(`${track}_init.mp4`))
    .map((track) => ({ init: `${track}_init.mp4`, prefix: `${track}_` }));
}

function fragmentName(prefix, number) {
  return `${prefix}${String(number).padStart(6, "0")}.m4s`;
}

/** Waits for a live recording of the stream with at least one fragment. */
async function waitForRecording(session, { app, stream, layout }, path, config) {
  const recorder = layout === "merge" ? "fmp4" : "fmp4-separate";
  const off = (config.record ?? []).includes(recorder)
    ? ""
    : ` (this server does not record it: start it with --record ${recorder})`;
  for (;;) {
    let entry = null;
    let problem = "";
    try {
      entry = await recordingEntry(session, app, stream, path);
    } catch (error) {
      problem = describe(error);
    }
    if (!session.alive) return null;
    if (entry?.live && entry.fragments > 0 && entry.inits.length > 0) return entry;
    if (problem) status.set("error", `${problem}; retrying`);
    else if (entry?.live) status.set("connecting", `${app}/${stream}: waiting for the first fragment`);
    else if (entry) status.set("missing", `${app}/${stream} is not live (its last fMP4 recording has ended); waiting for it`);
    else status.set("missing", `${app}/${stream} has no fMP4 recording${off}; waiting for it`);
    if (!(await session.sleep(RETRY_MS))) return null;
  }
}

/** Plays one recording from its newest fragment to its end. */
async function playRecording(session, values, path, entry, config) {
  const base = webUrl(`${path}/`);
  const series = seriesOf(values.layout, entry.inits);
  const inits = [];
  for (const item of series) inits.push(await fetchBytes(session, new URL(item.init, base).href));
  if (!session.alive) return "stopped";
  const tracks = inits.map((bytes) => tracksOfInit(bytes));
  const types = tracks.map((list) => mimeOfTracks(list));
  showStats(stats, { url: path, codecs: types.map((t) => t.replace(/^.*codecs=/, "")).join(" + ") });
  // Safari on iPhone has only the managed variant (which wants no AirPlay).
  const Source = window.MediaSource ?? window.ManagedMediaSource;
  if (Source === undefined) throw new Error("this browser has no Media Source Extensions");
  if (Source !== window.MediaSource) video.disableRemotePlayback = true;
  for (const type of types) {
    if (!Source.isTypeSupported(type)) throw new Error(`this browser cannot play ${type}`);
  }
  const source = new Source();
  const objectUrl = URL.createObjectURL(source);
  video.src = objectUrl;
  session.defer(() => {
    video.removeAttribute("src");
    video.load();
    URL.revokeObjectURL(objectUrl);
  });
  await once(session, source, "sourceopen");
  if (!session.alive) return "stopped";
  const buffers = types.map((type) => source.addSourceBuffer(type));
  for (let i = 0; i < buffers.length; i += 1) await append(session, buffers[i], inits[i]);

  const name = `${values.app}/${values.stream}`;
  watchVideo(video, status, session, `${name}, live fMP4 (${path.split("/").pop()})`);
  const pollMs = Math.max(250, Math.min(1000, (config.hls_fragment_s ?? 2) * 250));
  // Two fragments behind the newest: near live, with one in hand.
  let next = Math.max(1, entry.fragments - 1);
  let latest = entry;
  let appended = 0;
  let started = false;
  for (;;) {
    while (next <= latest.fragments) {
      for (let i = 0; i < series.length; i += 1) {
        const url = new URL(fragmentName(series[i].prefix, next), base).href;
        const bytes = await fetchBytes(session, url);
        if (!session.alive) return "stopped";
        await trim(session, buffers[i]);
        await append(session, buffers[i], bytes);
      }
      next += 1;
      appended += 1;
      if (!started && video.buffered.length > 0) {
        started = true;
        video.currentTime = video.buffered.start(0);
        startPlaying(video, status);
      }
      const ranges = video.buffered;
      showStats(stats, {
        fragments: String(appended),
        latency: seconds(ranges.length ? ranges.end(ranges.length - 1) - video.currentTime : NaN),
        size: video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : "–",
      });
    }
    if (!latest.live) break;
    if (!(await session.sleep(pollMs))) return "stopped";
    const seen = await recordingEntry(session, values.app, values.stream, path);
    if (!session.alive) return "stopped";
    if (seen === null || seen.fragments < next - 1) break; // moved aside: a new publish
    latest = seen;
  }
  // Every fragment is in: let the video play out to its end.
  if (source.readyState === "open") {
    await Promise.all(buffers.map((b) => (b.updating ? once(session, b, "updateend") : null)));
    source.endOfStream();
  }
  status.set("ended", `${name}: the stream ended; playing out the rest`);
  if (!video.ended) await once(session, video, "ended");
  return "ended";
}

async function run(session, values) {
  const config = await loadConfig();
  const path = `mp4/${values.app}/${values.stream}/output_${values.layout}`;
  showStats(stats, { url: path });
  while (session.alive) {
    status.set("connecting", `${values.app}/${values.stream}, live fMP4`);
    const entry = await waitForRecording(session, values, path, config);
    if (entry === null) return;
    const outcome = await playRecording(session, values, path, entry, config);
    if (outcome === "stopped") return;
    status.set("ended", `${values.app}/${values.stream}: the stream ended; waiting for it to come back`);
    // Wait for the next recording (a republish starts a new directory).
    for (;;) {
      if (!(await session.sleep(RETRY_MS))) return;
      const seen = await recordingEntry(session, values.app, values.stream, path).catch(() => null);
      if (seen?.live) break;
    }
    video.removeAttribute("src");
    video.load();
  }
}

function main() {
  const layoutOf = (value) => (value === "separate" ? "separate" : "merge");
  streamPage({
    status,
    run,
    // Its layout is part of a path: only the two known ones.
    options: (query) => ({ layout: layoutOf(query.params.get("layout")) }),
    normalize: (chosen) => ({ ...chosen, layout: layoutOf(chosen.layout) }),
    toQuery: ({ layout }) => ({ layout: layout === "merge" ? "" : layout }),
  });
}

main();
