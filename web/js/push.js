// push.html: the camera (or the screen) and the microphone, encoded in the
// page with WebCodecs (H.264 video; AAC audio where the browser can encode
// it, Opus otherwise), muxed to FLV by flvmux.js and published to rtmpd
// over WS-FLV: ws://host:{http port}/{app}/{stream}, binary messages of FLV
// bytes.
//
// Every async step ends in a catch that shows the error on the page; the
// page never leaves an exception uncaught.

import { captureTrack, missingCapture } from "./capture.js";
import {
  CREDENTIALS,
  DEFAULT_APP,
  DEFAULT_STREAM,
  Status,
  badName,
  bindForm,
  describe,
  flvListener,
  linkNav,
  loadConfig,
  readQuery,
  showStats,
  writeQuery,
} from "./common.js";
import { FlvMuxer, opusHead } from "./flvmux.js";

/** Bytes the WebSocket may hold unsent, per kbit/s of the chosen bitrate,
 * before delta video frames are dropped: about one second of media. */
const BACKPRESSURE_BYTES_PER_KBIT = 1000 / 8;
/** Floor of that bound, so a low bitrate still allows a keyframe in flight. */
const MIN_BACKPRESSURE_BYTES = 256 * 1024;
/** Unsent bytes past this many times the bound: the network cannot carry
 * the stream even with frames dropped; the push stops with an error. */
const GIVE_UP_FACTOR = 16;
/** Frames waiting in the video encoder beyond which new frames are dropped
 * (the CPU cannot keep up). */
const MAX_ENCODE_QUEUE = 4;
const AUDIO_BITRATE = 96000;
const STATS_INTERVAL_MS = 1000;
/** The muxer waits for both tracks' first frames; a device that gives none
 * within this long fails the push (rather than holding the other track's
 * frames without end). */
const FIRST_FRAMES_MS = 10000;

// The server's close codes (rtmpd/protocols/flvws.py) and what they mean
// for someone pushing from this page.
const CLOSE_REASONS = {
  1003: "the server takes binary FLV messages only",
  1009: "a message was larger than the server accepts",
  4400: "the server refused the name: app and stream may use letters, digits, _ and - only",
  4401: "not authorized to publish here (a key or signature is missing or wrong)",
  4403: "not authorized to publish here (a key or signature is missing or wrong, a hook "
    + "said no, or the page is on another site)",
  4404: "no such stream",
  4409: "this stream is already being published: the name is busy",
  4502: "the server's upstream failed",
  4503: "the server is full (a connection or stream limit was reached)",
};

/** H.264 Constrained Baseline at a level that fits the picture (the
 * encoder gives no B-frames in that profile). */
function avcCodec(width, height) {
  const pixels = width * height;
  let level = "1f"; // 3.1: 1280x720
  if (pixels > 1280 * 720) level = "28"; // 4.0: 1920x1088
  if (pixels > 1920 * 1088) level = "33"; // 5.1: 4096x2304
  return `avc1.42e0${level}`;
}

/** The encoded size: the source's, scaled down to fit the chosen box,
 * even numbers (4:2:0). */
function fitSize(sourceWidth, sourceHeight, maxWidth, maxHeight) {
  const scale = Math.min(1, maxWidth / sourceWidth, maxHeight / sourceHeight);
  const even = (n) => Math.max(2, 2 * Math.round((n * scale) / 2));
  return [even(sourceWidth), even(sourceHeight)];
}

function describeMediaError(error, screen) {
  const what = screen ? "the screen and the microphone" : "the camera and the microphone";
  switch (error && error.name) {
    case "NotAllowedError":
      return `Permission to use ${what} was denied: allow it in the browser's address bar `
        + "and press Push again.";
    case "NotFoundError":
      return `No device found for ${what}.`;
    case "NotReadableError":
      return `${what} could not be opened (another program may be using it).`;
    case "OverconstrainedError":
      return "The device cannot give the chosen resolution.";
    default:
      return `Could not open ${what}: ${error && error.message ? error.message : error}`;
  }
}

