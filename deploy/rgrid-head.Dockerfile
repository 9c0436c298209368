# rgrid-head in an empty image: one statically linked binary (the Hetzner API's CA roots are
# compiled in), and its state dir owned by the unprivileged user it runs as. Built by
# scripts/build-images.sh, which puts the binary and the empty state dir in the build context.
#
#   docker run -d -p 7070:7070/udp -v rgrid-head:/var/lib/rgrid-head IMAGE --advertise HOST:7070
# The first start writes the join token and client.toml (admin credentials) to the volume.
FROM scratch
COPY rgrid-head /usr/local/bin/rgrid-head
COPY --chown=65534:65534 state/ /var/lib/rgrid-head/
ENV PATH=/usr/local/bin RGRID_STATE_DIR=/var/lib/rgrid-head RGRID_LISTEN=0.0.0.0:7070
USER 65534:65534
VOLUME /var/lib/rgrid-head
EXPOSE 7070/udp
ENTRYPOINT ["/usr/local/bin/rgrid-head"]
