// play.html: a live stream over HLS, with hls.js where the browser has
// Media Source Extensions and the browser's own HLS elsewhere (or on demand).

import {
  RETRY_MS,
  Session,
  Status,
  describe,
  resetVideo,
  seconds,
  showStats,
  startPlaying,
  streamPage,
  waitUntilExists,
  watchVideo,
  webUrl,
} from "./common.js";
import { playHls } from "./players.js";

const video = document.getElementById("video");
const status = new Status(document.getElementById("status"));
const stats = document.getElementById("stats");

/** The live playlist of a stream on this port. */
function playlistUrl(app, stream) {
  return webUrl(`hls/${encodeURIComponent(app)}/${encodeURIComponent(stream)}/index.m3u8`);
}

async function run(session, { app, stream, engine, url }) {
  const target = url || playlistUrl(app, stream);
  const name = url ? target : `${app}/${stream}`;
  showStats(stats, { url: target });
  while (session.alive) {
    status.set("connecting", `${name} over HLS`);
    const missing = `${name} has no HLS playlist (not live, or the server does not record hls)`;
    if (!(await waitUntilExists(target, session, status, missing))) return;
    const result = await playOnce(session, target, engine, name);
    if (!session.alive) return;
    status.set(result.ended ? "ended" : "error", `${result.reason}; waiting for it to come back`);
    // An ended playlist stays: wait until it is live again (no #EXT-X-ENDLIST).
    while (await session.sleep(RETRY_MS)) {
      if (await isLivePlaylist(target, session)) break;
    }
  }
}

/** Whether the playlist is there and still growing. */
async function isLivePlaylist(url, session) {
  try {
    const controller = new AbortController();
    const forget = session.defer(() => controller.abort());
    const response = await fetch(url, { cache: "no-store", signal: controller.signal });
    const text = response.ok ? await response.text() : "";
    forget();
    return response.ok && !text.includes("#EXT-X-ENDLIST");
  } catch {
    return false;
  }
}

function playOnce(parent, target, engine, name) {
  return new Promise((resolve) => {
    const session = new Session();
    const forget = parent.defer(() => session.stop());
    const finish = (result) => {
      if (!session.alive) return;
      session.stop();
      forget();
      resetVideo(video);
      resolve(result);
    };
    session.listen(video, "ended", () => finish({ ended: true, reason: "the stream ended" }));
    session.listen(video, "error", () => finish({ ended: false, reason: "media error" }));
    playHls(video, target, session, {
      engine,
      onError: (reason) => finish({ ended: false, reason }),
    })
      .then(({ engine: used, hls }) => {
        if (!session.alive) return;
        watchVideo(video, status, session, `${name} over HLS (${used})`);
        const timer = setInterval(() => {
          const behind = hls?.latency;
          showStats(stats, {
            engine: used,
            latency: seconds(Number.isFinite(behind) ? behind : NaN),
            size: video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : "–",
          });
        }, 500);
        session.defer(() => clearInterval(timer));
        startPlaying(video, status);
      })
      .catch((error) => finish({ ended: false, reason: describe(error) }));
  });
}

function main() {
  streamPage({
    status,
    run,
    options: (query) => ({
      engine: query.params.get("engine") === "native" ? "native" : "auto",
      url: query.url,
    }),
    toQuery: ({ engine, url }) => ({ engine: engine === "native" ? "native" : "", url }),
  });
}

main();