/** What is missing for pushing from this browser, or null. */
function missingFeatures() {
  if (!window.isSecureContext) {
    return "Camera access needs a secure page: open this page over HTTPS, or on localhost.";
  }
  const missing = [];
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) missing.push("getUserMedia");
  if (typeof VideoEncoder === "undefined") missing.push("VideoEncoder");
  if (typeof AudioEncoder === "undefined") missing.push("AudioEncoder");
  const capture = missingCapture();
  if (capture) missing.push(capture);
  if (!missing.length) return null;
  return `This browser lacks WebCodecs features the push needs (${missing.join(", ")}); `
    + "use a current Chromium, Edge, Firefox or Safari.";
}

/** One push: capture, encoders, muxer and WebSocket, and their teardown. */
class PushSession {
  constructor(options, ui) {
    this.options = options; // {url, screen, width, height, bitrateKbps, keyframeS}
    this.ui = ui;
    this.closed = false;
    this.stopping = false;
    this.media = null;
    this.ws = null;
    this.mux = null;
    this.videoEncoder = null;
    this.audioEncoder = null;
    this.captures = [];
    this.captureKinds = {}; // track kind -> how its frames are read
    this.timer = null;
    this.sentBytes = 0;
    this.lastStats = { at: 0, bytes: 0 };
    this.dropped = 0;
    this.dropping = false;
    this.lastKeyUs = null;
    this.encodedSize = null;
    this.audioCodec = null;
    // Per track: page clock (us) minus capture clock (us); see _rebase.
    this.clockOffsetUs = { video: null, audio: null };
    this.bound = Math.max(MIN_BACKPRESSURE_BYTES,
      options.bitrateKbps * BACKPRESSURE_BYTES_PER_KBIT);
  }

  async start() {
    this.ui.state("connecting", "opening the devices");
    this.media = await this._openMedia();
    if (this._ended()) return;
    this.ui.preview(this.media);
    this.ui.state("connecting", this.options.shown);
    await this._connect();
    if (this._ended()) return;
    this.ui.state("pushing", this.options.shown);
    const videoTrack = this.media.getVideoTracks()[0];
    const audioTrack = this.media.getAudioTracks()[0];
    this.mux = new FlvMuxer({
      hasVideo: Boolean(videoTrack), hasAudio: Boolean(audioTrack),
      onData: (bytes) => this._send(bytes),
      metadata: {
        encoder: "rtmpd push.html (WebCodecs)",
        videodatarate: this.options.bitrateKbps,
        audiodatarate: audioTrack ? AUDIO_BITRATE / 1000 : undefined,
      },
    });
    this.startedAt = performance.now();
    this.timer = setInterval(() => this._stats(), STATS_INTERVAL_MS);
    if (videoTrack) this._pump(videoTrack, (frame) => this._onVideoFrame(frame));
    if (audioTrack) this._pump(audioTrack, (data) => this._onAudioData(data));
  }

  /** Whether the push was stopped or failed while start() waited; if so,
   * whatever start() opened so far is released. */
  _ended() {
    if (!this.closed && !this.stopping) return false;
    this._teardown(1000, "stopped");
    return true;
  }

