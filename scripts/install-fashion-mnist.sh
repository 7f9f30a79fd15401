#!/usr/bin/env bash
# Fashion-MNIST for the `fashion_mnist` DVC stage (data/images.py: build_fashion_mnist): Debian's package
# dataset-fashion-mnist installs the official idx files under /usr/share/datasets/fashion-mnist. Installs it when
# they are missing; does nothing when they are there, or when $PAPEROPS_FASHION_MNIST_ROOT names a copy elsewhere.
set -euo pipefail

ROOT="${PAPEROPS_FASHION_MNIST_ROOT:-/usr/share/datasets/fashion-mnist}"
if [ -f "$ROOT/train-images-idx3-ubyte.gz" ] && [ -f "$ROOT/t10k-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if [ -n "${PAPEROPS_FASHION_MNIST_ROOT:-}" ]; then
  echo "PAPEROPS_FASHION_MNIST_ROOT=$ROOT holds no Fashion-MNIST idx files: point it at the unpacked package's" \
       "usr/share/datasets/fashion-mnist, or unset it to install Debian's package there" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "Fashion-MNIST is missing and this is not a Debian/Ubuntu machine: unpack Debian's dataset-fashion-mnist" \
       "package (or the official idx.gz files) anywhere and set PAPEROPS_FASHION_MNIST_ROOT to that directory" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "Fashion-MNIST is missing: run 'apt-get install dataset-fashion-mnist' as root" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing Debian's dataset-fashion-mnist package (the fashion_mnist data stage)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null
