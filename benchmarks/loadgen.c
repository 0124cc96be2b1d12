/*
 * loadgen.c - single-process epoll load generator for live FLV-family servers.
 *
 * Simulates N viewers of one live stream over RTMP, HTTP-FLV or WS-FLV from one
 * thread, with bounded memory per viewer: every socket is read into one shared
 * buffer and parsed incrementally by small per-viewer state machines; media
 * payloads are discarded after their first few bytes have been inspected.
 *
 * Per viewer: bytes (total and in the measurement window), time to first byte,
 * first media, first video keyframe, stalls (> 1 s between media messages) and
 * end-to-end latency read from an H.264 SEI (user_data_unregistered, UUID below)
 * that benchmarks/publish.py puts at the start of every video frame, holding the
 * wall-clock send time in microseconds as 16 hex digits.
 *
 * With --hold-s S each viewer leaves after S seconds and a new one joins in its
 * place (churn): N stay connected, about N / S join per second, and every join
 * is judged on its own (first keyframe, media over its hold, how it ended).
 *
 * Build: gcc -O2 -o bin/loadgen loadgen.c -lm   (benchmarks/build.sh)
 * Usage: loadgen --help
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <linux/errqueue.h>
#include <linux/net_tstamp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* The SEI UUID shared with publish.py. */
static const uint8_t SEI_UUID[16] = {0x72, 0x74, 0x6d, 0x70, 0x64, 0x2d, 0x62, 0x65,
                                     0x6e, 0x63, 0x68, 0x2d, 0x74, 0x73, 0x31, 0x21};
/* "rtmpd-bench-ts1!" */

enum { P_RTMP, P_HTTP, P_WS };
enum { V_IDLE, V_CONNECTING, V_HANDSHAKE, V_STREAM, V_DONE };

#define CS_SLOTS 8
#define CS_CAP 128
#define FLV_CAP 64
#define HS_MAX 8192

typedef struct {
    uint32_t csid, ts, tsdelta, len, msid, got;
    uint8_t type, ext, used;
    uint8_t cap[CS_CAP];
} cs_t;

typedef struct {
    uint64_t total_in, last_ack;
    uint32_t in_chunk, win_ack, stream_id, chunk_rem;
    uint8_t hbuf[20];
    uint8_t hhave, hneed, in_payload, phase;
    cs_t *cur;
    cs_t cs[CS_SLOTS];
} rtmp_t;

typedef struct {
    uint8_t st, hhave, hneed, tagtype;
    uint8_t hbuf[16];
    uint32_t body_len, body_got, skip;
    uint8_t cap[FLV_CAP];
} flv_t;

typedef struct {
    uint8_t chunked, cst, ndig;
    uint64_t crem;
} http_t;

typedef struct {
    uint8_t st, hhave, hneed, opcode, masked, ctl_len;
    uint8_t hbuf[14];
    uint8_t mask[4];
    uint64_t rem;
    uint32_t mpos;
    uint8_t ctl[126];
    char key[25];
} ws_t;

typedef struct viewer {
    int fd;
    uint8_t state, ever_media, got_key, closed_by_peer;
    uint8_t probe, bulk, key_begun; /* key_begun: the first keyframe's first bytes arrived. probe: always read promptly, latency sampled; bulk: read in batched passes */
    const char *fail;
    double t_join, t_first_byte, t_first_media, t_first_key_start, t_first_key, t_last_media;
    uint64_t bytes, bytes_win, media_bytes, media_bytes_win;
    uint64_t media_bytes_tail; /* --hold-s: media from HOLD_SKIP s after the join on */
    uint32_t stalls, stalls_win, lat_samples;
    uint8_t *hs;
    uint32_t hs_len;
    uint8_t *outq;
    uint32_t outq_len, outq_off;
    rtmp_t *r;   /* RTMP only */
    flv_t flv;   /* HTTP/WS */
    http_t http;
    ws_t ws;
} viewer_t;

/* ---- options ---- */
static int opt_proto = P_RTMP;
static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static const char *opt_app = "live";
static const char *opt_stream = "bench";
static const char *opt_path = NULL;
static int opt_viewers = 100;
static double opt_rate = 2000;
static double opt_duration = 30;
static double opt_window = 12;
static const char *opt_json = NULL;
static double opt_expect_bps = 0;
static const char *opt_manifest = NULL;
static int opt_cpu = -1;
static int opt_progress = 0;
static double opt_health = 0.9;
static int opt_quiet = 0;
static double opt_batch_ms = -1; /* <0: adaptive */
static int opt_probes = 100;
static double opt_cpu_target = 60; /* adaptive batching keeps loadgen CPU under this % */
static double opt_hold = 0;        /* >0: churn, each viewer is replaced after this many s */
static int opt_src_addrs = 1;      /* viewers connect from 127.0.0.1 .. 127.0.0.N (loopback servers) */

/* ---- globals ---- */
static viewer_t *V;
static int ep_main, ep_bulk; /* prompt sockets (setup, probes) / batched sockets */
static int bulk_in_main;
static char bulk_marker;
static double batch_ms;                      /* current batch period */
static double batch_ms_win_sum, batch_ms_max; /* time-weighted in the window */
static struct sockaddr_in srv_addr;
static double T0;           /* monotonic start */
static double now_s;        /* monotonic seconds since T0 (updated per event batch) */
static int64_t now_real_us; /* CLOCK_REALTIME */
static double win_start, win_end;
static int in_win;
static uint8_t rbuf[1 << 17];
static volatile sig_atomic_t stop_flag;

/* latency histogram: 0.1 ms bins up to 60 s */
#define LAT_BINS 600000
static uint32_t *lat_hist;
static uint64_t lat_count, lat_neg;
static uint64_t sei_missing;
static uint64_t n_recv, n_recv_win, n_wait, n_wait_win;

#define TVS(t) ((t).tv_sec + (t).tv_usec * 1e-6)
static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static int64_t real_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
static void update_now(void) {
    now_s = mono() - T0;
    now_real_us = real_us();
    in_win = now_s >= win_start && now_s < win_end;
}

static uint32_t be16(const uint8_t *p) { return (p[0] << 8) | p[1]; }
static uint32_t be24(const uint8_t *p) { return (p[0] << 16) | (p[1] << 8) | p[2]; }
static uint32_t be32(const uint8_t *p) { return ((uint32_t)p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]; }

