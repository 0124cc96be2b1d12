// video.html: one player for any URL, the format chosen by the URL: FLV
// over HTTP or WebSocket (mpegts.js; live on the HTTP-FLV port, a file with
// seeking elsewhere), HLS (hls.js or native), MP4 and the like (native).

import {
  DEFAULT_APP,
  DEFAULT_STREAM,
  RETRY_MS,
  Session,
  Status,
  bindForm,
  describe,
  flvUrl,
  linkNav,
  loadConfig,
  readQuery,
  resetVideo,
  seconds,
  sessionRunner,
  showStats,
  startPlaying,
  waitUntilExists,
  watchVideo,
  writeQuery,
} from "./common.js";
import { formatOf, playFlv, playHls, playNative } from "./players.js";

const video = document.getElementById("video");
const status = new Status(document.getElementById("status"));
const stats = document.getElementById("stats");
const start = sessionRunner(status);

/** Whether an FLV URL is a live stream: WebSocket, or an FLV port (the
 * HTTP-FLV one or its TLS twin). */
function isLiveFlv(url, config) {
  const parsed = new URL(url, location.href);
  if (parsed.protocol === "ws:" || parsed.protocol === "wss:") return true;
  const port = parsed.port || (parsed.protocol === "https:" ? "443" : "80");
  return [config.http, config.https].some(
    (listener) => listener?.port != null && String(listener.port) === port,
  );
}

async function run(session, url) {
  const config = await loadConfig();
  if (!session.alive) return;
  const format = formatOf(url);
  if (!format) {
    status.set("error", `cannot tell the format of ${url}: use .flv, ws://, .m3u8 or .mp4`);
    return;
  }
  const live = format === "flv" ? isLiveFlv(url, config) : format === "hls";
  showStats(stats, { format: `${format.toUpperCase()}${live ? " (live)" : ""}` });
  const timer = setInterval(() => {
    showStats(stats, {
      position: `${seconds(video.currentTime)} / ${seconds(video.duration)}`,
      size: video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : "–",
    });
  }, 500);
  session.defer(() => clearInterval(timer));
  while (session.alive) {
    status.set("connecting", url);
    if (!(await waitUntilExists(url, session, status, `nothing at ${url}`))) return;
    const result = await playOnce(session, url, format, live);
    if (!session.alive) return;
    if (!live && result.ended) {
      status.set("ended", "played to the end");
      return;
    }
    status.set(result.ended ? "ended" : "error", `${result.reason}; trying again`);
    if (!(await session.sleep(RETRY_MS))) return;
  }
}

function playOnce(parent, url, format, live) {
  return new Promise((resolve) => {
    const session = new Session();
    const forget = parent.defer(() => session.stop());
    const finish = (result) => {
      if (!session.alive) return;
      session.stop();
      forget();
      if (live || !result.ended) resetVideo(video);
      resolve(result);
    };
    watchVideo(video, status, session, url);
    session.listen(video, "ended", () => finish({ ended: true, reason: "it ended" }));
    session.listen(video, "error", () => finish({ ended: false, reason: "media error" }));
    const onError = (reason) => finish({ ended: false, reason });
    let started;
    if (format === "flv") {
      started = playFlv(video, url, session, { live, onError, onEnd: () => {} }).then(() => "mpegts.js");
    } else if (format === "hls") {
      started = playHls(video, url, session, { onError }).then((played) => played.engine);
    } else {
      playNative(video, url, session);
      started = Promise.resolve("the browser");
    }
    started
      .then((engine) => {
        if (!session.alive) return;
        showStats(stats, { engine });
        startPlaying(video, status);
      })
      .catch((error) => finish({ ended: false, reason: describe(error) }));
  });
}

async function main() {
  const query = readQuery();
  const app = query.app || DEFAULT_APP;
  const stream = query.stream || DEFAULT_STREAM;
  linkNav(document.getElementById("nav"), app, stream);
  let url = query.url;
  if (!url) {
    const config = await loadConfig();
    url = flvUrl(config, app, stream);
  }
  const play = ({ url: chosen }) => {
    if (!chosen) {
      start(() => status.set("error", "give a URL to play"));
      return;
    }
    writeQuery({ url: chosen });
    start((session) => run(session, chosen));
  };
  bindForm(document.getElementById("form"), { url }, play);
  if (query.names) play({ url });
}

main().catch((error) => status.set("error", describe(error)));
