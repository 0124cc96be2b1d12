// The three ways a page plays a URL into a <video>: FLV (HTTP or WebSocket)
// through mpegts.js, HLS through hls.js or the browser, MP4 natively. Each
// takes a Session and is undone when it stops.

import { describe, loadHls, loadMpegts } from "./common.js";

/** Plays an FLV URL (``http(s)://`` or ``ws(s)://``) with mpegts.js.
 * ``live``: a live stream (no seeking, small buffers); else a file, with
 * seeking by range requests. ``onEnd()`` when the source has sent
 * everything, ``onError(reason)`` when mpegts.js gives up. */
export async function playFlv(video, url, session, { live, onEnd, onError }) {
  const mpegts = await loadMpegts();
  if (!session.alive) return null;
  const features = mpegts.getFeatureList();
  if (!(live ? features.mseLivePlayback : features.msePlayback)) {
    throw new Error("this browser cannot play FLV here (no Media Source Extensions)");
  }
  const player = mpegts.createPlayer(
    { type: "flv", isLive: live, url },
    {
      enableWorker: false,
      enableStashBuffer: !live,
      lazyLoad: !live,
      autoCleanupSourceBuffer: true,
      liveBufferLatencyChasing: false,
      seekType: "range",
    },
  );
  player.on(mpegts.Events.ERROR, (type, detail, info) => {
    const more = info?.msg ? `: ${info.msg}` : info?.code ? ` ${info.code}` : "";
    onError(`${type} (${detail}${more})`);
  });
  player.on(mpegts.Events.LOADING_COMPLETE, () => onEnd());
  player.attachMediaElement(video);
  player.load();
  session.defer(() => {
    try {
      player.pause();
      player.unload();
      player.detachMediaElement();
    } finally {
      player.destroy();
    }
  });
  return player;
}

/** Plays an HLS playlist: hls.js where the browser has Media Source
 * Extensions (``engine`` "auto"), else (or with ``engine`` "native") the
 * browser's own HLS. Returns which one plays it ("hls.js" or "native") and
 * the hls.js instance (null when native). */
export async function playHls(video, url, session, { engine = "auto", onError }) {
  const Hls = await loadHls();
  if (!session.alive) return { engine: "", hls: null };
  const native = video.canPlayType("application/vnd.apple.mpegurl") !== "";
  if (engine !== "native" && Hls.isSupported()) {
    const hls = new Hls({
      enableWorker: false,
      lowLatencyMode: false,
      liveSyncDurationCount: 2,
      liveMaxLatencyDurationCount: 5,
      manifestLoadingMaxRetry: 2,
    });
    let recovered = false;
    hls.on(Hls.Events.ERROR, (_event, data) => {
      if (!data.fatal) return;
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR && !recovered) {
        recovered = true;
        hls.recoverMediaError();
        return;
      }
      onError(`${data.type} (${data.details}${data.response?.code ? ` ${data.response.code}` : ""})`);
    });
    hls.loadSource(url);
    hls.attachMedia(video);
    session.defer(() => hls.destroy());
    return { engine: "hls.js", hls };
  }
  if (native) {
    video.src = url;
    session.defer(() => {
      video.removeAttribute("src");
      video.load();
    });
    return { engine: "native", hls: null };
  }
  throw new Error(
    engine === "native"
      ? "this browser has no native HLS: choose hls.js"
      : "this browser plays HLS neither natively nor through Media Source Extensions",
  );
}

/** Plays a file the browser plays by itself (MP4, WebM...). */
export function playNative(video, url, session) {
  video.src = url;
  session.defer(() => {
    video.removeAttribute("src");
    video.load();
  });
}

/** What a URL holds, by its scheme and path: "flv", "hls", "mp4" or "". */
export function formatOf(url) {
  let parsed;
  try {
    parsed = new URL(url, location.href);
  } catch (error) {
    throw new Error(`not a URL: ${describe(error)}`);
  }
  const path = parsed.pathname.toLowerCase();
  if (parsed.protocol === "ws:" || parsed.protocol === "wss:") return "flv";
  if (path.endsWith(".flv")) return "flv";
  if (path.endsWith(".m3u8")) return "hls";
  if (/\.(mp4|m4v|mov|m4a|webm)$/.test(path)) return "mp4";
  return "";
}
