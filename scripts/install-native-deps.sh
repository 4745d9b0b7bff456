#!/usr/bin/env bash
# Installs what the native build needs and pip cannot provide:
#   - libjpeg-turbo's TurboJPEG headers + library (Debian bookworm: libturbojpeg0-dev),
#   - ONNX Runtime's C/C++ API headers (Debian trixie's libonnxruntime-dev, headers only: the
#     runtime library itself comes from the onnxruntime wheel and is dlopen'ed at run time).
# Idempotent: each part is skipped when already present. Needs root (or sudo) for apt.
set -euo pipefail

ORT_HEADER_DIR=/usr/local/include/onnxruntime
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# A compile-and-link probe checks exactly what the build needs. (`ldconfig -p | grep -q` fails at
# random under pipefail: grep exits at its first match and ldconfig dies of SIGPIPE.)
have_turbojpeg() {
  local probe
  probe=$(mktemp)
  printf '#include <turbojpeg.h>\nint main(void) { return tjDestroy(tjInitDecompress()); }\n' |
    cc -x c - -o "$probe" -lturbojpeg 2>/dev/null
  local status=$?
  rm -f "$probe"
  return $status
}
have_ort_headers() { [ -f "$ORT_HEADER_DIR/onnxruntime_cxx_api.h" ]; }

if ! have_turbojpeg; then
  echo "install-native-deps: installing libturbojpeg0-dev"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends libturbojpeg0-dev >/dev/null
fi

if ! have_ort_headers; then
  echo "install-native-deps: fetching ONNX Runtime headers (Debian trixie libonnxruntime-dev)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/parts"
  # A private apt configuration reaches the trixie suite without touching the system's sources.
  cat >"$work/sources.list" <<SOURCES
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
SOURCES
  apt_private=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts="$work/parts"
    -o Dir::State::Lists="$work/lists" -o Dir::Cache::Archives="$work/archives")
  apt-get "${apt_private[@]}" update -qq
  (cd "$work" && apt-get "${apt_private[@]}" download libonnxruntime-dev >/dev/null)
  dpkg -x "$work"/libonnxruntime-dev_*.deb "$work/root"
  $SUDO mkdir -p "$ORT_HEADER_DIR"
  $SUDO cp "$work"/root/usr/include/onnxruntime/*.h "$ORT_HEADER_DIR/"
fi

have_turbojpeg || { echo "install-native-deps: libturbojpeg still missing" >&2; exit 1; }
have_ort_headers || { echo "install-native-deps: ONNX Runtime headers still missing" >&2; exit 1; }
echo "install-native-deps: turbojpeg and ONNX Runtime headers present"
