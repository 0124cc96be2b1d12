// Reads what Media Source Extensions need from an fMP4 init segment: each
// track's handler and the RFC 6381 codec string of its sample entry, made
// from the decoder configuration boxes (avcC, hvcC, esds, dOps, av1C, vpcC).

/** The boxes of ``view`` between ``start`` and ``end``: {type, start, body, end}. */
function* boxes(view, start = 0, end = view.byteLength) {
  let offset = start;
  while (offset + 8 <= end) {
    let size = view.getUint32(offset);
    const type = fourcc(view, offset + 4);
    let body = offset + 8;
    if (size === 1) {
      if (offset + 16 > end) return;
      size = Number(view.getBigUint64(offset + 8));
      body = offset + 16;
    } else if (size === 0) {
      size = end - offset;
    }
    if (size < body - offset || offset + size > end) return; // damaged: stop here
    yield { type, start: offset, body, end: offset + size };
    offset += size;
  }
}

function fourcc(view, offset) {
  return String.fromCharCode(
    view.getUint8(offset),
    view.getUint8(offset + 1),
    view.getUint8(offset + 2),
    view.getUint8(offset + 3),
  );
}

function child(view, box, type, skip = 0) {
  for (const inner of boxes(view, box.body + skip, box.end)) {
    if (inner.type === type) return inner;
  }
  return null;
}

function hex2(value) {
  return value.toString(16).padStart(2, "0");
}

/** avc1.PPCCLL from an AVCDecoderConfigurationRecord. */
function avcCodec(view, entry, avcC) {
  const at = avcC.body;
  return `${entry}.${hex2(view.getUint8(at + 1))}${hex2(view.getUint8(at + 2))}${hex2(view.getUint8(at + 3))}`;
}

/** hvc1.P.C.TL.B from an HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 E.3). */
function hevcCodec(view, entry, hvcC) {
  const at = hvcC.body;
  const first = view.getUint8(at + 1);
  const space = ["", "A", "B", "C"][first >> 6];
  const tier = first & 0x20 ? "H" : "L";
  const profile = first & 0x1f;
  let flags = view.getUint32(at + 2);
  let reversed = 0;
  for (let i = 0; i < 32; i += 1) {
    reversed = (reversed << 1) | (flags & 1);
    flags >>>= 1;
  }
  const constraints = [];
  for (let i = 0; i < 6; i += 1) constraints.push(view.getUint8(at + 6 + i));
  while (constraints.length > 0 && constraints[constraints.length - 1] === 0) constraints.pop();
  const level = view.getUint8(at + 12);
  const parts = [entry, `${space}${profile}`, (reversed >>> 0).toString(16), `${tier}${level}`];
  return [...parts, ...constraints.map((b) => b.toString(16).toUpperCase())].join(".");
}

/** An MPEG-4 descriptor's tag, body offset and end (ISO/IEC 14496-1 8.3.3). */
function descriptor(view, offset, end) {
  if (offset + 2 > end) return null;
  const tag = view.getUint8(offset);
  let size = 0;
  let at = offset + 1;
  for (let i = 0; i < 4 && at < end; i += 1) {
    const byte = view.getUint8(at);
    at += 1;
    size = (size << 7) | (byte & 0x7f);
    if (!(byte & 0x80)) break;
  }
  return { tag, body: at, end: Math.min(at + size, end) };
}

/** mp4a.OO[.A] from an esds: object type and the AAC audio object type. */
function mp4aCodec(view, esds) {
  const es = descriptor(view, esds.body + 4, esds.end);
  if (es === null || es.tag !== 0x03) return "mp4a.40.2";
  const flags = view.getUint8(es.body + 2);
  let at = es.body + 3;
  if (flags & 0x80) at += 2;
  if (flags & 0x40) at += 1 + view.getUint8(at);
  if (flags & 0x20) at += 2;
  const config = descriptor(view, at, es.end);
  if (config === null || config.tag !== 0x04) return "mp4a.40.2";
  const objectType = view.getUint8(config.body);
  if (objectType !== 0x40) return `mp4a.${hex2(objectType)}`;
  const specific = descriptor(view, config.body + 13, config.end);
  if (specific === null || specific.tag !== 0x05 || specific.body >= specific.end) {
    return "mp4a.40.2";
  }
  let audioObjectType = view.getUint8(specific.body) >> 3;
  if (audioObjectType === 31 && specific.body + 1 < specific.end) {
    audioObjectType = 32 + (((view.getUint8(specific.body) & 7) << 3) | (view.getUint8(specific.body + 1) >> 5));
  }
  return `mp4a.40.${audioObjectType}`;
}