/* ---------------- SHA-1 + base64 (for the WebSocket handshake) ---------------- */
typedef struct { uint32_t h[5]; uint64_t len; uint8_t buf[64]; uint32_t n; } sha1_t;
#define ROL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))
static void sha1_block(sha1_t *s, const uint8_t *p) {
    uint32_t w[80], a, b, c, d, e, t;
    for (int i = 0; i < 16; i++) w[i] = be32(p + 4 * i);
    for (int i = 16; i < 80; i++) w[i] = ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3]; e = s->h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
        else { f = b ^ c ^ d; k = 0xCA62C1D6; }
        t = ROL(a, 5) + f + e + k + w[i];
        e = d; d = c; c = ROL(b, 30); b = a; a = t;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e;
}
static void sha1(const uint8_t *data, size_t len, uint8_t out[20]) {
    sha1_t s = {{0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0}, 0, {0}, 0};
    uint8_t pad[128];
    size_t i = 0;
    for (; i + 64 <= len; i += 64) sha1_block(&s, data + i);
    size_t rem = len - i;
    memset(pad, 0, sizeof pad);
    memcpy(pad, data + i, rem);
    pad[rem] = 0x80;
    size_t tot = rem + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int j = 0; j < 8; j++) pad[tot - 1 - j] = (uint8_t)(bits >> (8 * j));
    sha1_block(&s, pad);
    if (tot == 128) sha1_block(&s, pad + 64);
    for (int j = 0; j < 5; j++) {
        out[4 * j] = s.h[j] >> 24; out[4 * j + 1] = s.h[j] >> 16;
        out[4 * j + 2] = s.h[j] >> 8; out[4 * j + 3] = s.h[j];
    }
}
static void b64(const uint8_t *in, size_t n, char *out) {
    static const char T[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = in[i] << 16 | (i + 1 < n ? in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = T[(v >> 18) & 63];
        out[o++] = T[(v >> 12) & 63];
        out[o++] = i + 1 < n ? T[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? T[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---------------- viewer lifecycle ---------------- */
static int n_started, n_connected, n_alive;
static uint64_t total_bytes_all, total_bytes_win;

/* --hold-s (churn). A join's first HOLD_SKIP s (connect, answer, GOP burst) are not
   counted for its health: a held join is healthy when its media in the rest of its
   hold is >= --health x the stream's bitrate. */
#define HOLD_SKIP 1.0
static int *hold_q;            /* slots in join order (= expiry order: one hold for all) */
static int hold_head, hold_len;
static uint64_t j_ended, j_done, j_failed, j_dropped, j_stalls, j_stalls_win; /* whole run */
static uint64_t jw_started, jw_ended, jw_done, jw_failed, jw_dropped;   /* ended in the window */
static double *jw_key, *jw_key_start, *jw_bps; /* per held join ended in the window: first keyframe end and start ms, tail bit/s */
static size_t jw_nkey, jw_nbps, jw_cap;
static double j_held_sum, jw_held_sum;
static int alive_min_win = -1;
static double alive_win_sum;
static const char *reasons[32];
static int rcount[32], nreasons;

static void count_reason(const char *why) {
    int j;
    for (j = 0; j < nreasons; j++) if (!strcmp(reasons[j], why)) break;
    if (j == nreasons && nreasons < 32) { reasons[nreasons] = why; rcount[nreasons++] = 0; }
    if (j < nreasons) rcount[j]++;
}

static void viewer_close(viewer_t *v, const char *why) {
    if (v->state == V_DONE || v->state == V_IDLE) return;
    if (why && !v->fail) v->fail = why;
    if (v->fd >= 0) {
        epoll_ctl(v->bulk ? ep_bulk : ep_main, EPOLL_CTL_DEL, v->fd, NULL);
        struct linger lg = {1, 0}; /* RST: leaves no TIME_WAIT behind */
        setsockopt(v->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(v->fd);
        v->fd = -1;
    }
    if (v->state >= V_HANDSHAKE) n_alive--;
    v->state = V_DONE;
    free(v->hs); v->hs = NULL;
    free(v->outq); v->outq = NULL;
    free(v->r); v->r = NULL;
}

static void send_bytes(viewer_t *v, const void *buf, size_t len) {
    if (v->state == V_DONE) return;
    if (!v->outq) {
        ssize_t n = send(v->fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) { viewer_close(v, "send error"); return; }
            n = 0;
        }
        if ((size_t)n == len) return;
        v->outq = malloc(len - n);
        memcpy(v->outq, (const uint8_t *)buf + n, len - n);
        v->outq_len = len - n;
        v->outq_off = 0;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = v};
        epoll_ctl(v->bulk ? ep_bulk : ep_main, EPOLL_CTL_MOD, v->fd, &ev);
    } else {
        uint32_t pending = v->outq_len - v->outq_off;
        uint8_t *q = malloc(pending + len);
        memcpy(q, v->outq + v->outq_off, pending);
        memcpy(q + pending, buf, len);
        free(v->outq);
        v->outq = q; v->outq_off = 0; v->outq_len = pending + len;
    }
}

static void flush_out(viewer_t *v) {
    if (!v->outq) return;
    ssize_t n = send(v->fd, v->outq + v->outq_off, v->outq_len - v->outq_off, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) viewer_close(v, "send error");
        return;
    }
    v->outq_off += n;
    if (v->outq_off == v->outq_len) {
        free(v->outq); v->outq = NULL;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = v};
        epoll_ctl(v->bulk ? ep_bulk : ep_main, EPOLL_CTL_MOD, v->fd, &ev);
    }
}

/* ---------------- media accounting (all protocols) ---------------- */
static int hexval(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Whether a video body beginning with cap[0..caplen) is a coded keyframe (not a sequence header). */
static int is_coded_keyframe(const uint8_t *cap, uint32_t caplen) {
    if (caplen < 2) return 0;
    uint8_t b0 = cap[0];
    if (b0 & 0x80) { /* Enhanced RTMP */
        int pt = b0 & 15;
        return ((b0 >> 4) & 7) == 1 && (pt == 1 || pt == 3);
    }
    return (b0 >> 4) == 1 && ((b0 & 15) == 7 ? cap[1] == 1 : 1);
}

/* A video body's first bytes arrived (got of len captured in cap): date the start of the first
 * keyframe, the moment a player starts receiving the frame it will decode first. */
static void on_video_begin(viewer_t *v, const uint8_t *cap, uint32_t got, uint32_t len) {
    if (v->key_begun || v->got_key || got < (len < 2 ? len : 2)) return;
    if (is_coded_keyframe(cap, got)) {
        v->key_begun = 1;
        v->t_first_key_start = now_s;
    }
}

/* type: 8 audio, 9 video. cap: first caplen bytes of the body. */
static void on_media(viewer_t *v, int type, const uint8_t *cap, uint32_t caplen, uint32_t len) {
    v->media_bytes += len;
    if (opt_hold > 0 && now_s - v->t_join >= HOLD_SKIP) v->media_bytes_tail += len;
    if (in_win) v->media_bytes_win += len;
    if (!v->ever_media) {
        v->ever_media = 1;
        v->t_first_media = now_s;
    } else if (now_s - v->t_last_media > 1.0) {
        v->stalls++;
        if (in_win) v->stalls_win++;
    }
    v->t_last_media = now_s;
    if (type != 9 || caplen < 2) return;
    uint8_t b0 = cap[0];
    int frame_type, coded = 0, off = 0;
    if (b0 & 0x80) { /* Enhanced RTMP */
        frame_type = (b0 >> 4) & 7;
        int pt = b0 & 15;
        coded = (pt == 1 || pt == 3);
        off = pt == 1 ? 8 : 5; /* fourcc (+cts for CodedFrames) */
        if (memcmp(cap + 1, "avc1", 4) != 0) off = -1;
    } else {
        frame_type = b0 >> 4;
        coded = (b0 & 15) == 7 ? cap[1] == 1 : ((b0 & 15) != 7);
        off = (b0 & 15) == 7 ? 5 : -1;
    }
    if (frame_type == 1 && coded && !v->got_key) {
        v->got_key = 1;
        v->t_first_key = now_s;
        if (!v->key_begun) v->t_first_key_start = now_s;
    }
    if (!coded || off < 0) return;
    /* first NAL: [len 4][nal hdr 0x06][payload type 5][size 32][uuid 16][16 hex] */
    const uint8_t *p = cap + off;
    if (caplen < (uint32_t)off + 4 + 3 + 16 + 16 || (p[4] & 0x1f) != 6 || p[5] != 5 || p[6] != 32 ||
        memcmp(p + 7, SEI_UUID, 16) != 0) {
        if (in_win) sei_missing++;
        return;
    }
    int64_t ts = 0;
    for (int i = 0; i < 16; i++) {
        int h = hexval(p[23 + i]);
        if (h < 0) return;
        ts = ts * 16 + h;
    }
    if (!in_win || !v->probe) return;
    int64_t lat = now_real_us - ts;
    v->lat_samples++;
    lat_count++;
    if (lat < 0) { lat_neg++; lat = 0; }
    uint64_t bin = lat / 100;
    if (bin >= LAT_BINS) bin = LAT_BINS - 1;
    lat_hist[bin]++;
}

/* ---------------- FLV tag parser (HTTP-FLV, WS-FLV) ---------------- */
enum { F_HDR, F_SKIP, F_PREV0, F_TAGHDR, F_BODY, F_PREV };

static void flv_feed(viewer_t *v, const uint8_t *p, size_t n) {
    flv_t *f = &v->flv;
    while (n > 0 && v->state != V_DONE) {
        switch (f->st) {
        case F_HDR: case F_PREV0: case F_TAGHDR: case F_PREV: {
            size_t k = f->hneed - f->hhave;
            if (k > n) k = n;
            memcpy(f->hbuf + f->hhave, p, k);
            f->hhave += k; p += k; n -= k;
            if (f->hhave < f->hneed) return;
            f->hhave = 0;
            if (f->st == F_HDR) {
                if (memcmp(f->hbuf, "FLV", 3) != 0) { viewer_close(v, "bad FLV header"); return; }
                uint32_t off = be32(f->hbuf + 5);
                f->skip = off > 9 ? off - 9 : 0;
                f->st = f->skip ? F_SKIP : F_PREV0;
                f->hneed = 4;
            } else if (f->st == F_PREV0 || f->st == F_PREV) {
                f->st = F_TAGHDR; f->hneed = 11;
            } else { /* tag header */
                f->tagtype = f->hbuf[0] & 0x1f;
                f->body_len = be24(f->hbuf + 1);
                f->body_got = 0;
                f->st = F_BODY;
                if (f->body_len == 0) goto body_done;
            }
            break;
        }
        case F_SKIP: {
            size_t k = f->skip < n ? f->skip : n;
            f->skip -= k; p += k; n -= k;
            if (!f->skip) f->st = F_PREV0;
            break;
        }
        case F_BODY: {
            size_t k = f->body_len - f->body_got;
            if (k > n) k = n;
            if (f->body_got < FLV_CAP) {
                size_t c = FLV_CAP - f->body_got;
                if (c > k) c = k;
                memcpy(f->cap + f->body_got, p, c);
            }
            f->body_got += k; p += k; n -= k;
            if (f->tagtype == 9 && f->body_got - k < 2)
                on_video_begin(v, f->cap, f->body_got < FLV_CAP ? f->body_got : FLV_CAP, f->body_len);
            if (f->body_got < f->body_len) return;
        body_done:
            if (f->tagtype == 8 || f->tagtype == 9)
                on_media(v, f->tagtype, f->cap, f->body_len < FLV_CAP ? f->body_len : FLV_CAP, f->body_len);
            f->st = F_PREV; f->hneed = 4;
            break;
        }
        }
    }
}

/* ---------------- HTTP response header (HTTP-FLV and WS upgrade) ---------------- */
/* Returns offset of body start within p (bytes consumed), or -1 if more needed, -2 on error. */
static long http_header_feed(viewer_t *v, const uint8_t *p, size_t n, int *status) {
    if (!v->hs) { v->hs = malloc(HS_MAX + 1); v->hs_len = 0; }
    size_t k = n;
    if (v->hs_len + k > HS_MAX) k = HS_MAX - v->hs_len;
    uint32_t old = v->hs_len;
    memcpy(v->hs + v->hs_len, p, k);
    v->hs_len += k;
    v->hs[v->hs_len] = 0;
    char *e = strstr((char *)v->hs, "\r\n\r\n");
    if (!e) {
        if (v->hs_len >= HS_MAX) return -2;
        return -1;
    }
    long hdr_len = (e - (char *)v->hs) + 4;
    *status = 0;
    if (sscanf((char *)v->hs, "HTTP/1.%*d %d", status) != 1) return -2;
    return hdr_len - old; /* bytes of p that belonged to the header */
}

static const char *hdr_value(const char *hs, const char *name) {
    size_t nl = strlen(name);
    for (const char *l = strstr(hs, "\r\n"); l; l = strstr(l + 2, "\r\n")) {
        const char *s = l + 2;
        if (strncasecmp(s, name, nl) == 0 && s[nl] == ':') {
            s += nl + 1;
            while (*s == ' ' || *s == '\t') s++;
            return s;
        }
    }
    return NULL;
}

/* chunked-transfer decoding -> FLV */
enum { C_SIZE, C_EXT, C_DATA, C_CRLF, C_END };
static void http_body_feed(viewer_t *v, const uint8_t *p, size_t n) {
    http_t *h = &v->http;
    if (!h->chunked) { flv_feed(v, p, n); return; }
    while (n > 0 && v->state != V_DONE) {
        switch (h->cst) {
        case C_SIZE: {
            uint8_t c = *p++; n--;
            int d = hexval(c);
            if (d >= 0) { h->crem = h->crem * 16 + d; h->ndig++; }
            else if (c == ';' || c == ' ') h->cst = C_EXT;
            else if (c == '\r') ;
            else if (c == '\n') {
                if (!h->ndig) { viewer_close(v, "bad chunk size"); return; }
                h->cst = h->crem ? C_DATA : C_END;
                if (!h->crem) { viewer_close(v, "stream ended (last chunk)"); return; }
            } else { viewer_close(v, "bad chunk size"); return; }
            break;
        }
        case C_EXT:
            if (*p == '\n') { h->cst = h->crem ? C_DATA : C_END; if (!h->crem) { viewer_close(v, "stream ended (last chunk)"); return; } }
            p++; n--;
            break;
        case C_DATA: {
            size_t k = h->crem < n ? h->crem : n;
            flv_feed(v, p, k);
            h->crem -= k; p += k; n -= k;
            if (!h->crem) h->cst = C_CRLF;
            break;
        }
        case C_CRLF:
            if (*p == '\n') { h->cst = C_SIZE; h->crem = 0; h->ndig = 0; }
            p++; n--;
            break;
        default:
            return;
        }
    }
}

static void http_feed(viewer_t *v, const uint8_t *p, size_t n) {
    if (v->state == V_HANDSHAKE) {
        int status;
        long used = http_header_feed(v, p, n, &status);
        if (used == -1) return;
        if (used == -2) { viewer_close(v, "bad HTTP response"); return; }
        if (status != 200) { viewer_close(v, "HTTP status not 200"); return; }
        const char *te = hdr_value((char *)v->hs, "Transfer-Encoding");
        v->http.chunked = te && strncasecmp(te, "chunked", 7) == 0;
        free(v->hs); v->hs = NULL;
        v->state = V_STREAM;
        p += used; n -= used;
    }
    if (n) http_body_feed(v, p, n);
}

/* ---------------- WebSocket client ---------------- */
enum { W_HDR, W_PAYLOAD };
static void ws_send_frame(viewer_t *v, int opcode, const uint8_t *data, size_t len) {
    uint8_t f[2 + 4 + 125];
    if (len > 125) len = 125;
    f[0] = 0x80 | opcode;
    f[1] = 0x80 | len;
    uint32_t m = (uint32_t)random();
    memcpy(f + 2, &m, 4);
    for (size_t i = 0; i < len; i++) f[6 + i] = data[i] ^ f[2 + (i & 3)];
    send_bytes(v, f, 6 + len);
}

static void ws_frames_feed(viewer_t *v, const uint8_t *p, size_t n) {
    ws_t *w = &v->ws;
    while (n > 0 && v->state != V_DONE) {
        if (w->st == W_HDR) {
            size_t k = w->hneed - w->hhave;
            if (k > n) k = n;
            memcpy(w->hbuf + w->hhave, p, k);
            w->hhave += k; p += k; n -= k;
            if (w->hhave < w->hneed) return;
            if (w->hneed == 2) {
                uint8_t l = w->hbuf[1] & 0x7f;
                w->hneed = 2 + (l == 126 ? 2 : l == 127 ? 8 : 0) + ((w->hbuf[1] & 0x80) ? 4 : 0);
                if (w->hneed > 2) continue;
            }
            w->opcode = w->hbuf[0] & 0x0f;
            w->masked = w->hbuf[1] & 0x80;
            uint8_t l = w->hbuf[1] & 0x7f;
            int o = 2;
            if (l == 126) { w->rem = be16(w->hbuf + 2); o = 4; }
            else if (l == 127) { w->rem = ((uint64_t)be32(w->hbuf + 2) << 32) | be32(w->hbuf + 6); o = 10; }
            else w->rem = l;
            if (w->masked) memcpy(w->mask, w->hbuf + o, 4);
            w->mpos = 0;
            w->hhave = 0; w->hneed = 2;
            w->ctl_len = 0;
            if (w->opcode >= 8 && w->rem > 125) { viewer_close(v, "bad WS control frame"); return; }
            w->st = W_PAYLOAD;
            if (w->rem == 0) goto frame_done;
        } else {
            size_t k = w->rem < n ? w->rem : n;
            if (w->opcode >= 8) {
                memcpy(w->ctl + w->ctl_len, p, k);
                if (w->masked) for (size_t i = 0; i < k; i++) w->ctl[w->ctl_len + i] ^= w->mask[(w->mpos + i) & 3];
                w->ctl_len += k;
            } else if (w->opcode == 2 || w->opcode == 0) {
                if (w->masked) { /* servers must not mask, but cope */
                    uint8_t tmp[4096];
                    size_t done = 0;
                    while (done < k) {
                        size_t c = k - done < sizeof tmp ? k - done : sizeof tmp;
                        for (size_t i = 0; i < c; i++) tmp[i] = p[done + i] ^ w->mask[(w->mpos + done + i) & 3];
                        flv_feed(v, tmp, c);
                        done += c;
                    }
                } else {
                    flv_feed(v, p, k);
                }
            }
            w->mpos += k; w->rem -= k; p += k; n -= k;
            if (w->rem) return;
        frame_done:
            w->st = W_HDR;
            if (w->opcode == 9) ws_send_frame(v, 10, w->ctl, w->ctl_len);
            else if (w->opcode == 8) {
                ws_send_frame(v, 8, w->ctl, w->ctl_len >= 2 ? 2 : 0);
                viewer_close(v, "WS closed by server");
                return;
            }
        }
    }
}

static void ws_feed(viewer_t *v, const uint8_t *p, size_t n) {
    if (v->state == V_HANDSHAKE) {
        int status;
        long used = http_header_feed(v, p, n, &status);
        if (used == -1) return;
        if (used == -2) { viewer_close(v, "bad HTTP response"); return; }
        if (status != 101) { viewer_close(v, "WS upgrade refused"); return; }
        const char *acc = hdr_value((char *)v->hs, "Sec-WebSocket-Accept");
        char buf[80], expect[32];
        uint8_t dig[20];
        snprintf(buf, sizeof buf, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", v->ws.key);
        sha1((uint8_t *)buf, strlen(buf), dig);
        b64(dig, 20, expect);
        if (!acc || strncmp(acc, expect, strlen(expect)) != 0) { viewer_close(v, "bad Sec-WebSocket-Accept"); return; }
        free(v->hs); v->hs = NULL;
        v->state = V_STREAM;
        v->ws.hneed = 2;
        p += used; n -= used;
    }
    if (n) ws_frames_feed(v, p, n);
}

/* ---------------- RTMP client ---------------- */
static uint8_t *amf_str(uint8_t *b, const char *s) {
    size_t l = strlen(s);
    *b++ = 2; *b++ = l >> 8; *b++ = l;
    memcpy(b, s, l);
    return b + l;
}
static uint8_t *amf_key(uint8_t *b, const char *s) {
    size_t l = strlen(s);
    *b++ = l >> 8; *b++ = l;
    memcpy(b, s, l);
    return b + l;
}
static uint8_t *amf_num(uint8_t *b, double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    *b++ = 0;
    for (int i = 7; i >= 0; i--) *b++ = u >> (8 * i);
    return b;
}
static uint8_t *amf_bool(uint8_t *b, int x) { *b++ = 1; *b++ = !!x; return b; }

static void rtmp_send(viewer_t *v, int csid, int type, uint32_t msid, const uint8_t *pl, size_t len) {
    uint8_t out[2048];
    size_t o = 0, off = 0;
    out[o++] = csid; /* fmt 0, csid < 64 */
    out[o++] = 0; out[o++] = 0; out[o++] = 0;
    out[o++] = len >> 16; out[o++] = len >> 8; out[o++] = len;
    out[o++] = type;
    out[o++] = msid; out[o++] = msid >> 8; out[o++] = msid >> 16; out[o++] = msid >> 24;
    while (off < len) {
        size_t k = len - off > 128 ? 128 : len - off;
        memcpy(out + o, pl + off, k);
        o += k; off += k;
        if (off < len) out[o++] = 0xC0 | csid;
    }
    send_bytes(v, out, o);
}

static void rtmp_send_connect(viewer_t *v) {
    uint8_t b[1024], *p = b;
    char tc[300];
    snprintf(tc, sizeof tc, "rtmp://%s:%d/%s", opt_host, opt_port, opt_app);
    p = amf_str(p, "connect");
    p = amf_num(p, 1);
    *p++ = 3;
    p = amf_key(p, "app"); p = amf_str(p, opt_app);
    p = amf_key(p, "flashVer"); p = amf_str(p, "LNX 9,0,124,2");
    p = amf_key(p, "tcUrl"); p = amf_str(p, tc);
    p = amf_key(p, "fpad"); p = amf_bool(p, 0);
    p = amf_key(p, "capabilities"); p = amf_num(p, 15);
    p = amf_key(p, "audioCodecs"); p = amf_num(p, 4071);
    p = amf_key(p, "videoCodecs"); p = amf_num(p, 252);
    p = amf_key(p, "videoFunction"); p = amf_num(p, 1);
    *p++ = 0; *p++ = 0; *p++ = 9;
    rtmp_send(v, 3, 20, 0, b, p - b);
    v->r->phase = 1;
}

static void rtmp_send_ctl(viewer_t *v, int type, const uint8_t *pl, size_t len) { rtmp_send(v, 2, type, 0, pl, len); }

static void rtmp_on_command(viewer_t *v, cs_t *c) {
    uint32_t cl = c->len < CS_CAP ? c->len : CS_CAP;
    const uint8_t *p = c->cap, *e = c->cap + cl;
    if (cl < 3 || p[0] != 2) return;
    uint32_t sl = be16(p + 1);
    if (3 + sl > cl) return;
    char name[32] = {0};
    memcpy(name, p + 3, sl < 31 ? sl : 31);
    p += 3 + sl;
    double tx = 0;
    if (p + 9 <= e && p[0] == 0) {
        uint64_t u = 0;
        for (int i = 1; i <= 8; i++) u = (u << 8) | p[i];
        memcpy(&tx, &u, 8);
        p += 9;
    }
    if (!strcmp(name, "_result")) {
        if (tx == 1 && v->r->phase == 1) {
            uint8_t b[64], *q = b;
            q = amf_str(q, "createStream"); q = amf_num(q, 2); *q++ = 5;
            rtmp_send(v, 3, 20, 0, b, q - b);
            v->r->phase = 2;
        } else if (tx == 2 && v->r->phase == 2) {
            if (p < e && p[0] == 5) p++;
            double sid = 1;
            if (p + 9 <= e && p[0] == 0) {
                uint64_t u = 0;
                for (int i = 1; i <= 8; i++) u = (u << 8) | p[i];
                memcpy(&sid, &u, 8);
            }
            v->r->stream_id = (uint32_t)sid;
            uint8_t b[400], *q = b;
            /* Set Buffer Length, 3000 ms */
            uint8_t ub[10] = {0, 3};
            uint32_t s = v->r->stream_id;
            ub[2] = s >> 24; ub[3] = s >> 16; ub[4] = s >> 8; ub[5] = s;
            ub[6] = 0; ub[7] = 0; ub[8] = 0x0b; ub[9] = 0xb8;
            rtmp_send_ctl(v, 4, ub, 10);
            q = amf_str(q, "play"); q = amf_num(q, 3); *q++ = 5;
            q = amf_str(q, opt_stream); q = amf_num(q, -2000);
            rtmp_send(v, 8, 20, v->r->stream_id, b, q - b);
            v->r->phase = 3;
        }
    } else if (!strcmp(name, "_error")) {
        viewer_close(v, "RTMP _error");
    } else if (!strcmp(name, "onStatus")) {
        if (memmem(c->cap, cl, "StreamNotFound", 14) || memmem(c->cap, cl, ".Failed", 7))
            viewer_close(v, "RTMP play failed");
        else if (memmem(c->cap, cl, "Play.Start", 10))
            v->r->phase = 4;
    }
}

static void rtmp_on_message(viewer_t *v, cs_t *c) {
    rtmp_t *r = v->r;
    uint32_t cl = c->len < CS_CAP ? c->len : CS_CAP;
    switch (c->type) {
    case 1:
        if (cl >= 4) r->in_chunk = be32(c->cap) & 0x7fffffff;
        if (r->in_chunk < 1) r->in_chunk = 128;
        break;
    case 2:
        if (cl >= 4) {
            uint32_t id = be32(c->cap);
            for (int i = 0; i < CS_SLOTS; i++) if (r->cs[i].used && r->cs[i].csid == id) r->cs[i].got = 0;
        }
        break;
    case 4:
        if (cl >= 6 && be16(c->cap) == 6) { /* PingRequest -> PingResponse */
            uint8_t b[6] = {0, 7, c->cap[2], c->cap[3], c->cap[4], c->cap[5]};
            rtmp_send_ctl(v, 4, b, 6);
        }
        break;
    case 5:
        if (cl >= 4) r->win_ack = be32(c->cap);
        break;
    case 6:
        if (cl >= 4) rtmp_send_ctl(v, 5, c->cap, 4); /* answer with our Window Ack Size */
        break;
    case 8: case 9:
        on_media(v, c->type, c->cap, cl, c->len);
        break;
    case 20:
        rtmp_on_command(v, c);
        break;
    case 22: /* aggregate: count as media without looking inside */
        on_media(v, 8, c->cap, 0, c->len);
        break;
    }
}

static cs_t *rtmp_slot(viewer_t *v, uint32_t csid) {
    rtmp_t *r = v->r;
    for (int i = 0; i < CS_SLOTS; i++) if (r->cs[i].used && r->cs[i].csid == csid) return &r->cs[i];
    for (int i = 0; i < CS_SLOTS; i++) if (!r->cs[i].used) {
        memset(&r->cs[i], 0, offsetof(cs_t, cap));
        r->cs[i].used = 1; r->cs[i].csid = csid;
        return &r->cs[i];
    }
    return NULL;
}

static void rtmp_chunks_feed(viewer_t *v, const uint8_t *p, size_t n) {
    rtmp_t *r = v->r;
    while (n > 0 && v->state != V_DONE) {
        if (!r->in_payload) {
            /* accumulate the chunk header; its length is learnt progressively */
            while (r->hhave < r->hneed && n > 0) { r->hbuf[r->hhave++] = *p++; n--; }
            if (r->hhave < r->hneed) return;
            uint8_t fmt = r->hbuf[0] >> 6;
            uint32_t c6 = r->hbuf[0] & 63;
            int bl = c6 == 0 ? 2 : c6 == 1 ? 3 : 1;
            static const int MH[4] = {11, 7, 3, 0};
            int base = bl + MH[fmt];
            if (r->hneed == 1 && base > 1) { r->hneed = base; continue; }
            uint32_t csid = c6 == 0 ? 64 + r->hbuf[1] : c6 == 1 ? 64 + r->hbuf[1] + 256 * r->hbuf[2] : c6;
            cs_t *c = rtmp_slot(v, csid);
            if (!c) { viewer_close(v, "too many RTMP chunk streams"); return; }
            const uint8_t *m = r->hbuf + bl;
            uint32_t tsf = fmt < 3 ? be24(m) : 0;
            int need_ext = fmt < 3 ? tsf == 0xffffff : c->ext;
            if (need_ext && r->hneed == base) { r->hneed = base + 4; continue; }
            uint32_t ext = need_ext ? be32(r->hbuf + base) : 0;
            uint32_t tval = need_ext ? ext : tsf;
            if (fmt < 3) {
                c->ext = tsf == 0xffffff;
                c->got = 0;
                if (fmt == 0) { c->ts = tval; c->tsdelta = 0; }
                else { c->tsdelta = tval; c->ts += tval; }
                if (fmt <= 1) { c->len = be24(m + 3); c->type = m[6]; }
                if (fmt == 0) c->msid = m[7] | m[8] << 8 | m[9] << 16 | (uint32_t)m[10] << 24;
            } else if (c->got == 0) {
                c->ts += c->tsdelta;
            }
            r->cur = c;
            uint32_t left = c->len - c->got;
            r->chunk_rem = left < r->in_chunk ? left : r->in_chunk;
            r->in_payload = 1;
            r->hhave = 0; r->hneed = 1;
            if (r->chunk_rem == 0) goto msg_check;
            continue;
        }
        {
            cs_t *c = r->cur;
            size_t k = r->chunk_rem < n ? r->chunk_rem : n;
            if (c->got < CS_CAP) {
                size_t cc = CS_CAP - c->got;
                if (cc > k) cc = k;
                memcpy(c->cap + c->got, p, cc);
            }
            c->got += k; r->chunk_rem -= k; p += k; n -= k;
            if (c->type == 9 && c->got - k < 2) on_video_begin(v, c->cap, c->got < CS_CAP ? c->got : CS_CAP, c->len);
            if (r->chunk_rem) return;
        }
    msg_check:
        r->in_payload = 0;
        if (r->cur->got >= r->cur->len) {
            cs_t *c = r->cur;
            rtmp_on_message(v, c);
            if (v->state == V_DONE) return; /* closed (e.g. play refused): r is gone */
            c->got = 0;
        }
    }
}

static void rtmp_feed(viewer_t *v, const uint8_t *p, size_t n) {
    rtmp_t *r = v->r;
    r->total_in += n;
    if (v->state == V_HANDSHAKE) {
        if (!v->hs) { v->hs = malloc(3073); v->hs_len = 0; }
        size_t k = 3073 - v->hs_len;
        if (k > n) k = n;
        memcpy(v->hs + v->hs_len, p, k);
        v->hs_len += k; p += k; n -= k;
        if (v->hs_len < 3073) return;
        if (v->hs[0] != 3) { viewer_close(v, "bad RTMP S0"); return; }
        send_bytes(v, v->hs + 1, 1536); /* C2 = echo of S1 */
        free(v->hs); v->hs = NULL;
        v->state = V_STREAM;
        r->in_chunk = 128; r->hneed = 1;
        rtmp_send_connect(v);
    }
    if (n) rtmp_chunks_feed(v, p, n);
    if (v->state == V_DONE) return;
    if (r->win_ack && r->total_in - r->last_ack >= r->win_ack) {
        uint32_t seq = (uint32_t)r->total_in;
        uint8_t b[4] = {seq >> 24, seq >> 16, seq >> 8, seq};
        rtmp_send_ctl(v, 3, b, 4);
        r->last_ack = r->total_in;
    }
}

/* ---------------- connection handling ---------------- */
static void viewer_start(int i) {
    viewer_t *v = &V[i];
    v->t_join = now_s;
    v->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    n_started++;
    if (in_win) jw_started++;
    if (opt_hold > 0) hold_q[(hold_head + hold_len++) % opt_viewers] = i;
    if (v->fd < 0) { v->state = V_DONE; v->fail = "socket() failed"; return; }
    int one = 1;
    setsockopt(v->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt_src_addrs > 1) {
        /* Past ~14 000 connections from one address to one server port, Linux's connect()
           has used up the even ephemeral ports it prefers and scans for each new one
           (~600 us instead of ~28 us here); each source address has its own ports. */
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001 + i % opt_src_addrs)};
        setsockopt(v->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(v->fd, (struct sockaddr *)&src, sizeof src) < 0) {
            close(v->fd); v->fd = -1; v->state = V_DONE; v->fail = "bind() failed";
            return;
        }
    }
    int tsf = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE;
    setsockopt(v->fd, SOL_SOCKET, SO_TIMESTAMPING, &tsf, sizeof tsf);
    int rc = connect(v->fd, (struct sockaddr *)&srv_addr, sizeof srv_addr);
    if (rc < 0 && errno != EINPROGRESS) {
        close(v->fd); v->fd = -1; v->state = V_DONE; v->fail = "connect() failed";
        return;
    }
    v->state = V_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = v};
    epoll_ctl(ep_main, EPOLL_CTL_ADD, v->fd, &ev);
}

static void viewer_connected(viewer_t *v) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(v->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) { v->state = V_HANDSHAKE; n_alive++; viewer_close(v, "connect refused/failed"); return; }
    n_connected++; n_alive++;
    v->state = V_HANDSHAKE;
    v->flv.st = F_HDR;
    v->flv.hneed = 9;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = v};
    epoll_ctl(v->bulk ? ep_bulk : ep_main, EPOLL_CTL_MOD, v->fd, &ev);
    char req[1024];
    const char *path = opt_path;
    char pbuf[300];
    if (!path) { snprintf(pbuf, sizeof pbuf, "/%s/%s.flv", opt_app, opt_stream); path = pbuf; }
    if (opt_proto == P_RTMP) {
        v->r = calloc(1, sizeof(rtmp_t));
        uint8_t c01[1537];
        c01[0] = 3;
        memset(c01 + 1, 0, 8);
        for (int i = 9; i < 1537; i++) c01[i] = (uint8_t)random();
        send_bytes(v, c01, sizeof c01);
    } else if (opt_proto == P_HTTP) {
        int n = snprintf(req, sizeof req,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: rtmpd-loadgen\r\nAccept: */*\r\n\r\n",
                         path, opt_host, opt_port);
        send_bytes(v, req, n);
    } else {
        uint8_t k[16];
        for (int i = 0; i < 16; i++) k[i] = (uint8_t)random();
        b64(k, 16, v->ws.key);
        int n = snprintf(req, sizeof req,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: rtmpd-loadgen\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                         path, opt_host, opt_port, v->ws.key);
        send_bytes(v, req, n);
    }
}

static void viewer_readable(viewer_t *v) {
    for (int rounds = 0; rounds < 4; rounds++) {
        ssize_t n;
        {
            /* Reads may come late (batched passes, a busy loop): date this read's media by
               the newest segment's arrival (SO_TIMESTAMPING) instead of the time of the read. */
            char ctl[256];
            struct iovec iov = {rbuf, sizeof rbuf};
            struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
            n = recvmsg(v->fd, &mh, 0);
            update_now();
            if (n > 0)
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPING) {
                        struct timespec ts[3];
                        memcpy(ts, CMSG_DATA(c), sizeof ts);
                        int64_t arr = (int64_t)ts[0].tv_sec * 1000000 + ts[0].tv_nsec / 1000;
                        if (ts[0].tv_sec && arr < now_real_us) {
                            /* date this read's media by the newest segment's arrival */
                            now_s -= (now_real_us - arr) / 1e6;
                            now_real_us = arr;
                        }
                    }
        }
        n_recv++;
        if (in_win) n_recv_win++;
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
            viewer_close(v, "recv error");
            return;
        }
        if (n == 0) { v->closed_by_peer = 1; viewer_close(v, "closed by server"); return; }
        if (!v->bytes) v->t_first_byte = now_s;
        v->bytes += n;
        total_bytes_all += n;
        if (in_win) { v->bytes_win += n; total_bytes_win += n; }
        if (opt_proto == P_RTMP) rtmp_feed(v, rbuf, n);
        else if (opt_proto == P_HTTP) http_feed(v, rbuf, n);
        else ws_feed(v, rbuf, n);
        if (v->state == V_DONE) return;
        if (v->ever_media && (v->got_key || now_s - v->t_first_media > 3) && !v->probe && !v->bulk && !v->outq) {
            /* set up and streaming: from now on read in batched passes */
            epoll_ctl(ep_main, EPOLL_CTL_DEL, v->fd, NULL);
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = v};
            epoll_ctl(ep_bulk, EPOLL_CTL_ADD, v->fd, &ev);
            v->bulk = 1;
        }
        if ((size_t)n < sizeof rbuf) return;
    }
}