  async _openMedia() {
    const { screen, width, height } = this.options;
    const audio = { channelCount: { ideal: 2 } };
    try {
      if (screen) {
        const shown = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
        try {
          const mic = await navigator.mediaDevices.getUserMedia({ audio });
          for (const track of mic.getAudioTracks()) shown.addTrack(track);
        } catch (error) {
          for (const track of shown.getTracks()) track.stop();
          throw error;
        }
        return shown;
      }
      return await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: width }, height: { ideal: height } }, audio,
      });
    } catch (error) {
      throw new Error(describeMediaError(error, screen));
    }
  }

  _connect() {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = this.ws = new WebSocket(this.options.url);
      } catch (error) {
        reject(new Error(`Cannot connect to ${this.options.shown}: ${error.message}`));
        return;
      }
      ws.binaryType = "arraybuffer";
      let opened = false;
      ws.onopen = () => {
        opened = true;
        resolve();
      };
      ws.onmessage = () => {}; // a publisher is sent nothing
      ws.onerror = () => {}; // onclose follows with the code
      ws.onclose = (event) => {
        const message = this._closeMessage(event, opened);
        if (!opened) {
          reject(new Error(message));
        } else if (!this.closed) {
          this.fail(message);
        }
      };
    });
  }

  _closeMessage(event, opened) {
    const server = event.reason ? ` (server: “${event.reason}”)` : "";
    const known = CLOSE_REASONS[event.code];
    if (known) return `Refused: ${known}${server}, close code ${event.code}.`;
    if (!opened) {
      return `Could not connect to ${this.options.shown} (close code ${event.code}): is rtmpd `
        + "running, and is its HTTP port the one in /config.json?";
    }
    if (event.code === 1000) return `The server ended the publish${server}.`;
    return `The connection closed${server}, close code ${event.code}.`;
  }

  /** Hand the track's raw frames to ``take`` until the push stops. */
  async _pump(track, take) {
    const ended = (error) => {
      if (this.closed || this.stopping) return;
      this.fail(error ? `Reading the ${track.kind} failed: ${describe(error)}`
        : `The ${track.kind} source ended (device unplugged or sharing stopped).`);
    };
    try {
      const capture = await captureTrack(track, (frame) => {
        if (!this.closed && !this.stopping) take(frame);
      }, ended);
      this.captures.push(capture);
      if (this.closed || this.stopping) capture.stop();
      this.captureKinds[track.kind] = capture.kind;
      this.ui.stats({ capture: Object.entries(this.captureKinds)
        .map(([kind, how]) => `${kind}: ${how}`).join(", ") });
    } catch (error) {
      ended(error);
    }
  }

  /**
   * Capture timestamps on one clock. Each track's frames carry capture
   * times on a clock of their own (Chromium: video on one base, audio on
   * another); each track's first frame is placed at the moment it reached
   * the page (the first call, made as it arrives), and every later frame
   * keeps its capture-time distance from that first one (no frame
   * counters).
   */
  _rebase(kind, timestampUs) {
    if (this.clockOffsetUs[kind] === null) {
      this.clockOffsetUs[kind] = performance.now() * 1000 - timestampUs;
    }
    return timestampUs + this.clockOffsetUs[kind];
  }

  async _configureVideo(frame) {
    const { width, height, bitrateKbps } = this.options;
    const [w, h] = fitSize(frame.displayWidth, frame.displayHeight, width, height);
    const frameRate = this.media.getVideoTracks()[0]?.getSettings().frameRate;
    const config = {
      codec: avcCodec(w, h), width: w, height: h, bitrate: bitrateKbps * 1000,
      framerate: frameRate || 30, latencyMode: "realtime", avc: { format: "avc" },
    };
    const support = await VideoEncoder.isConfigSupported(config);
    if (!support.supported) {
      throw new Error(`This browser cannot encode H.264 at ${w}x${h} (${config.codec}).`);
    }
    this.encodedSize = `${w}×${h}`;
    // onMetaData goes out with the first tags, after the first frames.
    Object.assign(this.mux.metadata, { width: w, height: h,
      framerate: frameRate ? Math.round(frameRate * 100) / 100 : undefined });
    this.videoEncoder.configure(config);
  }

  _onVideoFrame(frame) {
    this._rebase("video", frame.timestamp);
    if (!this.videoEncoder) {
      this.videoEncoder = new VideoEncoder({
        output: (chunk, metadata) => this._guard("video", () => this._onVideoChunk(chunk, metadata)),
        error: (error) => this.fail(`The video encoder failed: ${error.message}`),
      });
      // Frames wait while the support check runs; the first is kept.
      this.videoReady = this._configureVideo(frame).catch((error) => this.fail(error.message));
      this.firstFrame = frame.clone();
      this.videoReady.then(() => {
        const first = this.firstFrame;
        this.firstFrame = null;
        if (!first) return; // closed by a teardown meanwhile
        try {
          if (!this.closed && this.videoEncoder.state === "configured") this._encode(first);
        } catch (error) {
          this.fail(`The video encoder failed: ${describe(error)}`);
        } finally {
          first.close();
        }
      });
      return;
    }
    if (this.videoEncoder.state !== "configured" || this.firstFrame) {
      return; // still setting up: the stream starts with the first frame
    }
    this._encode(frame);
  }

  _encode(frame) {
    const due = this.lastKeyUs === null
      || frame.timestamp - this.lastKeyUs >= this.options.keyframeS * 1e6;
    const buffered = this.ws.bufferedAmount;
    if (buffered > this.bound * GIVE_UP_FACTOR) {
      this.fail(`The network cannot carry ${this.options.bitrateKbps} kbit/s: `
        + `${Math.round(buffered / 1024)} KiB wait to be sent. Lower the bitrate.`);
      return;
    }
    // Backpressure: while the socket holds more than the bound, frames that
    // would be delta frames are not encoded (the next one sent refers to the
    // last one sent, so the stream stays decodable); keyframes still go, on
    // time, for viewers that join and for the recordings' segments.
    this.dropping = buffered > this.bound;
    if (!due && (this.dropping || this.videoEncoder.encodeQueueSize > MAX_ENCODE_QUEUE)) {
      this.dropped += 1;
      return;
    }
    if (due) this.lastKeyUs = frame.timestamp;
    this.videoEncoder.encode(frame, { keyFrame: due });
  }

  /** Run an encoder's output callback; what it throws fails the push
   * (an exception there would otherwise go uncaught). */
  _guard(kind, run) {
    try {
      run();
    } catch (error) {
      this.fail(`Muxing the ${kind} failed: ${describe(error)}`);
    }
  }

  _onVideoChunk(chunk, metadata) {
    if (this.closed) return;
    const data = new Uint8Array(chunk.byteLength);
    chunk.copyTo(data);
    const config = metadata && metadata.decoderConfig;
    if (config && config.codedWidth) this.encodedSize = `${config.codedWidth}×${config.codedHeight}`;
    this.mux.addVideo({
      timestampUs: this._rebase("video", chunk.timestamp), keyframe: chunk.type === "key", data,
      description: config && config.description,
    });
  }

  async _chooseAudio(data) {
    const base = { sampleRate: data.sampleRate, numberOfChannels: data.numberOfChannels,
      bitrate: AUDIO_BITRATE };
    const aac = { ...base, codec: "mp4a.40.2", aac: { format: "aac" } };
    if ((await AudioEncoder.isConfigSupported(aac)).supported) return ["aac", aac];
    const opus = { ...base, codec: "opus" };
    if (data.numberOfChannels <= 2 && (await AudioEncoder.isConfigSupported(opus)).supported) {
      return ["opus", opus];
    }
    throw new Error(`This browser can encode neither AAC nor Opus from a `
      + `${data.numberOfChannels}-channel ${data.sampleRate} Hz microphone.`);
  }

  _onAudioData(data) {
    this._rebase("audio", data.timestamp);
    if (!this.audioEncoder) {
      this.audioEncoder = new AudioEncoder({
        output: (chunk, metadata) => this._guard("audio", () => this._onAudioChunk(chunk, metadata)),
        error: (error) => this.fail(`The audio encoder failed: ${error.message}`),
      });
      this.audioFormat = { sampleRate: data.sampleRate, channels: data.numberOfChannels };
      Object.assign(this.mux.metadata, { audiosamplerate: data.sampleRate,
        audiochannels: data.numberOfChannels, stereo: data.numberOfChannels === 2 });
      this.audioReady = this._chooseAudio(data).then(([codec, config]) => {
        if (this.closed) return;
        this.audioCodec = codec;
        this.audioEncoder.configure(config);
      }).catch((error) => this.fail(error.message));
      return; // audio starts with the next block; this one was only looked at
    }
    if (this.audioEncoder.state !== "configured") return;
    if (data.sampleRate !== this.audioFormat.sampleRate
        || data.numberOfChannels !== this.audioFormat.channels) {
      this.fail("The microphone changed its format during the push; press Push again.");
      return;
    }
    this.audioEncoder.encode(data);
  }

  _onAudioChunk(chunk, metadata) {
    if (this.closed) return;
    const data = new Uint8Array(chunk.byteLength);
    chunk.copyTo(data);
    const config = metadata && metadata.decoderConfig;
    this.mux.addAudio({
      timestampUs: this._rebase("audio", chunk.timestamp), data, codec: this.audioCodec,
      description: config && config.description,
      fallbackConfig: this.audioCodec === "opus"
        ? opusHead({ channels: this.audioFormat.channels, sampleRate: this.audioFormat.sampleRate })
        : undefined,
    });
  }

  _send(bytes) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(bytes);
    this.sentBytes += bytes.length;
  }

  _stats() {
    const now = performance.now();
    if (this.mux && !this.mux.started && !this.stopping
        && now - this.startedAt > FIRST_FRAMES_MS) {
      const missing = [["video", this.mux.hasVideo && !this.videoEncoder],
        ["audio", this.mux.hasAudio && !this.audioEncoder]]
        .filter(([, none]) => none).map(([kind]) => kind);
      this.fail(`No ${missing.join(" or ") || "encoded"} frames after `
        + `${FIRST_FRAMES_MS / 1000} s: is the device working?`);
      return;
    }
    const onWire = this.sentBytes - (this.ws ? this.ws.bufferedAmount : 0);
    const seconds = (now - this.lastStats.at) / 1000;
    const kbps = this.lastStats.at ? ((onWire - this.lastStats.bytes) * 8) / 1000 / seconds : 0;
    this.lastStats = { at: now, bytes: onWire };
    const stats = this.mux ? this.mux.stats : { videoFrames: 0, audioFrames: 0 };
    this.ui.stats({
      bitrate: `${Math.round(kbps)} kbit/s`,
      resolution: this.encodedSize || "–",
      frames: String(stats.videoFrames),
      audio: this.audioCodec ? `${this.audioCodec === "aac" ? "AAC" : "Opus"}, `
        + `${stats.audioFrames} frames` : "–",
      dropped: String(this.dropped),
      queued: `${Math.round((this.ws ? this.ws.bufferedAmount : 0) / 1024)} KiB`,
      backpressure: this.dropping,
    });
  }

  /** End the push with an error shown on the page. */
  fail(message) {
    if (this.closed) return;
    this.ui.state("error", message);
    this._teardown(4000, "page error");
  }

  /** End the push cleanly: what is encoded goes out, then the socket closes. */
  async stop() {
    if (this.closed || this.stopping) return;
    this.stopping = true;
    for (const capture of this.captures) capture.stop();
    try {
      for (const encoder of [this.videoEncoder, this.audioEncoder]) {
        if (encoder && encoder.state === "configured") await encoder.flush();
      }
    } catch {
      // An encoder that failed has said so through its error callback.
    }
    if (this.closed) return; // failed meanwhile
    if (this.mux) this.mux.flush();
    this._stats();
    this._teardown(1000, "stopped");
  }

  _teardown(code, reason) {
    this.closed = true;
    clearInterval(this.timer);
    for (const capture of this.captures) capture.stop();
    for (const encoder of [this.videoEncoder, this.audioEncoder]) {
      if (encoder && encoder.state !== "closed") {
        try {
          encoder.close();
        } catch {
          // already closed by an error
        }
      }
    }
    if (this.firstFrame) {
      this.firstFrame.close();
      this.firstFrame = null;
    }
    if (this.media) for (const track of this.media.getTracks()) track.stop();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) {
      try {
        this.ws.close(code, reason);
      } catch {
        this.ws.close();
      }
    }
    this.ui.preview(null);
  }
}

