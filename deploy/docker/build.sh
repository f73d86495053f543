#!/usr/bin/env bash
# The image's build steps, in a script CI runs too (no container engine on CI machines): the
# Dockerfile's builder stage runs exactly this. Installs what the build needs on Debian bookworm,
# builds the release binaries and puts them, with the config and rules, under $1 (the layout the
# runtime stage copies).
set -euo pipefail
out="${1:?usage: build.sh OUT_DIR}"
cd "$(dirname "$0")/../.."
if [ "$(id -u)" = 0 ] && ! dpkg -s libhyperscan-dev >/dev/null 2>&1; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends libhyperscan-dev pkg-config clang cmake
fi
cargo build --release --locked -p streammask -p streammask-mock
target="${CARGO_TARGET_DIR:-target}/release"
mkdir -p "$out/usr/local/bin" "$out/etc/streammask/rules"
install -m 0755 "$target/streammask" "$target/streammask-mock" "$out/usr/local/bin/"
install -m 0644 deploy/docker/streammask.toml "$out/etc/streammask/streammask.toml"
echo "built into $out: $(ls "$out/usr/local/bin" | tr '\n' ' ')"