static void handle_events(struct epoll_event *evs, int ne, int *bulk_ready) {
    for (int i = 0; i < ne; i++) {
        if (evs[i].data.ptr == &bulk_marker) { *bulk_ready = 1; continue; }
        viewer_t *v = evs[i].data.ptr;
        if (v->state == V_DONE) continue;
        if (v->state == V_CONNECTING) {
            if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) viewer_connected(v);
            continue;
        }
        if (evs[i].events & EPOLLOUT) flush_out(v);
        if (v->state != V_DONE && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) viewer_readable(v);
    }
}

/* ---------------- churn (--hold-s) ---------------- */
static void push_d(double **a, size_t *n, double x) {
    if (*n == jw_cap) {
        jw_cap = jw_cap ? 2 * jw_cap : 65536;
        jw_key = realloc(jw_key, jw_cap * sizeof(double));
        jw_key_start = realloc(jw_key_start, jw_cap * sizeof(double));
        jw_bps = realloc(jw_bps, jw_cap * sizeof(double));
        if (!jw_key || !jw_key_start || !jw_bps) { fprintf(stderr, "loadgen: out of memory\n"); exit(2); }
    }
    (*a)[(*n)++] = x;
}

/* A join's hold is over (or it ended earlier): count it. */
static void join_end(viewer_t *v) {
    int open = v->state != V_DONE && v->state != V_IDLE;
    if (open && v->ever_media && now_s - v->t_last_media > 1.0) v->stalls++;
    j_stalls += v->stalls;
    j_stalls_win += v->stalls_win;
    j_ended++;
    if (in_win) {
        jw_ended++;
        if (v->got_key) {
            size_t nstart = jw_nkey;
            push_d(&jw_key, &jw_nkey, (v->t_first_key - v->t_join) * 1000);
            push_d(&jw_key_start, &nstart, (v->t_first_key_start - v->t_join) * 1000);
        }
    }
    if (open && v->got_key) {
        j_done++;
        double held = now_s - v->t_join; /* >= the hold: later when the loop falls behind */
        j_held_sum += held;
        if (in_win) {
            jw_done++;
            jw_held_sum += held;
            push_d(&jw_bps, &jw_nbps, v->media_bytes_tail * 8.0 / (held - HOLD_SKIP));
        }
        return;
    }
    count_reason(open ? (v->ever_media ? "no keyframe within the hold"
                         : v->bytes ? "no media within the hold" : "no answer within the hold")
                      : v->fail ? v->fail : "closed");
    if (!open && v->ever_media) { j_dropped++; if (in_win) jw_dropped++; }
    else { j_failed++; if (in_win) jw_failed++; }
}