// ------------------------------------------------------------------ the page

const form = document.getElementById("form");
const button = document.getElementById("push");
const status = new Status(document.getElementById("status"));
const stats = document.getElementById("stats");

const ui = {
  state(state, message) {
    status.set(state, message);
    const busy = state === "connecting" || state === "pushing" || state === "stopping";
    button.textContent = busy ? "Stop" : "Push";
    button.disabled = state === "stopping";
    for (const field of form.elements) {
      if (field !== button) field.disabled = busy;
    }
  },
  stats(values) {
    const { backpressure, ...shown } = values;
    showStats(stats, shown);
    document.getElementById("backpressure").hidden = !backpressure;
  },
  preview(media) {
    const video = document.getElementById("preview");
    video.srcObject = media;
    if (media) video.play().catch(() => {});
  },
};

let session = null;

/** The WS-FLV publish URL: this page's host name, the FLV port and its
 * TLS from /config.json, and the credentials of the page's query (a
 * publish key, or a signed URL's expiry and signature). */
function publishUrl(config, app, stream, params) {
  const listener = flvListener(config);
  const tls = listener?.port ? Boolean(listener.tls) : location.protocol === "https:";
  const host = listener?.port ? `${location.hostname}:${listener.port}` : location.host;
  const url = new URL(`${tls ? "wss" : "ws"}://${host}/`);
  url.pathname = `/${encodeURIComponent(app)}/${encodeURIComponent(stream)}`;
  for (const name of CREDENTIALS) {
    if (params.has(name)) url.searchParams.set(name, params.get(name));
  }
  return url.href;
}

