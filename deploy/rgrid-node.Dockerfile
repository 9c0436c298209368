# rgrid-node in an empty image: one statically linked binary, nothing else (no shell, no libc,
# no CA bundle: the node trusts only the cluster CA pinned by its join token). Built by
# scripts/build-images.sh, which puts the binary in the build context.
#
# Run it as cloud-init does: host network, the Docker socket and a state volume mounted:
#   docker run -d --network host -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /var/lib/rgrid:/var/lib/rgrid -v /etc/rgrid/join-token:/etc/rgrid/join-token:ro \
#     --stop-timeout 90 IMAGE --head HEAD:7070 --token-file /etc/rgrid/join-token \
#     --state-dir /var/lib/rgrid
FROM scratch
COPY rgrid-node /usr/local/bin/rgrid-node
ENV PATH=/usr/local/bin RGRID_NODE_STATE_DIR=/var/lib/rgrid
VOLUME /var/lib/rgrid
# SIGTERM drains (running tasks get --drain-deadline, 60 s by default): stop with a longer timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/rgrid-node"]