/* Replace the viewers whose hold is over by new ones in their slots, for at most
   JOIN_BUDGET s per loop turn so the open sockets keep being served: if joins cost
   more than the churn allows, they fall behind (joins/s in the JSON) instead of
   starving the loop. */
#define JOIN_BUDGET 0.002
static void hold_expire(void) {
    double until = mono() + JOIN_BUDGET;
    for (int k = 1; hold_len; k++) {
        if (!(k & 7) && mono() > until) break;
        int i = hold_q[hold_head];
        viewer_t *v = &V[i];
        if (now_s < v->t_join + opt_hold) break;
        hold_head = (hold_head + 1) % opt_viewers;
        hold_len--;
        join_end(v);
        viewer_close(v, NULL);
        uint8_t probe = v->probe;
        memset(v, 0, sizeof *v);
        v->fd = -1;
        v->probe = probe;
        viewer_start(i);
    }
}

/* ---------------- stats ---------------- */
static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double pct(const double *s, int n, double q) {
    if (n <= 0) return NAN;
    int i = (int)ceil(q * n) - 1;
    if (i < 0) i = 0;
    if (i >= n) i = n - 1;
    return s[i];
}
static double lat_pct(double q) {
    if (!lat_count) return NAN;
    uint64_t target = (uint64_t)ceil(q * lat_count), acc = 0;
    if (!target) target = 1;
    for (int i = 0; i < LAT_BINS; i++) {
        acc += lat_hist[i];
        if (acc >= target) return (i + 0.5) * 0.1;
    }
    return LAT_BINS * 0.1;
}
static void jnum(FILE *f, const char *k, double x, int comma) {
    if (isnan(x)) fprintf(f, "\"%s\": null", k);
    else fprintf(f, "\"%s\": %.3f", k, x);
    if (comma) fputs(", ", f);
}
static void jdist(FILE *f, const char *k, double *s, int n) {
    qsort(s, n, sizeof *s, cmpd);
    fprintf(f, "  \"%s\": {\"n\": %d, ", k, n);
    jnum(f, "p50", pct(s, n, .5), 1);
    jnum(f, "p95", pct(s, n, .95), 1);
    jnum(f, "p99", pct(s, n, .99), 1);
    jnum(f, "max", n ? s[n - 1] : NAN, 0);
    fputs("},\n", f);
}

