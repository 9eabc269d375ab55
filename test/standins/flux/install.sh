#!/bin/sh
# STAND-IN for flux used by the lab tests; not the real flux installer.
#
# Imitates `curl -s https://fluxcd.io/install.sh | sudo FLUX_VERSION=2.7.3 bash [BIN_DIR]`: installs the flux
# stand-in (served by the lab at @@ARTIFACT_BASE@@/flux/flux) as BIN_DIR/flux (default /usr/local/bin) with
# FLUX_VERSION stamped into it. Stand-in only: FLUX_STANDIN_ROOT prefixes the path written (unit tests).
set -e

ARTIFACT_BASE='@@ARTIFACT_BASE@@'
ROOT="${FLUX_STANDIN_ROOT:-}"
ROOT="${ROOT%/}"
BIN_DIR="${1:-/usr/local/bin}"

info() { echo '[INFO] ' "$@"; }
fatal() { echo '[ERROR] ' "$@" >&2; exit 1; }

case "${ARTIFACT_BASE}" in
    @@*) fatal "this stand-in install script must be served by the lab artifact server (its base URL was not filled in)" ;;
esac
command -v curl >/dev/null 2>&1 || fatal "curl is required"

VERSION="${FLUX_VERSION:-}"
VERSION="${VERSION#v}"
if [ -z "${VERSION}" ] || [ "${VERSION}" = latest ]; then
    info "FLUX_VERSION not set: the stand-in cannot ask GitHub for the latest release; installing its built-in version"
    VERSION=
fi
case "${VERSION}" in
    *[!0-9A-Za-z.+-]*) fatal "Invalid FLUX_VERSION '${FLUX_VERSION}'" ;;
esac

TMP_DIR=$(mktemp -d -t flux-install.XXXXXXXXXX)
trap 'rm -rf "${TMP_DIR}"' EXIT INT
URL="${ARTIFACT_BASE}/flux/flux"
info "Downloading binary ${URL}"
curl -sfL "${URL}" -o "${TMP_DIR}/flux.download" || fatal "Download failed: ${URL}"
head -n 3 "${TMP_DIR}/flux.download" | grep -q 'STAND-IN for flux' || fatal "Downloaded file from ${URL} is not the flux stand-in"
if [ -n "${VERSION}" ]; then
    info "Using ${VERSION} as release"
    sed "s/^STANDIN_STAMPED_VERSION = \"\"/STANDIN_STAMPED_VERSION = \"${VERSION}\"/" \
        "${TMP_DIR}/flux.download" >"${TMP_DIR}/flux"
else
    cp "${TMP_DIR}/flux.download" "${TMP_DIR}/flux"
fi
chmod 755 "${TMP_DIR}/flux"
mkdir -p "${ROOT}${BIN_DIR}"
info "Installing flux to ${BIN_DIR}/flux"
mv -f "${TMP_DIR}/flux" "${ROOT}${BIN_DIR}/flux"