/** A URL to show: credentials left out. */
function shownUrl(url) {
  const shown = new URL(url);
  for (const name of CREDENTIALS) {
    if (shown.searchParams.has(name)) shown.searchParams.set(name, "…");
  }
  return decodeURIComponent(shown.href);
}

function readOptions(fields, config) {
  const problem = badName(fields.app, fields.stream);
  if (problem) throw new Error(problem);
  const [width, height] = fields.resolution.split("x").map(Number);
  const bitrateKbps = Number(fields.bitrate);
  const keyframeS = Number(fields.keyframe);
  if (!(bitrateKbps >= 100 && bitrateKbps <= 20000)) {
    throw new Error("the video bitrate must be between 100 and 20000 kbit/s");
  }
  if (!(keyframeS >= 0.5 && keyframeS <= 10)) {
    throw new Error("the keyframe interval must be between 0.5 and 10 s");
  }
  const url = publishUrl(config, fields.app, fields.stream, readQuery().params);
  return { url, shown: shownUrl(url), screen: fields.source === "screen",
    width, height, bitrateKbps, keyframeS };
}

async function toggle(fields) {
  if (session) {
    const ending = session;
    session = null;
    ui.state("stopping", "sending what is encoded");
    await ending.stop();
    ui.state("idle", "stopped");
    return;
  }
  const missing = missingFeatures();
  if (missing) {
    ui.state("error", missing);
    return;
  }
  let options;
  try {
    options = readOptions(fields, await loadConfig());
  } catch (error) {
    ui.state("error", describe(error));
    return;
  }
  writeQuery({ app: fields.app, stream: fields.stream }); // the credentials stay
  linkNav(document.getElementById("nav"), fields.app, fields.stream);
  showStats(stats, { url: options.shown });
  const current = session = new PushSession(options, {
    ...ui,
    state(state, message) {
      if (session !== current) return; // a stopped push says nothing more
      if (state === "error") session = null;
      ui.state(state, message);
    },
  });
  try {
    await current.start();
  } catch (error) {
    current.fail(describe(error));
  }
}

function main() {
  const query = readQuery();
  const values = {
    app: query.app || DEFAULT_APP,
    stream: query.stream || DEFAULT_STREAM,
    source: query.params.get("source") === "screen" ? "screen" : "camera",
  };
  linkNav(document.getElementById("nav"), values.app, values.stream);
  bindForm(form, values, (fields) => {
    toggle(fields).catch((error) => ui.state("error", describe(error)));
  });
  const missing = missingFeatures();
  ui.state(missing ? "error" : "idle", missing || "press Push to publish the camera and microphone");
}

main();
