// FLV muxing for the push page: WebCodecs output in, FLV bytes out.
//
// Pure: no DOM, no network, no clocks; the page feeds encoded chunks and
// sends what comes back. Names follow the FLV specification v10.1 (Annex E)
// and Enhanced RTMP v2 (veovera), so the code reads against them.
//
//   FLV header (9 bytes) | PreviousTagSize0 = 0
//   tag: TagType UI8 | DataSize UI24 | Timestamp UI24 | TimestampExtended UI8
//        | StreamID UI24 = 0 | body | PreviousTagSize UI32 = 11 + DataSize
//
// Bodies written here:
//   video AVC   FrameType UB[4] | CodecID UB[4] = 7 | AVCPacketType UI8
//               | CompositionTime SI24 (PTS - DTS, ms) | data
//               (packet type 0: AVCDecoderConfigurationRecord, 1: NAL units
//               with 4-byte lengths, which is WebCodecs' "avc" format)
//   audio AAC   SoundFormat UB[4] = 10 | rate, size, type = 0xF
//               | AACPacketType UI8 (0: AudioSpecificConfig, 1: raw frame)
//   audio Opus  SoundFormat UB[4] = 9 (ExHeader) | AudioPacketType UB[4]
//               (0: SequenceStart, 1: CodedFrames) | FourCC "Opus" | data;
//               the SequenceStart body is the RFC 7845 5.1 "OpusHead"
//               identification header.

export const TAG_AUDIO = 8;
export const TAG_VIDEO = 9;
export const TAG_SCRIPT = 18;

const VIDEO_AVC = 7;
const FRAME_KEY = 1;
const FRAME_INTER = 2;
const AVC_SEQUENCE_HEADER = 0;
const AVC_NALU = 1;

const SOUND_EX_HEADER = 9;
const SOUND_AAC = 10;
// SoundRate 3 (44 kHz), SoundSize 1 (16 bit), SoundType 1 (stereo): what
// the spec asks of AAC whatever the real rate; the AudioSpecificConfig says.
const AAC_FLAGS = 0x0f;
const AAC_SEQUENCE_HEADER = 0;
const AAC_RAW = 1;
const AUDIO_PACKET_SEQUENCE_START = 0;
const AUDIO_PACKET_CODED_FRAMES = 1;

const FOURCC_OPUS = [0x4f, 0x70, 0x75, 0x73]; // "Opus"
/** "Opus" as the number Enhanced RTMP puts in onMetaData's audiocodecid. */
export const OPUS_CODEC_ID = 0x4f707573;
export const AAC_CODEC_ID = SOUND_AAC;
export const AVC_CODEC_ID = VIDEO_AVC;

const TAG_HEADER_SIZE = 11;
const MAX_DATA_SIZE = 0xffffff; // DataSize is a UI24
// CompositionTime is an SI24.
const MIN_SI24 = -0x800000;
const MAX_SI24 = 0x7fffff;

/** Bytes of any buffer source (ArrayBuffer, a typed array or a DataView). */
export function toBytes(source) {
  if (source instanceof Uint8Array) return source;
  if (ArrayBuffer.isView(source)) {
    return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  }
  return new Uint8Array(source);
}

