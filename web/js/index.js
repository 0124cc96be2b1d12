// index.html: a live stream over HTTP-FLV or WS-FLV with mpegts.js, the
// latency behind live on screen, and catching up when it grows.

import {
  RETRY_MS,
  Session,
  Status,
  describe,
  flvUrl,
  loadConfig,
  resetVideo,
  seconds,
  showStats,
  startPlaying,
  streamPage,
  waitUntilExists,
  watchVideo,
} from "./common.js";
import { playFlv } from "./players.js";

/** Behind live by more than this, jump to near the newest data. */
const MAX_LATENCY_S = 3.0;
/** Where a jump lands, behind the newest data. */
const TARGET_LATENCY_S = 0.6;
/** Behind by more than this, play a little faster until back under TARGET. */
const SPEED_UP_LATENCY_S = 1.5;
const FAST_RATE = 1.15;

const video = document.getElementById("video");
const status = new Status(document.getElementById("status"));
const stats = document.getElementById("stats");

/** Seconds of media the player holds past what it shows. */
function latency() {
  const ranges = video.buffered;
  if (ranges.length === 0) return NaN;
  return Math.max(0, ranges.end(ranges.length - 1) - video.currentTime);
}

/** Keeps the player near the live edge; updates the numbers on screen. */
function followLive(session) {
  let catchups = 0;
  const timer = setInterval(() => {
    const behind = latency();
    if (!video.paused && Number.isFinite(behind)) {
      if (behind > MAX_LATENCY_S) {
        const ranges = video.buffered;
        video.currentTime = ranges.end(ranges.length - 1) - TARGET_LATENCY_S;
        video.playbackRate = 1;
        catchups += 1;
      } else if (behind > SPEED_UP_LATENCY_S) {
        video.playbackRate = FAST_RATE;
      } else if (behind < TARGET_LATENCY_S) {
        video.playbackRate = 1;
      }
    }
    const quality = video.getVideoPlaybackQuality?.();
    showStats(stats, {
      latency: seconds(behind),
      catchups: String(catchups),
      rate: `${video.playbackRate}×`,
      size: video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : "–",
      frames: quality ? `${quality.totalVideoFrames} / ${quality.droppedVideoFrames}` : "–",
    });
  }, 500);
  session.defer(() => {
    clearInterval(timer);
    video.playbackRate = 1;
  });
}

/** Plays until the stream ends or fails, then waits for it to come back. */
async function run(session, { app, stream, transport, url }) {
  const config = await loadConfig();
  if (!session.alive) return;
  const ws = transport === "ws";
  const target = url || flvUrl(config, app, stream, ws);
  const name = url ? target : `${app}/${stream}`;
  const over = target.startsWith("ws") ? "WS-FLV" : "HTTP-FLV";
  showStats(stats, { url: target });
  while (session.alive) {
    status.set("connecting", `${name} over ${over}`);
    if (!(await waitUntilExists(target, session, status, `${name} is not live`))) return;
    status.set("connecting", `${name} over ${over}`);
    const done = await playOnce(session, target, `${name} over ${over}`);
    if (!session.alive) return;
    status.set(done.ended ? "ended" : "error", `${done.reason}; waiting for it to come back`);
    if (!(await session.sleep(RETRY_MS))) return;
  }
}

/** One play of a live URL; resolves when it ends or fails. */
function playOnce(parent, target, detail) {
  return new Promise((resolve) => {
    // A sub-session per play, so a retry starts with a fresh player.
    const session = new Session();
    const forget = parent.defer(() => session.stop());
    const finish = (result) => {
      if (!session.alive) return;
      session.stop();
      forget();
      resetVideo(video);
      resolve(result);
    };
    watchVideo(video, status, session, detail);
    followLive(session);
    session.listen(video, "error", () => finish({ ended: false, reason: "media error" }));
    playFlv(video, target, session, {
      live: true,
      onEnd: () => {
        // The server closed the stream: play out what is buffered first.
        const waitForEnd = setInterval(() => {
          if (!(latency() > 0.1) || video.paused) {
            clearInterval(waitForEnd);
            finish({ ended: true, reason: "the stream ended" });
          }
        }, 250);
        session.defer(() => clearInterval(waitForEnd));
      },
      onError: (reason) => finish({ ended: false, reason }),
    })
      .then((player) => {
        if (player !== null && session.alive) startPlaying(video, status);
      })
      .catch((error) => finish({ ended: false, reason: describe(error) }));
  });
}

function main() {
  streamPage({
    status,
    run,
    options: (query) => ({
      transport: query.params.get("transport") === "ws" ? "ws" : "http",
      url: query.url,
    }),
    toQuery: ({ transport, url }) => ({ transport, url }),
  });
}

main();
