# rtmpd in a container: Debian slim with Debian's Python 3.11, rtmpd installed
# from this source tree into /opt/rtmpd/venv (the path the systemd units use),
# run as the unprivileged user rtmpd with the recordings in a volume.
#
#   docker build -t rtmpd .
#   docker run -p 1935:1935 -p 8501:8501 -p 8080:8080 -v rtmpd-media:/var/lib/rtmpd/media rtmpd
#
# The default command is `twistd -n rtmpd --config /etc/rtmpd/rtmpd.toml`
# (etc/rtmpd.toml); give another one to run a gateway:
#   docker run -p 8081:8081 rtmpd flvgateway --listen tcp:8081 --upstream http://origin:8501
#
# Written for the classic builder as well as BuildKit (no RUN --mount). BASE
# can name a mirror of the same image.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
# make, nodejs and npm: `make web` installs the pages' libraries from the
# npm lock file into web/vendor/, which the package carries.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates make nodejs npm \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN make -C /src web \
    && python3 -m venv /opt/rtmpd/venv \
    && /opt/rtmpd/venv/bin/pip install --no-cache-dir '/src[redis]' \
    # twistd caches the dropins it found beside them (dropin.cache); write it
    # now, while the venv is writable.
    && /opt/rtmpd/venv/bin/twistd --help > /dev/null

FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --user-group --home-dir /var/lib/rtmpd --shell /usr/sbin/nologin rtmpd \
    && install -d -o rtmpd -g rtmpd -m 0750 /var/lib/rtmpd /var/lib/rtmpd/media
COPY --from=build /opt/rtmpd/venv /opt/rtmpd/venv
COPY etc/rtmpd.toml /etc/rtmpd/rtmpd.toml

ENV PATH=/opt/rtmpd/venv/bin:$PATH PYTHONUNBUFFERED=1
USER rtmpd
WORKDIR /var/lib/rtmpd
# Made after the directory exists with its owner, so a new named volume starts
# owned by rtmpd.
VOLUME /var/lib/rtmpd/media
# RTMP, HTTP-FLV / WS-FLV, web port (pages, recordings, /api, /metrics).
EXPOSE 1935 8501 8080
# twistd stops on SIGTERM after finalising the recordings: give `docker stop`
# time for them (`--time 60`; the default is 10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "--logfile=-"]
CMD ["rtmpd", "--config", "/etc/rtmpd/rtmpd.toml"]
