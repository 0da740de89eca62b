# Multi-stage build of the DMZ IoT Connector.
#   docker build -t iot-connector .
#   docker run -v $PWD/config.toml:/etc/iot-connector/config.toml:ro -v iot-state:/var/lib/iot-connector \
#       -p 127.0.0.1:8081:8081 iot-connector
# In the container, set [http] listen = "0.0.0.0:8081" so the published port reaches it.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The workspace's default members are the shipped set: the supervisor, the uplink and every
# crate under workers/. Each of their executables goes into the image.
RUN cargo build --release --locked \
    && mkdir /out \
    && find target/release -maxdepth 1 -type f -executable -name 'iot-connector*' -exec cp {} /out/ \;

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 1000 --home-dir /var/lib/iot-connector --shell /usr/sbin/nologin iot-connector \
    && mkdir -p /var/lib/iot-connector /run/iot-connector /etc/iot-connector \
    && chown iot-connector:iot-connector /var/lib/iot-connector /run/iot-connector
COPY --from=build /out/ /usr/bin/
ENV STATE_DIRECTORY=/var/lib/iot-connector RUNTIME_DIRECTORY=/run/iot-connector
USER 1000:1000
VOLUME ["/var/lib/iot-connector"]
EXPOSE 8081
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD curl -fsS http://127.0.0.1:8081/health >/dev/null || exit 1
ENTRYPOINT ["/usr/bin/iot-connector"]
CMD ["run", "--config", "/etc/iot-connector/config.toml"]