static void on_signal(int s) { (void)s; stop_flag = 1; }

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --proto rtmp|http-flv|ws-flv --port N [options]\n"
            "  --host H          server address (default 127.0.0.1)\n"
            "  --app A --stream S  stream to play (default live/bench)\n"
            "  --path P          HTTP/WS path (default /APP/STREAM.flv)\n"
            "  --viewers N       concurrent viewers (default 100)\n"
            "  --rate R          joins per second (default 2000)\n"
            "  --duration S      total run time in seconds (default 30)\n"
            "  --window S        measurement window at the end of the run (default 12)\n"
            "  --expect-bps B    stream's media bitrate (audio+video tag bodies), for 'healthy'\n"
            "  --manifest F      read media_bps from publish.py's manifest JSON instead\n"
            "  --health F        healthy = media bytes in window >= F * expected (default 0.9)\n"
            "  --json F          write the JSON summary to F ('-' = stdout)\n"
            "  --cpu N           pin to CPU N\n"
            "  --progress        one status line per second on stderr\n"
            "  --quiet           no WINDOW markers on stdout\n"
            "  --probes P        viewers always read at once; latency is sampled from them (default 100)\n"
            "  --batch-ms B      read the other viewers, once they stream, in passes every B ms (fewer,\n"
            "                    larger reads: on loopback each read costs an ACK through both TCP\n"
            "                    stacks). Default: adaptive, to keep loadgen CPU under --cpu-target\n"
            "  --cpu-target PCT  for adaptive batching (default 60)\n"
            "  --src-addrs K     connect from 127.0.0.1 .. 127.0.0.K, viewer i from address i %% K (a loopback\n"
            "                    server only; one address's ephemeral ports get slow to find past ~14 000)\n"
            "  --hold-s S        churn: each viewer leaves S s after it joined and a new one takes its\n"
            "                    place, so --viewers stay connected; use --rate VIEWERS/S for an even\n"
            "                    churn. Each join is judged alone: healthy = a keyframe, held S s, and\n"
            "                    media after its first %.0f s >= --health x the bitrate (JSON: churn)\n", HOLD_SKIP);
}