function concat(parts) {
  let size = 0;
  for (const part of parts) size += part.length;
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** The 9-byte FLV header followed by PreviousTagSize0. */
export function flvHeader({ hasAudio, hasVideo }) {
  const flags = (hasAudio ? 0x04 : 0) | (hasVideo ? 0x01 : 0);
  return new Uint8Array([0x46, 0x4c, 0x56, 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]);
}

/** One whole tag with its PreviousTagSize; timestampMs a non-negative integer. */
export function flvTag(tagType, timestampMs, body) {
  if (body.length > MAX_DATA_SIZE) {
    throw new RangeError(`FLV tag body of ${body.length} bytes exceeds the UI24 DataSize`);
  }
  const ts = Math.max(0, Math.round(timestampMs)) >>> 0;
  const out = new Uint8Array(TAG_HEADER_SIZE + body.length + 4);
  const view = new DataView(out.buffer);
  view.setUint32(0, (tagType << 24) | body.length);
  view.setUint32(4, ((ts & 0xffffff) << 8) | (ts >>> 24)); // Timestamp, TimestampExtended
  // StreamID UI24 = 0 (bytes 8..10 are already zero)
  out.set(body, TAG_HEADER_SIZE);
  view.setUint32(TAG_HEADER_SIZE + body.length, TAG_HEADER_SIZE + body.length);
  return out;
}

// ------------------------------------------------------------------ AMF0

const textEncoder = new TextEncoder();

function amfString(text) {
  const bytes = textEncoder.encode(text);
  const out = new Uint8Array(2 + bytes.length);
  new DataView(out.buffer).setUint16(0, bytes.length);
  out.set(bytes, 2);
  return out;
}

function amfValue(value) {
  if (typeof value === "number") {
    const out = new Uint8Array(9);
    out[0] = 0x00; // Number marker
    new DataView(out.buffer).setFloat64(1, value);
    return out;
  }
  if (typeof value === "boolean") return new Uint8Array([0x01, value ? 1 : 0]);
  if (typeof value === "string") return concat([new Uint8Array([0x02]), amfString(value)]);
  throw new TypeError(`no AMF0 encoding for ${typeof value}`);
}

/** A script tag body: the AMF0 string "onMetaData" and an ECMA array of
 * ``properties`` (numbers, booleans and strings; undefined ones left out). */
export function metadataBody(properties) {
  const entries = Object.entries(properties).filter(([, v]) => v !== undefined);
  const parts = [amfValue("onMetaData"), new Uint8Array([0x08, 0, 0, 0, 0])];
  new DataView(parts[1].buffer).setUint32(1, entries.length); // ECMA array count
  for (const [key, value] of entries) parts.push(amfString(key), amfValue(value));
  parts.push(new Uint8Array([0, 0, 0x09])); // object end
  return concat(parts);
}

// ------------------------------------------------------------------ bodies

function avcBody(frameType, packetType, compositionMs, data) {
  if (compositionMs < MIN_SI24 || compositionMs > MAX_SI24) {
    throw new RangeError(`composition time ${compositionMs} ms is not an SI24`);
  }
  const out = new Uint8Array(5 + data.length);
  out[0] = (frameType << 4) | VIDEO_AVC;
  out[1] = packetType;
  const cts = compositionMs & 0xffffff;
  out[2] = cts >>> 16;
  out[3] = (cts >>> 8) & 0xff;
  out[4] = cts & 0xff;
  out.set(data, 5);
  return out;
}

/** AVC sequence header: the AVCDecoderConfigurationRecord ("avcC"). */
export function avcSequenceHeader(record) {
  return avcBody(FRAME_KEY, AVC_SEQUENCE_HEADER, 0, toBytes(record));
}

/** AVC coded frame: NAL units with 4-byte lengths (WebCodecs' "avc" format). */
export function avcFrame(keyframe, compositionMs, data) {
  return avcBody(keyframe ? FRAME_KEY : FRAME_INTER, AVC_NALU, compositionMs, toBytes(data));
}

/** AAC sequence header: the AudioSpecificConfig. */
export function aacSequenceHeader(config) {
  return concat([new Uint8Array([(SOUND_AAC << 4) | AAC_FLAGS, AAC_SEQUENCE_HEADER]),
    toBytes(config)]);
}

/** One raw AAC frame. */
export function aacFrame(data) {
  return concat([new Uint8Array([(SOUND_AAC << 4) | AAC_FLAGS, AAC_RAW]), toBytes(data)]);
}

function opusBody(packetType, data) {
  return concat([new Uint8Array([(SOUND_EX_HEADER << 4) | packetType, ...FOURCC_OPUS]),
    toBytes(data)]);
}

/** Enhanced RTMP Opus SequenceStart carrying the OpusHead header. */
export function opusSequenceStart(opusHead) {
  return opusBody(AUDIO_PACKET_SEQUENCE_START, opusHead);
}

/** Enhanced RTMP Opus CodedFrames: one Opus packet. */
export function opusFrame(data) {
  return opusBody(AUDIO_PACKET_CODED_FRAMES, data);
}

const OPUS_HEAD_MAGIC = textEncoder.encode("OpusHead");

/** Whether ``bytes`` start with the "OpusHead" magic signature. */
export function isOpusHead(bytes) {
  if (!bytes || bytes.length < 19) return false;
  return OPUS_HEAD_MAGIC.every((b, i) => bytes[i] === b);
}

/**
 * The RFC 7845 5.1 identification header for mono or stereo (channel
 * mapping family 0): "OpusHead", version 1, channel count, pre-skip
 * (48 kHz samples), input sample rate (Hz), output gain 0, family 0.
 * Multi-byte fields are little-endian.
 */
export function opusHead({ channels, sampleRate, preSkip = 0 }) {
  if (channels !== 1 && channels !== 2) {
    throw new RangeError(`OpusHead family 0 carries 1 or 2 channels, not ${channels}`);
  }
  const out = new Uint8Array(19);
  const view = new DataView(out.buffer);
  out.set(OPUS_HEAD_MAGIC, 0);
  out[8] = 1; // version
  out[9] = channels;
  view.setUint16(10, preSkip, true);
  view.setUint32(12, sampleRate, true);
  view.setInt16(16, 0, true); // output gain
  out[18] = 0; // channel mapping family
  return out;
}

// ------------------------------------------------------------------ the muxer

/** Frames of video lookahead used to derive decode times (see VideoTimeline). */
export const REORDER_DEPTH = 2;
/** How long (ms of media) one track may run ahead waiting for the other
 * before its frames are sent anyway: bounds the interleaving buffer when a
 * track stalls (a muted mic in some browsers, a camera that stops). */
export const MAX_INTERLEAVE_WAIT_MS = 1000;

/**
 * Decode timestamps for video whose chunks arrive in decode order with
 * presentation timestamps only (WebCodecs gives no DTS).
 *
 * Each chunk's DTS is the smallest PTS among it and the next ``depth``
 * chunks, never below the previous DTS: without reordering DTS = PTS and
 * CompositionTime = 0; with B-frames reordered by at most ``depth`` frames,
 * DTS <= PTS and DTS never decreases. A chunk is released once ``depth``
 * more have arrived (or on flush), so reordering costs ``depth`` frames of
 * delay.
 */
export class VideoTimeline {
  constructor(depth = REORDER_DEPTH) {
    this.depth = depth;
    this.pending = [];
    this.lastDts = -Infinity;
  }

  /** Add {pts, ...}; return the items now released, each with ``dts`` set. */
  push(item) {
    this.pending.push(item);
    const out = [];
    while (this.pending.length > this.depth) out.push(this._release());
    return out;
  }

  /** Release everything still held. */
  flush() {
    const out = [];
    while (this.pending.length) out.push(this._release());
    return out;
  }

  _release() {
    let dts = Infinity;
    for (let i = 0; i <= this.depth && i < this.pending.length; i++) {
      dts = Math.min(dts, this.pending[i].pts);
    }
    const item = this.pending.shift();
    dts = Math.max(dts, this.lastDts);
    this.lastDts = dts;
    item.dts = Math.min(dts, item.pts);
    return item;
  }
}

function sameBytes(a, b) {
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * FLV from WebCodecs chunks, interleaved in timestamp order.
 *
 *   const mux = new FlvMuxer({ hasVideo: true, hasAudio: true, onData: send });
 *   mux.addVideo({ timestampUs, keyframe, data, description });  // per chunk
 *   mux.addAudio({ timestampUs, data, codec: "opus", description });
 *   mux.flush();  // at the end
 *
 * Timestamps are capture times in microseconds (VideoFrame/AudioData
 * ``timestamp``, which the encoders keep), written as ms relative to the
 * earliest one. Nothing is written until every announced track has given
 * its decoder configuration (and video its first keyframe); then the FLV
 * header, onMetaData and both sequence headers go first, and a changed
 * configuration (a new resolution) sends a new sequence header before the
 * next frame. Each write is handed to ``onData`` as one Uint8Array.
 */
export class FlvMuxer {
  constructor({ hasVideo, hasAudio, onData, metadata = {}, reorderDepth = REORDER_DEPTH,
    maxWaitMs = MAX_INTERLEAVE_WAIT_MS }) {
    if (!hasVideo && !hasAudio) throw new TypeError("FlvMuxer needs a track");
    this.hasVideo = hasVideo;
    this.hasAudio = hasAudio;
    this.onData = onData;
    this.metadata = metadata;
    this.maxWaitUs = maxWaitMs * 1000;
    this.timeline = new VideoTimeline(reorderDepth);
    // Capture time (us) written as 0; fixed when the stream starts.
    this.originUs = null;
    this.started = false;
    // Tags waiting for interleaving, per track, in DTS order:
    // {dtsUs, ptsUs, type, config, keyframe, data}.
    this.queues = { video: [], audio: [] };
    // Newest DTS (us) seen per track: how far each track is known to reach.
    this.reachUs = { video: -Infinity, audio: -Infinity };
    this.lastWrittenMs = 0;
    this.videoConfig = null;
    this.audioConfig = null;
    this.sentVideoConfig = null;
    this.sentAudioConfig = null;
    /** Frames and bytes handed to onData; timestamps raised to keep order. */
    this.stats = { videoFrames: 0, audioFrames: 0, bytes: 0, clamped: 0 };
  }

  /**
   * An encoded video chunk: ``timestampUs`` (its PTS), ``keyframe``,
   * ``data`` (AVC NAL units with 4-byte lengths) and, when the encoder gave
   * one, ``description`` (the AVCDecoderConfigurationRecord).
   */
  addVideo({ timestampUs, keyframe, data, description }) {
    if (!this.hasVideo) throw new TypeError("this muxer has no video track");
    if (description) this.videoConfig = toBytes(description).slice();
    const item = { pts: timestampUs, keyframe: Boolean(keyframe), data: toBytes(data).slice(),
      config: this.videoConfig };
    for (const ready of this.timeline.push(item)) this._queueVideo(ready);
    this._drain(false);
  }

  /**
   * An encoded audio chunk: ``timestampUs``, ``data``, ``codec`` ("aac" or
   * "opus") and, when the encoder gave one, ``description`` (AAC: the
   * AudioSpecificConfig; Opus: the OpusHead). ``fallbackConfig`` stands in
   * for a missing one (an OpusHead built by :func:`opusHead`).
   */
  addAudio({ timestampUs, data, codec, description, fallbackConfig }) {
    if (!this.hasAudio) throw new TypeError("this muxer has no audio track");
    if (codec !== "aac" && codec !== "opus") throw new TypeError(`audio codec ${codec}`);
    const described = description ? toBytes(description) : null;
    if (described && described.length && (codec !== "opus" || isOpusHead(described))) {
      this.audioConfig = { codec, bytes: described.slice() };
    } else if ((!this.audioConfig || this.audioConfig.codec !== codec) && fallbackConfig) {
      this.audioConfig = { codec, bytes: toBytes(fallbackConfig).slice() };
    }
    this.queues.audio.push({ dtsUs: timestampUs, ptsUs: timestampUs, type: TAG_AUDIO,
      config: this.audioConfig, codec, data: toBytes(data).slice() });
    this.reachUs.audio = Math.max(this.reachUs.audio, timestampUs);
    this._drain(false);
  }

  _queueVideo(item) {
    this.queues.video.push({ dtsUs: item.dts, ptsUs: item.pts, type: TAG_VIDEO,
      config: item.config, keyframe: item.keyframe, data: item.data });
    this.reachUs.video = Math.max(this.reachUs.video, item.dts);
  }

  /** Write out everything still held (the end of the stream). */
  flush() {
    for (const ready of this.timeline.flush()) this._queueVideo(ready);
    this._drain(true);
  }

  _ready() {
    return (!this.hasVideo || this.queues.video.some((t) => t.config && t.keyframe))
      && (!this.hasAudio || this.queues.audio.some((t) => t.config));
  }

  _start() {
    // Frames from before their track's configuration (or, for video, its
    // first keyframe) cannot be decoded.
    const video = this.queues.video;
    while (video.length && !(video[0].config && video[0].keyframe)) video.shift();
    const audio = this.queues.audio;
    while (audio.length && !audio[0].config) audio.shift();
    const firsts = [video[0], audio[0]].filter(Boolean);
    this.originUs = Math.min(...firsts.map((t) => t.dtsUs));
    const meta = { ...this.metadata, duration: 0 };
    if (this.hasVideo) meta.videocodecid = AVC_CODEC_ID;
    if (this.hasAudio) {
      meta.audiocodecid = audio[0].config.codec === "aac" ? AAC_CODEC_ID : OPUS_CODEC_ID;
    }
    const parts = [flvHeader({ hasAudio: this.hasAudio, hasVideo: this.hasVideo }),
      flvTag(TAG_SCRIPT, 0, metadataBody(meta))];
    if (this.hasVideo) {
      this.sentVideoConfig = video[0].config;
      parts.push(flvTag(TAG_VIDEO, 0, avcSequenceHeader(video[0].config)));
    }
    if (this.hasAudio) {
      this.sentAudioConfig = audio[0].config;
      parts.push(flvTag(TAG_AUDIO, 0, this._audioSequenceHeader(audio[0].config)));
    }
    this.started = true;
    this._emit(concat(parts));
  }

  _audioSequenceHeader(config) {
    return config.codec === "aac" ? aacSequenceHeader(config.bytes)
      : opusSequenceStart(config.bytes);
  }

  _drain(final) {
    if (!this.started) {
      if (!this._ready()) {
        if (final) {
          this.queues.video.length = 0;
          this.queues.audio.length = 0;
        }
        return;
      }
      this._start();
    }
    const { video, audio } = this.queues;
    for (;;) {
      let next = null;
      if (video.length && audio.length) {
        next = video[0].dtsUs <= audio[0].dtsUs ? video : audio;
      } else if (video.length || audio.length) {
        const [queue, kind, other, otherTrack] = video.length
          ? [video, "video", "audio", this.hasAudio] : [audio, "audio", "video", this.hasVideo];
        // Wait for the other track unless it is known to reach this far, or
        // this one has run too far ahead of it, or the stream ends.
        if (final || !otherTrack || queue[0].dtsUs <= this.reachUs[other]
            || this.reachUs[kind] - queue[0].dtsUs > this.maxWaitUs) {
          next = queue;
        }
      }
      if (!next) return;
      this._write(next.shift());
    }
  }

  _write(tag) {
    let dts = Math.round((tag.dtsUs - this.originUs) / 1000);
    const pts = Math.round((tag.ptsUs - this.originUs) / 1000);
    if (dts < this.lastWrittenMs) {
      // Arrived after the other track had to be sent past it: keep the
      // stream's timestamps non-decreasing.
      this.stats.clamped += 1;
      dts = this.lastWrittenMs;
    }
    this.lastWrittenMs = dts;
    if (tag.type === TAG_VIDEO) {
      if (!sameBytes(tag.config, this.sentVideoConfig)) {
        this.sentVideoConfig = tag.config;
        this._emit(flvTag(TAG_VIDEO, dts, avcSequenceHeader(tag.config)));
      }
      this.stats.videoFrames += 1;
      this._emit(flvTag(TAG_VIDEO, dts, avcFrame(tag.keyframe, Math.max(0, pts - dts), tag.data)));
      return;
    }
    if (tag.config !== this.sentAudioConfig
        && !(tag.config.codec === this.sentAudioConfig.codec
          && sameBytes(tag.config.bytes, this.sentAudioConfig.bytes))) {
      this.sentAudioConfig = tag.config;
      this._emit(flvTag(TAG_AUDIO, dts, this._audioSequenceHeader(tag.config)));
    }
    this.stats.audioFrames += 1;
    this._emit(flvTag(TAG_AUDIO, dts,
      tag.codec === "aac" ? aacFrame(tag.data) : opusFrame(tag.data)));
  }

  _emit(bytes) {
    this.stats.bytes += bytes.length;
    this.onData(bytes);
  }
}
