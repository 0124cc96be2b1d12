"""twistd dropins for rtmpd. twistd imports this on every run, so it only
names the tap modules; ServiceMaker imports them when one is used."""

from twisted.application.service import ServiceMaker

rtmpd = ServiceMaker(
    "rtmpd",
    "rtmpd.tap.rtmpd",
    "Live streaming: RTMP, HTTP-FLV and WS-FLV publish/play, GOP cache, HLS/FLV/MP4 recording.",
    "rtmpd",
)
flvgateway = ServiceMaker(
    "flvgateway",
    "rtmpd.tap.flvgateway",
    "Edge: pulls HTTP-FLV streams from an origin once and fans them out over HTTP-FLV and WS-FLV.",
    "flvgateway",
)
filegateway = ServiceMaker(
    "filegateway",
    "rtmpd.tap.filegateway",
    "Static file server for recordings: Range, HEAD, CORS, MIME types.",
    "filegateway",
)
