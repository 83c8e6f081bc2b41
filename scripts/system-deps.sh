#!/usr/bin/env bash
# Install the Debian packages the full test suite uses: a C compiler, clang for the
# second-compiler checks, ARM cross compilers and qemu-user for the embedded export
# checks. Needs root and apt-get; elsewhere it says what is missing (those tests skip).
set -euo pipefail
packages=(gcc clang make cmake gcc-arm-none-eabi gcc-arm-linux-gnueabihf qemu-user graphviz)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "system-deps: please install: ${missing[*]} (tests that need them will be skipped)" >&2
fi