/** av01.P.LLT.DD from an AV1CodecConfigurationRecord. */
function av1Codec(view, av1C) {
  const a = view.getUint8(av1C.body + 1);
  const b = view.getUint8(av1C.body + 2);
  const profile = a >> 5;
  const level = String(a & 0x1f).padStart(2, "0");
  const tier = b & 0x80 ? "H" : "M";
  const depth = b & 0x40 ? (profile === 2 && b & 0x20 ? 12 : 10) : 8;
  return `av01.${profile}.${level}${tier}.${String(depth).padStart(2, "0")}`;
}

/** vp09.PP.LL.DD from a VPCodecConfigurationRecord (a FullBox). */
function vp9Codec(view, vpcC) {
  const at = vpcC.body + 4;
  const depth = view.getUint8(at + 2) >> 4;
  return `vp09.${hex2(view.getUint8(at)).padStart(2, "0")}.${String(view.getUint8(at + 1)).padStart(2, "0")}.${String(depth).padStart(2, "0")}`;
}

/** Bytes from a sample entry's start to its child boxes, by handler. */
const ENTRY_FIELDS = { vide: 8 + 70, soun: 8 + 20 };

function sampleEntryCodec(view, handler, entry) {
  const skip = ENTRY_FIELDS[handler] ?? 8;
  const find = (type) => child(view, entry, type, skip);
  switch (entry.type) {
    case "avc1":
    case "avc3": {
      const avcC = find("avcC");
      return avcC ? avcCodec(view, entry.type, avcC) : entry.type;
    }
    case "hvc1":
    case "hev1": {
      const hvcC = find("hvcC");
      return hvcC ? hevcCodec(view, entry.type, hvcC) : entry.type;
    }
    case "av01": {
      const av1C = find("av1C");
      return av1C ? av1Codec(view, av1C) : "av01";
    }
    case "vp09": {
      const vpcC = find("vpcC");
      return vpcC ? vp9Codec(view, vpcC) : "vp09";
    }
    case "mp4a": {
      const esds = find("esds");
      return esds ? mp4aCodec(view, esds) : "mp4a.40.2";
    }
    case "Opus":
      return "opus";
    case "fLaC":
      return "flac";
    case "ac-3":
      return "ac-3";
    case "ec-3":
      return "ec-3";
    default:
      return entry.type;
  }
}

/** The tracks of an init segment (an ArrayBuffer): ``[{id, handler,
 * codec}]`` with handler "vide" or "soun" and codec an RFC 6381 string.
 * Throws when there is no moov with a track. */
export function tracksOfInit(buffer) {
  const view = new DataView(buffer);
  const moov = [...boxes(view)].find((box) => box.type === "moov");
  if (moov === undefined) throw new Error("the init segment has no moov box");
  const tracks = [];
  for (const trak of boxes(view, moov.body, moov.end)) {
    if (trak.type !== "trak") continue;
    const tkhd = child(view, trak, "tkhd");
    const mdia = child(view, trak, "mdia");
    const hdlr = mdia && child(view, mdia, "hdlr");
    const minf = mdia && child(view, mdia, "minf");
    const stbl = minf && child(view, minf, "stbl");
    const stsd = stbl && child(view, stbl, "stsd");
    if (!tkhd || !hdlr || !stsd) continue;
    const version = view.getUint8(tkhd.body);
    const id = view.getUint32(tkhd.body + (version === 1 ? 20 : 12));
    const handler = fourcc(view, hdlr.body + 8);
    const entry = boxes(view, stsd.body + 8, stsd.end).next().value;
    if (entry === undefined) continue;
    tracks.push({ id, handler, codec: sampleEntryCodec(view, handler, entry) });
  }
  if (tracks.length === 0) throw new Error("the init segment has no track");
  return tracks;
}

/** The MIME type with codecs for a SourceBuffer of these tracks. */
export function mimeOfTracks(tracks) {
  const codecs = tracks.map((track) => track.codec).join(",");
  const video = tracks.some((track) => track.handler === "vide");
  return `${video ? "video" : "audio"}/mp4; codecs="${codecs}"`;
}
