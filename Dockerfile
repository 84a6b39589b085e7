# The flashsale binary (with the browser page embedded) on a small Debian image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin flashsale

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/flashsale flashsale
COPY --from=build /src/target/release/flashsale /usr/local/bin/flashsale
USER flashsale
WORKDIR /var/lib/flashsale
EXPOSE 50051 9090
ENTRYPOINT ["flashsale"]
CMD ["serve"]
