#!/usr/bin/env bash
# Builds the rgrid-node and rgrid-head container images without any registry: each is FROM
# scratch with one statically linked binary (the host's glibc target with crt-static, stripped).
# Tags: ${RGRID_IMAGE_PREFIX:-ghcr.io/rgrid}/rgrid-{node,head}:VERSION, VERSION being the crate
# version (the autoscaler's default node_image), and :latest.
#
#   scripts/build-images.sh            # release binaries (what ships)
#   RGRID_IMAGE_PROFILE=dev scripts/build-images.sh   # faster to build, larger
#
# Prints each image and its size.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${RGRID_IMAGE_PROFILE:-release}
prefix=${RGRID_IMAGE_PREFIX:-ghcr.io/rgrid}
target=$(rustc -vV | sed -n 's/^host: //p')
case "$target" in
  *-linux-gnu) ;;
  *) echo "build-images: a *-linux-gnu host is needed for a static glibc build, not $target" >&2; exit 1 ;;
esac
version=$(cargo pkgid -p rgrid-node | sed 's/.*[#@]//')

# Only this target's artifacts get these flags (host build scripts and proc macros do not).
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --profile "$profile" --target "$target" -p rgrid-node -p rgrid-head --bins

out="${CARGO_TARGET_DIR:-target}/$target/$([ "$profile" = dev ] && echo debug || echo "$profile")"
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
for name in rgrid-node rgrid-head; do
  rm -rf "${context:?}"/*
  # Stripped here rather than by a rustc flag, so the build shares its flags with other builds.
  strip -o "$context/$name" "$out/$name"
  mkdir "$context/state"
  image="$prefix/$name:$version"
  docker build -q -f "deploy/$name.Dockerfile" -t "$image" -t "$prefix/$name:latest" "$context" >/dev/null
  size=$(docker image inspect --format '{{.Size}}' "$image")
  echo "$image $((size / 1000000)) MB ($size bytes)"
done
