// Raw frames from a MediaStreamTrack for WebCodecs: VideoFrame for video,
// AudioData for audio, each with its capture timestamp in microseconds.
//
// Where the browser has MediaStreamTrackProcessor (Chromium) the track's own
// frames are read. Elsewhere (Firefox, Safari) video frames are taken from a
// hidden <video> playing the track, at each new frame it presents
// (requestVideoFrameCallback, stamped with the frame's capture time where
// the browser gives one), and audio from an AudioWorklet, stamped by its
// sample count. The timestamps of different tracks need not share a clock:
// the caller places each track's first frame on its own clock.

/** Samples per AudioData from the worklet: 20 ms at 48 kHz. */
const WORKLET_BLOCK = 960;
/** Frames a second for browsers with no requestVideoFrameCallback. */
const POLL_FPS = 30;

/**
 * Hand each frame of ``track`` to ``take`` (which must not keep it: it is
 * closed right after) until ``stop()``; ``ended(error)`` is called once if
 * the source ends or fails first. Returns ``{stop, kind}`` where kind names
 * the way frames are read ("processor", "video-element", "worklet").
 */
export async function captureTrack(track, take, ended) {
  if (typeof MediaStreamTrackProcessor !== "undefined") return readProcessor(track, take, ended);
  if (track.kind === "video") return readVideoElement(track, take, ended);
  return readWorklet(track, take, ended);
}

/** What is missing to capture raw frames in this browser, or "". */
export function missingCapture() {
  if (typeof MediaStreamTrackProcessor !== "undefined") return "";
  const missing = [];
  if (typeof VideoFrame === "undefined") missing.push("VideoFrame");
  if (typeof AudioWorkletNode === "undefined") missing.push("AudioWorklet");
  return missing.join(", ");
}

function handOver(take, frame) {
  try {
    take(frame);
  } finally {
    frame.close();
  }
}

function readProcessor(track, take, ended) {
  const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
  let stopped = false;
  (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (stopped) {
          value.close();
          break;
        }
        handOver(take, value);
      }
      if (!stopped) ended(null);
    } catch (error) {
      if (!stopped) ended(error);
    }
  })();
  return {
    kind: "processor",
    stop() {
      stopped = true;
      reader.cancel().catch(() => {});
    },
  };
}

async function readVideoElement(track, take, ended) {
  const video = document.createElement("video");
  video.muted = true;
  video.playsInline = true;
  video.srcObject = new MediaStream([track]);
  await video.play();
  let stopped = false;
  let timer = null;
  const grab = (timestampUs) => {
    if (stopped || video.readyState < 2) return;
    let frame;
    try {
      frame = new VideoFrame(video, { timestamp: Math.round(timestampUs) });
    } catch {
      return; // no picture yet
    }
    try {
      handOver(take, frame);
    } catch (error) {
      stopped = true;
      ended(error);
    }
  };
  if (typeof video.requestVideoFrameCallback === "function") {
    const step = (now, metadata) => {
      // captureTime (a camera's capture moment) and now share the page clock.
      grab((metadata.captureTime ?? now) * 1000);
      if (!stopped) video.requestVideoFrameCallback(step);
    };
    video.requestVideoFrameCallback(step);
  } else {
    timer = setInterval(() => grab(performance.now() * 1000), 1000 / POLL_FPS);
  }
  track.addEventListener("ended", () => {
    if (!stopped) ended(null);
  });
  return {
    kind: "video-element",
    stop() {
      stopped = true;
      clearInterval(timer);
      video.pause();
      video.srcObject = null;
    },
  };
}

async function readWorklet(track, take, ended) {
  // The track's own rate where it says one: Firefox cannot connect a
  // source to a context of another rate.
  const rate = track.getSettings().sampleRate;
  const context = rate ? new AudioContext({ sampleRate: rate }) : new AudioContext();
  await context.audioWorklet.addModule(new URL("./captureworklet.js", import.meta.url));
  const source = context.createMediaStreamSource(new MediaStream([track]));
  // Two channels always (a mono microphone is upmixed), so the encoder's
  // configuration never changes mid-stream.
  const node = new AudioWorkletNode(context, "rtmpd-capture", {
    numberOfInputs: 1, numberOfOutputs: 1, channelCount: 2, channelCountMode: "explicit",
    processorOptions: { block: WORKLET_BLOCK },
  });
  let stopped = false;
  node.port.onmessage = ({ data }) => {
    if (stopped) return;
    const { firstFrame, planes } = data;
    const length = planes[0].length;
    const joined = new Float32Array(length * planes.length);
    planes.forEach((plane, i) => joined.set(plane, i * length));
    let audio;
    try {
      audio = new AudioData({
        format: "f32-planar", sampleRate: context.sampleRate, numberOfFrames: length,
        numberOfChannels: planes.length, timestamp: Math.round((firstFrame / context.sampleRate) * 1e6),
        data: joined,
      });
      handOver(take, audio);
    } catch (error) {
      stopped = true;
      ended(error);
    }
  };
  source.connect(node);
  node.connect(context.destination); // pulls the graph; the node outputs silence
  await context.resume();
  track.addEventListener("ended", () => {
    if (!stopped) ended(null);
  });
  return {
    kind: "worklet",
    stop() {
      stopped = true;
      node.port.onmessage = null;
      source.disconnect();
      node.disconnect();
      context.close().catch(() => {});
    },
  };
}