int main(int argc, char **argv) {
    static struct option lo[] = {
        {"proto", 1, 0, 'P'}, {"host", 1, 0, 'h'}, {"port", 1, 0, 'p'}, {"app", 1, 0, 'a'},
        {"stream", 1, 0, 's'}, {"path", 1, 0, 'u'}, {"viewers", 1, 0, 'n'}, {"rate", 1, 0, 'r'},
        {"duration", 1, 0, 'd'}, {"window", 1, 0, 'w'}, {"json", 1, 0, 'j'}, {"expect-bps", 1, 0, 'e'},
        {"manifest", 1, 0, 'm'}, {"cpu", 1, 0, 'c'}, {"progress", 0, 0, 'g'}, {"health", 1, 0, 'H'},
        {"quiet", 0, 0, 'q'}, {"batch-ms", 1, 0, 'b'}, {"probes", 1, 0, 'o'}, {"cpu-target", 1, 0, 't'}, {"hold-s", 1, 0, 'l'}, {"src-addrs", 1, 0, 'S'}, {"help", 0, 0, '?'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'P':
            if (!strcmp(optarg, "rtmp")) opt_proto = P_RTMP;
            else if (!strcmp(optarg, "http-flv") || !strcmp(optarg, "http")) opt_proto = P_HTTP;
            else if (!strcmp(optarg, "ws-flv") || !strcmp(optarg, "ws")) opt_proto = P_WS;
            else { usage(); return 2; }
            break;
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = atoi(optarg); break;
        case 'a': opt_app = optarg; break;
        case 's': opt_stream = optarg; break;
        case 'u': opt_path = optarg; break;
        case 'n': opt_viewers = atoi(optarg); break;
        case 'r': opt_rate = atof(optarg); break;
        case 'd': opt_duration = atof(optarg); break;
        case 'w': opt_window = atof(optarg); break;
        case 'j': opt_json = optarg; break;
        case 'e': opt_expect_bps = atof(optarg); break;
        case 'm': opt_manifest = optarg; break;
        case 'c': opt_cpu = atoi(optarg); break;
        case 'g': opt_progress = 1; break;
        case 'H': opt_health = atof(optarg); break;
        case 'q': opt_quiet = 1; break;
        case 'b': opt_batch_ms = atof(optarg); break;
        case 'o': opt_probes = atoi(optarg); break;
        case 't': opt_cpu_target = atof(optarg); break;
        case 'l': opt_hold = atof(optarg); break;
        case 'S': opt_src_addrs = atoi(optarg); break;
        default: usage(); return 2;
        }
    }
    if (!opt_port || opt_viewers < 1 || opt_rate <= 0 || opt_duration <= 0 || opt_hold < 0 || opt_src_addrs < 1 || opt_src_addrs > 254) {
        usage();
        return 2;
    }
    if (opt_hold > 0 && opt_hold <= HOLD_SKIP) { fprintf(stderr, "loadgen: --hold-s must be > %.0f\n", HOLD_SKIP); return 2; }
    if (opt_window > opt_duration) opt_window = opt_duration;
    batch_ms = opt_batch_ms >= 0 ? opt_batch_ms : opt_viewers <= 1000 ? 0 : fmin(200, opt_viewers / 100.0);
    if (opt_manifest && !opt_expect_bps) {
        FILE *f = fopen(opt_manifest, "r");
        if (f) {
            char buf[8192];
            size_t l = fread(buf, 1, sizeof buf - 1, f);
            buf[l] = 0;
            fclose(f);
            char *s = strstr(buf, "\"media_bps\"");
            if (s && (s = strchr(s, ':'))) opt_expect_bps = atof(s + 1);
        }
        if (!opt_expect_bps) fprintf(stderr, "loadgen: no media_bps in %s\n", opt_manifest);
    }
    if (opt_cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(opt_cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) perror("sched_setaffinity");
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t want = (rlim_t)opt_viewers + 256;
    if (rl.rlim_cur < want) {
        struct rlimit nr = {want, rl.rlim_max > want ? rl.rlim_max : want};
        if (setrlimit(RLIMIT_NOFILE, &nr) < 0) {
            nr.rlim_cur = nr.rlim_max = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &nr);
            fprintf(stderr, "loadgen: could only raise RLIMIT_NOFILE to %lu\n", (unsigned long)rl.rlim_max);
        }
    }
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(opt_host, NULL, &hints, &ai) != 0) { fprintf(stderr, "loadgen: cannot resolve %s\n", opt_host); return 2; }
    memcpy(&srv_addr, ai->ai_addr, sizeof srv_addr);
    srv_addr.sin_port = htons(opt_port);
    freeaddrinfo(ai);
    if (opt_src_addrs > 1 && (ntohl(srv_addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "loadgen: --src-addrs is for a server on 127.0.0.0/8\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    srandom(getpid() ^ time(NULL));

    V = calloc(opt_viewers, sizeof *V);
    lat_hist = calloc(LAT_BINS, sizeof *lat_hist);
    hold_q = opt_hold > 0 ? calloc(opt_viewers, sizeof *hold_q) : NULL;
    if (!V || !lat_hist || (opt_hold > 0 && !hold_q)) { fprintf(stderr, "loadgen: out of memory\n"); return 2; }
    for (int i = 0; i < opt_viewers; i++) V[i].fd = -1;
    ep_main = epoll_create1(EPOLL_CLOEXEC);
    ep_bulk = epoll_create1(EPOLL_CLOEXEC);
    {
        int np = opt_probes < opt_viewers ? opt_probes : opt_viewers;
        for (int k = 0; k < np; k++) V[(int)((double)k * opt_viewers / np)].probe = 1;
    }
    struct epoll_event evs[1024];

    T0 = mono();
    win_end = opt_duration;
    win_start = opt_duration - opt_window;
    double ramp = opt_viewers / opt_rate;
    if (ramp > win_start)
        fprintf(stderr, "loadgen: warning: joining takes %.1f s, past the window start at %.1f s\n", ramp, win_start);
    if (opt_hold > 0 && ramp > opt_hold * 1.01)
        fprintf(stderr, "loadgen: warning: at --rate %.0f the first viewers leave before the last join: fewer than %d "
                        "at a time (use --rate %.0f)\n", opt_rate, opt_viewers, opt_viewers / opt_hold);
    struct rusage ru0, ruw0 = {0}, ruw1 = {0};
    getrusage(RUSAGE_SELF, &ru0);
    int next = 0, win_marked = 0;
    double next_adapt = 1, last_adapt = 0, last_cpu = 0, next_pass = 0, last_loop = 0;
    double next_progress = 1;
    update_now();
    while (!stop_flag) {
        update_now();
        if (now_s >= opt_duration) break;
        if (!win_marked && now_s >= win_start) {
            win_marked = 1;
            getrusage(RUSAGE_SELF, &ruw0);
            if (!opt_quiet) { printf("WINDOW_START %.3f\n", now_s); fflush(stdout); }
        }
        int due = (int)(now_s * opt_rate) + 1;
        if (due > opt_viewers) due = opt_viewers;
        {
            double until = mono() + JOIN_BUDGET; /* as in hold_expire */
            for (int k = 1; next < due && ((k & 7) || mono() <= until); k++) viewer_start(next++);
        }
        if (opt_hold > 0) hold_expire();
        if (opt_progress && now_s >= next_progress) {
            next_progress += 1;
            fprintf(stderr, "[%5.1fs] started %d connected %d alive %d  %.1f Mbit/s total\n", now_s, n_started,
                    n_connected, n_alive, total_bytes_all * 8 / 1e6 / now_s);
        }
        /* adapt the batch period once a second to keep our CPU under the target */
        if (now_s >= next_adapt) {
            struct rusage ru;
            getrusage(RUSAGE_SELF, &ru);
            double c = TVS(ru.ru_utime) + TVS(ru.ru_stime);
            double cpu = (c - last_cpu) / (now_s - last_adapt) * 100;
            last_cpu = c; last_adapt = now_s; next_adapt = now_s + 1;
            if (opt_batch_ms < 0 && opt_viewers > opt_probes) {
                if (cpu > opt_cpu_target) batch_ms = batch_ms < 5 ? 5 : fmin(batch_ms * 1.6, 500);
                else if (cpu < opt_cpu_target * 0.5 && batch_ms > 0) batch_ms = batch_ms / 1.6 < 3 ? 0 : batch_ms / 1.6;
            }
        }
        if (in_win) {
            batch_ms_win_sum += batch_ms * (now_s - last_loop);
            if (batch_ms > batch_ms_max) batch_ms_max = batch_ms;
            alive_win_sum += n_alive * (now_s - last_loop);
            if (alive_min_win < 0 || n_alive < alive_min_win) alive_min_win = n_alive;
        }
        last_loop = now_s;
        int timeout, tmax = next < opt_viewers || opt_hold > 0 ? 1 : 20;
        if (batch_ms <= 0) {
            if (!bulk_in_main) {
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &bulk_marker};
                epoll_ctl(ep_main, EPOLL_CTL_ADD, ep_bulk, &ev);
                bulk_in_main = 1;
            }
            timeout = tmax;
        } else {
            if (bulk_in_main) { epoll_ctl(ep_main, EPOLL_CTL_DEL, ep_bulk, NULL); bulk_in_main = 0; }
            timeout = (int)ceil((next_pass - now_s) * 1000);
            if (timeout < 0) timeout = 0;
            if (timeout > tmax) timeout = tmax;
        }
        int ne = epoll_wait(ep_main, evs, 1024, timeout);
        n_wait++;
        if (in_win) n_wait_win++;
        if (ne < 0) { if (errno == EINTR) continue; perror("epoll_wait"); break; }
        int bulk_ready = 0;
        handle_events(evs, ne, &bulk_ready);
        update_now();
        if (batch_ms <= 0 ? bulk_ready : now_s >= next_pass) {
            /* one pass over the batched sockets that have data */
            int rounds = opt_viewers / 1024 + 2;
            do {
                ne = epoll_wait(ep_bulk, evs, 1024, 0);
                if (ne <= 0) break;
                handle_events(evs, ne, &bulk_ready);
            } while (ne == 1024 && --rounds > 0);
            update_now();
            next_pass = now_s + batch_ms / 1000;
        }
    }
    update_now();
    double t_end = now_s;
    getrusage(RUSAGE_SELF, &ruw1);
    if (!win_marked) ruw0 = ru0;
    if (!opt_quiet) { printf("WINDOW_END %.3f\n", t_end); fflush(stdout); }

    /* ---- summarise ---- */
    double actual_win = t_end - win_start;
    if (actual_win <= 0) actual_win = 1e-9;
    int connected = 0, failed = 0, dropped = 0, healthy = 0, with_media = 0, alive_end = 0;
    uint64_t stalls = 0, stalls_win = 0, stalled_viewers = 0;
    double *fb = malloc(sizeof(double) * opt_viewers), *fm = malloc(sizeof(double) * opt_viewers),
           *fk = malloc(sizeof(double) * opt_viewers), *fks = malloc(sizeof(double) * opt_viewers), *mb = malloc(sizeof(double) * opt_viewers);
    int nfb = 0, nfm = 0, nfk = 0, nmb = 0;
    for (int i = 0; i < opt_viewers; i++) {
        viewer_t *v = &V[i];
        if (v->state == V_IDLE) continue;
        if (v->state != V_DONE) {
            alive_end++;
            if (v->ever_media && now_s - v->t_last_media > 1.0) { v->stalls++; v->stalls_win++; }
        }
        if (v->bytes) connected++;
        if (!v->ever_media) failed++;
        else if (v->state == V_DONE) dropped++;
        if (v->ever_media) with_media++;
        if (v->bytes) fb[nfb++] = (v->t_first_byte - v->t_join) * 1000;
        if (v->ever_media) fm[nfm++] = (v->t_first_media - v->t_join) * 1000;
        if (v->got_key) {
            fks[nfk] = (v->t_first_key_start - v->t_join) * 1000;
            fk[nfk++] = (v->t_first_key - v->t_join) * 1000;
        }
        mb[nmb++] = v->media_bytes_win * 8.0 / actual_win;
        stalls += v->stalls;
        stalls_win += v->stalls_win;
        if (v->stalls) stalled_viewers++;
        if (v->fail && v->state == V_DONE && opt_hold <= 0) count_reason(v->fail);
    }
    double expect = opt_expect_bps;
    int expect_guessed = 0;
    if (expect <= 0) {
        /* without a bitrate: the median viewer's (per held join with --hold-s) */
        double *src = opt_hold > 0 ? jw_bps : mb;
        int ns = opt_hold > 0 ? (int)jw_nbps : nmb;
        double *tmp = malloc(sizeof(double) * (ns ? ns : 1));
        memcpy(tmp, src, sizeof(double) * ns);
        qsort(tmp, ns, sizeof *tmp, cmpd);
        expect = pct(tmp, ns, 0.5);
        expect_guessed = 1;
        free(tmp);
    }
    double healthy_pct;
    if (opt_hold > 0) {
        /* churn: the figures are per join, over the joins whose hold ended in the window */
        for (size_t i = 0; i < jw_nbps; i++) if (jw_bps[i] >= opt_health * expect) healthy++;
        healthy_pct = jw_ended ? 100.0 * healthy / jw_ended : 0;
        failed = (int)jw_failed;
        dropped = (int)jw_dropped;
        stalls += j_stalls;
        stalls_win += j_stalls_win;
    } else {
        for (int i = 0; i < nmb; i++) if (mb[i] >= opt_health * expect) healthy++;
        healthy_pct = opt_viewers ? 100.0 * healthy / opt_viewers : 0;
    }
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
#define TV(t) ((t).tv_sec + (t).tv_usec * 1e-6)
    double cpu_win = (TV(ruw1.ru_utime) + TV(ruw1.ru_stime) - TV(ruw0.ru_utime) - TV(ruw0.ru_stime)) / actual_win * 100;
    double cpu_tot = (TV(ru1.ru_utime) + TV(ru1.ru_stime) - TV(ru0.ru_utime) - TV(ru0.ru_stime)) / t_end * 100;
    double usr_win = (TV(ruw1.ru_utime) - TV(ruw0.ru_utime)) / actual_win * 100;
    double sys_win = (TV(ruw1.ru_stime) - TV(ruw0.ru_stime)) / actual_win * 100;
    const char *pn = opt_proto == P_RTMP ? "rtmp" : opt_proto == P_HTTP ? "http-flv" : "ws-flv";

    FILE *f = NULL;
    if (opt_json) f = strcmp(opt_json, "-") ? fopen(opt_json, "w") : stdout;
    if (opt_json && !f) perror(opt_json);
    if (f) {
        fprintf(f, "{\n  \"proto\": \"%s\", \"host\": \"%s\", \"port\": %d, \"app\": \"%s\", \"stream\": \"%s\",\n", pn,
                opt_host, opt_port, opt_app, opt_stream);
        fprintf(f, "  \"viewers\": %d, \"rate\": %.1f, \"duration_s\": %.3f, \"window_s\": %.3f, \"src_addrs\": %d,\n",
                opt_viewers, opt_rate, t_end, actual_win, opt_src_addrs);
        fprintf(f, "  \"expect_bps\": %.1f, \"expect_guessed\": %s, \"health_fraction\": %.3f,\n", expect,
                expect_guessed ? "true" : "false", opt_health);
        fprintf(f, "  \"started\": %d, \"connected\": %d, \"with_media\": %d, \"failed\": %d, \"dropped\": %d, \"alive_at_end\": %d,\n",
                n_started, connected, with_media, failed, dropped, alive_end);
        fprintf(f, "  \"healthy\": %d, \"healthy_pct\": %.2f,\n", healthy, healthy_pct);
        if (opt_hold > 0) {
            double bps_p50 = NAN;
            if (jw_nbps) {
                qsort(jw_bps, jw_nbps, sizeof *jw_bps, cmpd);
                bps_p50 = pct(jw_bps, (int)jw_nbps, .5);
            }
            fprintf(f, "  \"churn\": {\"hold_s\": %.3f, \"skip_s\": %.1f, \"window\": {\"started\": %llu, \"ended\": %llu, "
                       "\"completed\": %llu, \"failed\": %llu, \"dropped\": %llu, \"healthy\": %d, \"completed_per_s\": %.1f, "
                       "\"started_per_s\": %.1f, \"held_s_avg\": %.3f, \"alive_min\": %d, \"alive_avg\": %.0f, ",
                    opt_hold, HOLD_SKIP, (unsigned long long)jw_started, (unsigned long long)jw_ended,
                    (unsigned long long)jw_done, (unsigned long long)jw_failed, (unsigned long long)jw_dropped, healthy,
                    jw_done / actual_win, jw_started / actual_win, jw_done ? jw_held_sum / jw_done : 0.0,
                    alive_min_win, alive_win_sum / actual_win);
            jnum(f, "tail_bps_p50", bps_p50, 0);
            fprintf(f, "},\n    \"run\": {\"started\": %d, \"ended\": %llu, \"completed\": %llu, \"failed\": %llu, "
                       "\"dropped\": %llu, \"open_at_end\": %d}},\n",
                    n_started, (unsigned long long)j_ended, (unsigned long long)j_done, (unsigned long long)j_failed,
                    (unsigned long long)j_dropped, alive_end);
        }
        fprintf(f, "  \"bytes_total\": %llu, \"bytes_window\": %llu, \"recv_mbps_window\": %.3f,\n",
                (unsigned long long)total_bytes_all, (unsigned long long)total_bytes_win, total_bytes_win * 8 / 1e6 / actual_win);
        qsort(mb, nmb, sizeof *mb, cmpd);
        fprintf(f, "  \"viewer_media_bps_window\": {");
        jnum(f, "p1", pct(mb, nmb, .01), 1);
        jnum(f, "p50", pct(mb, nmb, .5), 1);
        jnum(f, "min", nmb ? mb[0] : NAN, 0);
        fputs("},\n", f);
        jdist(f, "first_byte_ms", fb, nfb);
        jdist(f, "first_media_ms", fm, nfm);
        /* first_keyframe_ms: to the keyframe's last byte (a player decodes only a whole frame);
         * first_keyframe_start_ms: to its first bytes */
        if (opt_hold > 0) {
            jdist(f, "first_keyframe_start_ms", jw_key_start, (int)jw_nkey);
            jdist(f, "first_keyframe_ms", jw_key, (int)jw_nkey);
        } else {
            jdist(f, "first_keyframe_start_ms", fks, nfk);
            jdist(f, "first_keyframe_ms", fk, nfk);
        }
        fprintf(f, "  \"latency_ms\": {\"samples\": %llu, \"negative\": %llu, \"missing_sei\": %llu, ",
                (unsigned long long)lat_count, (unsigned long long)lat_neg, (unsigned long long)sei_missing);
        jnum(f, "p50", lat_pct(.5), 1);
        jnum(f, "p95", lat_pct(.95), 1);
        jnum(f, "p99", lat_pct(.99), 1);
        jnum(f, "max", lat_pct(1.0), 0);
        fputs("},\n", f);
        fprintf(f, "  \"stalls_total\": %llu, \"stalls_window\": %llu, \"stalled_viewers\": %llu,\n",
                (unsigned long long)stalls, (unsigned long long)stalls_win, (unsigned long long)stalled_viewers);
        fprintf(f, "  \"failures\": {");
        for (int j = 0; j < nreasons; j++) fprintf(f, "%s\"%s\": %d", j ? ", " : "", reasons[j], rcount[j]);
        fputs("},\n", f);
        fprintf(f, "  \"loadgen\": {\"cpu_pct_window\": %.2f, \"user_pct_window\": %.2f, \"sys_pct_window\": %.2f, "
                   "\"cpu_pct_total\": %.2f, \"maxrss_kb\": %ld, \"cpu\": %d, \"batch_ms_avg\": %.1f, \"batch_ms_max\": %.1f, \"probes\": %d, \"recv_per_s_window\": %.0f, "
                   "\"bytes_per_recv_window\": %.0f, \"epoll_waits_per_s_window\": %.0f}\n}\n",
                cpu_win, usr_win, sys_win, cpu_tot, ru1.ru_maxrss, opt_cpu, batch_ms_win_sum / actual_win, batch_ms_max,
                opt_probes < opt_viewers ? opt_probes : opt_viewers, n_recv_win / actual_win,
                n_recv_win ? (double)total_bytes_win / n_recv_win : 0, n_wait_win / actual_win);
        if (f != stdout) fclose(f);
    }
    qsort(fk, nfk, sizeof *fk, cmpd);
    qsort(fks, nfk, sizeof *fks, cmpd);
    if (opt_hold > 0) {
        qsort(jw_key, jw_nkey, sizeof *jw_key, cmpd);
        fprintf(stderr, "loadgen %s churn: hold %.1f s, in the window %llu joins ended: %llu held (%.0f/s), %d healthy "
                        "(%.1f%%), %llu failed, %llu dropped; first keyframe p50 %.0f / p99 %.0f ms\n",
                opt_proto == P_RTMP ? "rtmp" : opt_proto == P_HTTP ? "http-flv" : "ws-flv", opt_hold,
                (unsigned long long)jw_ended, (unsigned long long)jw_done, jw_done / actual_win, healthy, healthy_pct,
                (unsigned long long)jw_failed, (unsigned long long)jw_dropped, pct(jw_key, (int)jw_nkey, .5),
                pct(jw_key, (int)jw_nkey, .99));
    }
    fprintf(stderr,
            "loadgen %s: %d viewers, %d connected, %d failed, %d dropped, healthy %d (%.1f%%) at %.0f kbit/s expected, "
            "first keyframe start / end p50 %.0f / %.0f ms, latency p50 %.1f / p99 %.1f ms (%llu samples), stalls %llu, loadgen CPU %.1f%% "
            "(window)\n",
            pn, opt_viewers, connected, failed, dropped, healthy, healthy_pct, expect / 1000,
            pct(fks, nfk, .5), pct(fk, nfk, .5), lat_pct(.5), lat_pct(.99), (unsigned long long)lat_count, (unsigned long long)stalls,
            cpu_win);
    for (int i = 0; i < opt_viewers; i++) if (V[i].state != V_DONE && V[i].state != V_IDLE) viewer_close(&V[i], NULL);
    return 0;
}
