// mp4.html: the recordings the server keeps, from /recordings.json, and
// playback of one with seeking: stream_full.mp4 in the browser itself,
// index.flv through mpegts.js (which seeks by range requests, using the
// keyframe index the FLV recorder writes into onMetaData).

import {
  DEFAULT_APP,
  DEFAULT_STREAM,
  RETRY_MS,
  Status,
  badName,
  bytes,
  describe,
  linkNav,
  readQuery,
  seconds,
  sessionRunner,
  showStats,
  startPlaying,
  watchVideo,
  webUrl,
  writeQuery,
} from "./common.js";
import { formatOf, playFlv, playNative } from "./players.js";

/** How often the list is read again while it is on screen. */
const REFRESH_MS = 5000;

const video = document.getElementById("video");
const status = new Status(document.getElementById("status"));
const stats = document.getElementById("stats");
const form = document.getElementById("form");
const rows = document.querySelector("#list tbody");
const start = sessionRunner(status);

/** The recordings, all or one stream's. */
async function listRecordings(app, stream) {
  const query = app && stream ? `?${new URLSearchParams({ app, stream })}` : "";
  const response = await fetch(webUrl(`recordings.json${query}`), { cache: "no-store" });
  if (!response.ok) throw new Error(`/recordings.json answered HTTP ${response.status}`);
  return (await response.json()).recordings;
}

/** Recordings that play as one file (the fMP4 directories play in play_merge.html). */
function playable(entry) {
  return entry.kind === "mp4" || entry.kind === "flv";
}

function cell(text, className = "") {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

/** Shows the list; each row plays its recording (or links to the live page). */
function showList(entries, playing) {
  const shown = entries.filter((entry) => playable(entry) || entry.live);
  const made = shown.map((entry) => {
    const tr = document.createElement("tr");
    tr.dataset.path = entry.path;
    tr.setAttribute("aria-selected", String(entry.path === playing));
    const when = new Date(entry.modified * 1000).toLocaleString();
    const kind = entry.live ? `${entry.kind}, recording` : entry.kind;
    tr.append(
      cell(`${entry.app}/${entry.stream}`),
      cell(kind),
      cell(entry.path.split("/").slice(3).join("/")),
      cell(entry.size === null ? "–" : bytes(entry.size), "num"),
      cell(when),
    );
    const action = document.createElement("td");
    if (playable(entry)) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.textContent = "Play";
      button.addEventListener("click", () => playPath(entry.path, entry.app, entry.stream));
      action.append(button);
    } else if (entry.live) {
      const link = document.createElement("a");
      const layout = entry.kind === "fmp4-separate" ? "&layout=separate" : "";
      link.href = `play_merge.html?app=${entry.app}&stream=${entry.stream}${layout}`;
      link.textContent = "watch live";
      action.append(link);
    }
    tr.append(action);
    return tr;
  });
  if (made.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("no recordings");
    td.colSpan = 6;
    tr.append(td);
    made.push(tr);
  }
  rows.replaceChildren(...made);
}

let filter = { app: "", stream: "" };
let playing = "";

/** Reads the list again every REFRESH_MS (quietly: errors show in the list). */
async function refreshForever() {
  for (;;) {
    try {
      showList(await listRecordings(filter.app, filter.stream), playing);
    } catch (error) {
      rows.replaceChildren();
      const tr = document.createElement("tr");
      const td = cell(`cannot read the list: ${describe(error)}`);
      td.colSpan = 6;
      tr.append(td);
      rows.append(tr);
    }
    await new Promise((resolve) => setTimeout(resolve, REFRESH_MS));
  }
}

/** Plays one recording file (a path on this port, or any URL). */
function playPath(path, app = "", stream = "") {
  playing = path;
  for (const tr of rows.querySelectorAll("tr")) {
    tr.setAttribute("aria-selected", String(tr.dataset.path === path));
  }
  writeQuery({ app, stream, url: path });
  start(async (session) => {
    const url = webUrl(path);
    const format = formatOf(url);
    if (format !== "mp4" && format !== "flv") {
      status.set("error", `${path} is neither an MP4 nor an FLV file`);
      return;
    }
    status.set("connecting", path);
    showStats(stats, { url: path });
    watchVideo(video, status, session, path);
    const timer = setInterval(() => {
      showStats(stats, {
        position: `${seconds(video.currentTime)} / ${seconds(video.duration)}`,
        size: video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : "–",
      });
    }, 500);
    session.defer(() => clearInterval(timer));
    session.listen(video, "ended", () => status.set("ended", `${path}: played to the end`));
    if (format === "mp4") {
      playNative(video, url, session);
    } else {
      const failed = (reason) => {
        if (session.alive) status.set("error", `${path}: ${reason}`);
      };
      await playFlv(video, url, session, { live: false, onEnd: () => {}, onError: failed });
    }
    if (session.alive) startPlaying(video, status);
  });
}

/** Plays the newest playable recording of a stream, waiting until there is one. */
function playNewest(app, stream) {
  start(async (session) => {
    status.set("connecting", `recordings of ${app}/${stream}`);
    for (;;) {
      let entries = [];
      let problem = "";
      try {
        entries = (await listRecordings(app, stream)).filter(playable);
      } catch (error) {
        problem = describe(error);
      }
      if (!session.alive) return;
      // Prefer a finished MP4, then a finished FLV, then the FLV being written.
      const rank = (e) => (e.kind === "mp4" ? 0 : e.live ? 2 : 1);
      entries.sort((a, b) => rank(a) - rank(b) || b.modified - a.modified);
      if (entries.length > 0) {
        playPath(entries[0].path, app, stream);
        return;
      }
      if (problem) status.set("error", `${problem}; retrying`);
      else status.set("missing", `no recordings of ${app}/${stream} yet; retrying every ${RETRY_MS / 1000} s`);
      if (!(await session.sleep(RETRY_MS))) return;
    }
  });
}

function main() {
  const query = readQuery();
  const app = query.app || DEFAULT_APP;
  const stream = query.stream || DEFAULT_STREAM;
  linkNav(document.getElementById("nav"), app, stream);
  form.elements.namedItem("app").value = app;
  form.elements.namedItem("stream").value = stream;
  if (query.params.has("stream")) filter = { app, stream };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosenApp = form.elements.namedItem("app").value.trim();
    const chosenStream = form.elements.namedItem("stream").value.trim();
    const problem = badName(chosenApp, chosenStream);
    if (problem) {
      start(() => status.set("error", problem));
      return;
    }
    filter = { app: chosenApp, stream: chosenStream };
    linkNav(document.getElementById("nav"), chosenApp, chosenStream);
    listRecordings(chosenApp, chosenStream).then((e) => showList(e, playing), () => {});
    playNewest(chosenApp, chosenStream);
  });
  document.getElementById("all").addEventListener("click", () => {
    filter = { app: "", stream: "" };
    listRecordings("", "").then((e) => showList(e, playing), () => {});
  });
  refreshForever();
  if (query.url) playPath(query.url, query.app, query.stream);
  else if (query.params.has("stream")) playNewest(app, stream);
}

main();
