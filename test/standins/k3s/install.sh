#!/bin/sh
# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# A test fixture imitating the k3s install script (https://get.k3s.io) for what a provisioning tool uses.
# The lab's artifact server serves it with @@ARTIFACT_BASE@@ replaced by its base URL; it installs the
# Python stand-in binary (test/standins/k3s/k3s-standin.py) as /usr/local/bin/k3s with the requested version
# stamped into it, and its modules (the files k3s/modules.txt names) in /usr/local/lib/k3s-standin/ (the real k3s
# is one binary; the stand-in is several files, counted as one install: all are hashed for "No change detected").
# The stand-in needs python3 and PyYAML: a host without python3-yaml gets it with apt-get, as the real script
# installs k3s-selinux with yum where it needs it. Written from scratch for the lab; see test/standins/README.md.
#
# Honoured like the real script: INSTALL_K3S_VERSION (required: the stand-in cannot resolve a channel),
# INSTALL_K3S_EXEC and script arguments ("server"/"agent" + flags), K3S_URL, K3S_TOKEN, K3S_TOKEN_FILE
# (and every other K3S_* variable, kept in the service env file), INSTALL_K3S_SKIP_DOWNLOAD,
# INSTALL_K3S_SKIP_START, INSTALL_K3S_SKIP_ENABLE, INSTALL_K3S_FORCE_RESTART, INSTALL_K3S_BIN_DIR,
# INSTALL_K3S_SYSTEMD_DIR, INSTALL_K3S_NAME, INSTALL_K3S_TYPE, INSTALL_K3S_SYMLINK, GITHUB_URL.
# Stand-in only: K3S_STANDIN_ROOT prefixes every path written and skips systemctl (for unit tests); only the
# releases in @@ARTIFACT_BASE@@/k3s/releases.txt install (any other version fails to download, as from GitHub);
# test fault: while /etc/k3s-standin/fail-install exists the download does not verify and nothing is installed.
set -e
set -o noglob

ARTIFACT_BASE='@@ARTIFACT_BASE@@'
ROOT="${K3S_STANDIN_ROOT:-}"
ROOT="${ROOT%/}"

info() {
    echo '[INFO] ' "$@"
}
warn() {
    echo '[WARN] ' "$@" >&2
}
fatal() {
    echo '[ERROR] ' "$@" >&2
    exit 1
}

# --- a process supervisor is required, as in the real script (skipped under K3S_STANDIN_ROOT) ---
verify_system() {
    if [ -n "${ROOT}" ]; then
        HAS_SYSTEMD=true
        return
    fi
    if [ -x /bin/systemctl ] || type systemctl >/dev/null 2>&1; then
        HAS_SYSTEMD=true
        return
    fi
    fatal 'Can not find systemd or openrc to use as a process supervisor for k3s'
}

# --- single-quote one argument for the unit file ---
quote() {
    printf '%s\n' "$1" | sed "s/'/'\\\\''/g;1s/^/'/;\$s/\$/'/"
}

quote_indent() {
    printf ' \\\n'
    for arg in "$@"; do
        printf '\t%s \\\n' "$(quote "$arg")"
    done
}

verify_k3s_url() {
    case "${K3S_URL}" in
        "") ;;
        https://*) ;;
        *) fatal "Only https:// URLs are supported for K3S_URL (have ${K3S_URL})" ;;
    esac
}

setup_env() {
    case "$1" in
        -*|"")
            if [ -z "${K3S_URL}" ]; then
                CMD_K3S=server
            else
                if [ -z "${K3S_TOKEN}" ] && [ -z "${K3S_TOKEN_FILE}" ]; then
                    fatal "Defaulted k3s exec command to 'agent' because K3S_URL is defined, but K3S_TOKEN or K3S_TOKEN_FILE is not defined."
                fi
                CMD_K3S=agent
            fi
            ;;
        *)
            CMD_K3S=$1
            shift
            ;;
    esac

    verify_k3s_url

    CMD_K3S_EXEC="${CMD_K3S}$(quote_indent "$@")"

    if [ -n "${INSTALL_K3S_NAME}" ]; then
        SYSTEM_NAME=k3s-${INSTALL_K3S_NAME}
    elif [ "${CMD_K3S}" = server ]; then
        SYSTEM_NAME=k3s
    else
        SYSTEM_NAME=k3s-${CMD_K3S}
    fi
    case "${SYSTEM_NAME}" in
        *[!A-Za-z0-9._-]*) fatal "Invalid characters for system name: ${SYSTEM_NAME}" ;;
    esac

    SYSTEMD_TYPE=${INSTALL_K3S_TYPE:-notify}
    BIN_DIR=${INSTALL_K3S_BIN_DIR:-/usr/local/bin}
    # where k3s-standin.py looks for its module: ../lib/k3s-standin of the binary's directory
    LIB_DIR=$(dirname "${BIN_DIR}")/lib/k3s-standin
    SYSTEMD_DIR=${INSTALL_K3S_SYSTEMD_DIR:-/etc/systemd/system}

    SERVICE_K3S=${SYSTEM_NAME}.service
    UNINSTALL_K3S_SH=${BIN_DIR}/${SYSTEM_NAME}-uninstall.sh
    KILLALL_K3S_SH=${BIN_DIR}/k3s-killall.sh
    FILE_K3S_SERVICE=${SYSTEMD_DIR}/${SERVICE_K3S}
    FILE_K3S_ENV=${SYSTEMD_DIR}/${SERVICE_K3S}.env

    mkdir -p "${ROOT}${BIN_DIR}" "${ROOT}${SYSTEMD_DIR}"
    PRE_INSTALL_HASHES=$(get_installed_hashes)
}

get_installed_hashes() {
    sha256sum "${ROOT}${BIN_DIR}/k3s" "${ROOT}${FILE_K3S_SERVICE}" "${ROOT}${FILE_K3S_ENV}" 2>&1 || true
    [ ! -d "${ROOT}${LIB_DIR}" ] || find "${ROOT}${LIB_DIR}" -type f -exec sha256sum {} + | sort
}

can_skip_download_binary() {
    [ "${INSTALL_K3S_SKIP_DOWNLOAD}" = true ] || [ "${INSTALL_K3S_SKIP_DOWNLOAD}" = binary ]
}

setup_verify_arch() {
    ARCH=${ARCH:-$(uname -m)}
    case $ARCH in
        amd64|x86_64) ARCH=amd64; SUFFIX= ;;
        arm64|aarch64) ARCH=arm64; SUFFIX=-${ARCH} ;;
        arm*) ARCH=arm; SUFFIX=-${ARCH}hf ;;
        s390x) ARCH=s390x; SUFFIX=-${ARCH} ;;
        *) fatal "Unsupported architecture $ARCH" ;;
    esac
}

get_release_version() {
    if [ -z "${INSTALL_K3S_VERSION}" ]; then
        fatal "INSTALL_K3S_VERSION is required by the k3s stand-in installer: it cannot resolve a release channel (no internet in the lab); pin a version such as v1.34.3+k3s1"
    fi
    case "${INSTALL_K3S_VERSION}" in
        v[0-9]*) ;;
        *) fatal "Invalid INSTALL_K3S_VERSION '${INSTALL_K3S_VERSION}': expected a release tag such as v1.34.3+k3s1" ;;
    esac
    case "${INSTALL_K3S_VERSION}" in
        *[!A-Za-z0-9.+-]*) fatal "Invalid INSTALL_K3S_VERSION '${INSTALL_K3S_VERSION}'" ;;
    esac
    VERSION_K3S=${INSTALL_K3S_VERSION}
    info "Using ${VERSION_K3S} as release"
}

download() {
    # $1 = file, $2 = url
    set +e
    curl -o "$1" -sfL "$2"
    status=$?
    set -e
    [ $status -eq 0 ] || fatal "Download failed: $2"
}

# The stand-in parses YAML with PyYAML (Debian's python3-yaml, in the lab image). A disk flashed from an older image
# lacks it: install it as the real script installs the packages k3s needs on some distributions.
ensure_pyyaml() {
    python3 -c 'import yaml' 2>/dev/null && return
    if [ -n "${ROOT}" ]; then
        warn "python3 has no PyYAML (python3-yaml): the k3s stand-in will not start"
        return
    fi
    info "Installing python3-yaml, which the k3s stand-in needs"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-yaml >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-yaml >/dev/null; } ||
        fatal "Can not install python3-yaml, which the k3s stand-in needs"
}

download_and_verify() {
    if can_skip_download_binary; then
        info 'Skipping k3s download and verify'
        [ -x "${ROOT}${BIN_DIR}/k3s" ] || fatal "Executable k3s binary not found at ${BIN_DIR}/k3s"
        [ -f "${ROOT}${LIB_DIR}/common.py" ] || fatal "The k3s stand-in's modules not found in ${LIB_DIR}"
        return
    fi
    setup_verify_arch
    command -v curl >/dev/null 2>&1 || fatal 'Can not find curl or wget for downloading files'
    get_release_version
    if [ -n "${GITHUB_URL}" ]; then
        BIN_URL=${GITHUB_URL}/download/${VERSION_K3S}/k3s${SUFFIX}
        MODULE_URL=${GITHUB_URL}/download/${VERSION_K3S}
    else
        case "${ARTIFACT_BASE}" in
            @@*) fatal "this stand-in install script must be served by the lab artifact server (its base URL was not filled in); set GITHUB_URL or INSTALL_K3S_SKIP_DOWNLOAD=true" ;;
        esac
        BIN_URL=${ARTIFACT_BASE}/k3s/k3s-standin.py
        MODULE_URL=${ARTIFACT_BASE}/k3s
        RELEASES_URL=${ARTIFACT_BASE}/k3s/releases.txt
    fi
    TMP_DIR=$(mktemp -d -t k3s-install.XXXXXXXXXX)
    trap 'rm -rf "${TMP_DIR}"' EXIT INT
    # Only a release the lab offers can be downloaded, as only a release k3s made is on GitHub.
    if [ -n "${RELEASES_URL:-}" ]; then
        info "Checking that ${VERSION_K3S} is a release the lab offers (${RELEASES_URL})"
        download "${TMP_DIR}/releases.txt" "${RELEASES_URL}"
        if ! grep -qxF "${VERSION_K3S}" "${TMP_DIR}/releases.txt"; then
            fatal "Download failed: ${VERSION_K3S} is no release the lab offers ($(grep -v '^#' "${TMP_DIR}/releases.txt" | tr '\n' ' ')- see ${RELEASES_URL})"
        fi
    fi
    info "Downloading binary ${BIN_URL}"
    download "${TMP_DIR}/k3s.download" "${BIN_URL}"
    head -n 5 "${TMP_DIR}/k3s.download" | grep -q 'STAND-IN for k3s' ||
        fatal "Downloaded file from ${BIN_URL} is not the k3s stand-in"
    mkdir "${TMP_DIR}/lib"
    download "${TMP_DIR}/lib/modules.txt" "${MODULE_URL}/modules.txt"
    for module in $(grep -v '^#' "${TMP_DIR}/lib/modules.txt"); do
        case "${module}" in
            *[!A-Za-z0-9_]*.py|*/*|.*) fatal "Bad module name ${module} in ${MODULE_URL}/modules.txt" ;;
        esac
        download "${TMP_DIR}/lib/${module}" "${MODULE_URL}/${module}"
        head -n 2 "${TMP_DIR}/lib/${module}" | grep -q 'STAND-IN for k3s' ||
            fatal "Downloaded file from ${MODULE_URL}/${module} is not a module of the k3s stand-in"
    done
    # Test fault: while this file exists, the download does not verify, and nothing is installed (as with the real
    # script, which checks the binary's sha256 before it replaces anything). The tests make one host's install fail.
    if [ -e "${ROOT}/etc/k3s-standin/fail-install" ]; then
        info "Verifying binary download"
        fatal "Download sha256 does not match $(sha256sum "${TMP_DIR}/k3s.download" | cut -d' ' -f1), got $(printf 'corrupt' | sha256sum | cut -d' ' -f1) (stand-in fault: /etc/k3s-standin/fail-install exists)"
    fi
    if ! diff -r "${TMP_DIR}/lib" "${ROOT}${LIB_DIR}" >/dev/null 2>&1; then
        info "Installing the stand-in's modules to ${LIB_DIR}"
        chmod 755 "${TMP_DIR}/lib"
        find "${TMP_DIR}/lib" -type f -exec chmod 644 {} +
        [ -n "${ROOT}" ] || chown -R root:root "${TMP_DIR}/lib"
        mkdir -p "$(dirname "${ROOT}${LIB_DIR}")"
        rm -rf "${ROOT}${LIB_DIR}.old"
        [ ! -d "${ROOT}${LIB_DIR}" ] || mv "${ROOT}${LIB_DIR}" "${ROOT}${LIB_DIR}.old"
        mv "${TMP_DIR}/lib" "${ROOT}${LIB_DIR}"
        rm -rf "${ROOT}${LIB_DIR}.old"
    fi
    ensure_pyyaml
    # stamp the requested version into the stand-in, as a real release binary carries its version
    sed "s/^STANDIN_STAMPED_VERSION = \"\"/STANDIN_STAMPED_VERSION = \"${VERSION_K3S}\"/" \
        "${TMP_DIR}/k3s.download" >"${TMP_DIR}/k3s.bin"
    if [ -x "${ROOT}${BIN_DIR}/k3s" ] && cmp -s "${TMP_DIR}/k3s.bin" "${ROOT}${BIN_DIR}/k3s"; then
        info 'Skipping binary downloaded, installed k3s matches hash'
        return
    fi
    info "Verifying binary download"
    chmod 755 "${TMP_DIR}/k3s.bin"
    info "Installing k3s to ${BIN_DIR}/k3s"
    [ -n "${ROOT}" ] || chown root:root "${TMP_DIR}/k3s.bin"
    mv -f "${TMP_DIR}/k3s.bin" "${ROOT}${BIN_DIR}/k3s"
}

create_symlinks() {
    [ "${INSTALL_K3S_SYMLINK}" = skip ] && return
    for cmd in kubectl crictl ctr; do
        if [ ! -e "${ROOT}${BIN_DIR}/${cmd}" ] || [ "${INSTALL_K3S_SYMLINK}" = force ]; then
            which_cmd=
            [ -n "${ROOT}" ] || which_cmd=$(command -v ${cmd} 2>/dev/null || true)
            if [ -z "${which_cmd}" ] || [ "${INSTALL_K3S_SYMLINK}" = force ]; then
                info "Creating ${BIN_DIR}/${cmd} symlink to k3s"
                ln -sf k3s "${ROOT}${BIN_DIR}/${cmd}"
            else
                info "Skipping ${BIN_DIR}/${cmd} symlink to k3s, command exists in PATH at ${which_cmd}"
            fi
        else
            info "Skipping ${BIN_DIR}/${cmd} symlink to k3s, already exists"
        fi
    done
}

create_killall() {
    info "Creating killall script ${KILLALL_K3S_SH}"
    cat >"${ROOT}${KILLALL_K3S_SH}" <<EOF
#!/bin/sh
# STAND-IN for k3s used by the lab tests; not the real k3s. Stops the k3s stand-in services.
[ \$(id -u) -eq 0 ] || exec sudo \$0 \$@
for service in ${SYSTEMD_DIR}/k3s*.service; do
    [ -s "\$service" ] && systemctl stop \$(basename "\$service")
done
pkill -TERM -f '^[^ ]*python3? ${BIN_DIR}/k3s (server|agent)' 2>/dev/null || true
exit 0
EOF
    chmod 755 "${ROOT}${KILLALL_K3S_SH}"
}

create_uninstall() {
    info "Creating uninstall script ${UNINSTALL_K3S_SH}"
    cat >"${ROOT}${UNINSTALL_K3S_SH}" <<EOF
#!/bin/sh
# STAND-IN for k3s used by the lab tests; not the real k3s. Removes what the stand-in install script wrote.
set -x
R='${ROOT}'
[ -n "\$R" ] || [ \$(id -u) -eq 0 ] || exec sudo \$0 \$@

if [ -z "\$R" ]; then
    ${KILLALL_K3S_SH}
    if command -v systemctl; then
        systemctl disable ${SYSTEM_NAME}
        systemctl reset-failed ${SYSTEM_NAME}
        systemctl daemon-reload
    fi
fi

rm -f "\$R${FILE_K3S_SERVICE}"
rm -f "\$R${FILE_K3S_ENV}"

remove_uninstall() {
    rm -f "\$R${UNINSTALL_K3S_SH}"
}
trap remove_uninstall EXIT

if (ls "\$R${SYSTEMD_DIR}"/k3s*.service) >/dev/null 2>&1; then
    set +x; echo 'Additional k3s services installed, skipping uninstall of k3s'; set -x
    exit
fi

for cmd in kubectl crictl ctr; do
    if [ -L "\$R${BIN_DIR}/\$cmd" ]; then
        rm -f "\$R${BIN_DIR}/\$cmd"
    fi
done

rm -rf "\$R/etc/rancher/k3s"
rm -rf "\$R/run/k3s"
rm -rf "\$R/var/lib/rancher/k3s"
rm -rf "\$R/var/lib/kubelet"
rm -f "\$R${BIN_DIR}/k3s"
rm -rf "\$R${LIB_DIR}"
rm -f "\$R${KILLALL_K3S_SH}"
EOF
    chmod 755 "${ROOT}${UNINSTALL_K3S_SH}"
}

systemd_disable() {
    [ -n "${ROOT}" ] || systemctl disable ${SYSTEM_NAME} >/dev/null 2>&1 || true
    rm -f "${ROOT}/etc/systemd/system/${SERVICE_K3S}" || true
    rm -f "${ROOT}/etc/systemd/system/${SERVICE_K3S}.env" || true
}

# --- the env file is rewritten from the current environment on every run: K3S_* not passed now are gone ---
create_env_file() {
    info "env: Creating environment file ${FILE_K3S_ENV}"
    touch "${ROOT}${FILE_K3S_ENV}"
    chmod 0600 "${ROOT}${FILE_K3S_ENV}"
    sh -c export | while read -r x v; do echo "$v"; done | grep -E '^(K3S|CONTAINERD)_' |
        grep -v '^K3S_STANDIN_' >"${ROOT}${FILE_K3S_ENV}" || true
    sh -c export | while read -r x v; do echo "$v"; done | grep -Ei '^(NO|HTTP|HTTPS)_PROXY' \
        >>"${ROOT}${FILE_K3S_ENV}" || true
}

create_systemd_service_file() {
    info "systemd: Creating service file ${FILE_K3S_SERVICE}"
    cat >"${ROOT}${FILE_K3S_SERVICE}" <<EOF
# STAND-IN for k3s used by the lab tests; not the real k3s.
[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=${SYSTEMD_TYPE}
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-${FILE_K3S_ENV}
KillMode=process
Delegate=yes
User=root
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=${BIN_DIR}/k3s \\
    ${CMD_K3S_EXEC}

EOF
}

service_enable_and_start() {
    cmdline="${ROOT}/run/k3s-standin/cmdline"
    if [ -f "${cmdline}" ] && ! grep -q 'cgroup_enable=memory' "${cmdline}"; then
        info 'Failed to find memory cgroup, you may need to add "cgroup_memory=1 cgroup_enable=memory" to your linux cmdline (/boot/cmdline.txt on a Raspberry Pi)'
    fi

    [ "${INSTALL_K3S_SKIP_ENABLE}" = true ] && return

    if [ -n "${ROOT}" ]; then
        info "K3S_STANDIN_ROOT is set: not calling systemctl (would enable and start ${SYSTEM_NAME})"
        return
    fi
    info "systemd: Enabling ${SYSTEM_NAME} unit"
    systemctl enable "${FILE_K3S_SERVICE}" >/dev/null
    systemctl daemon-reload >/dev/null

    [ "${INSTALL_K3S_SKIP_START}" = true ] && return

    POST_INSTALL_HASHES=$(get_installed_hashes)
    if [ "${PRE_INSTALL_HASHES}" = "${POST_INSTALL_HASHES}" ] && [ "${INSTALL_K3S_FORCE_RESTART}" != true ]; then
        info 'No change detected so skipping service start'
        return
    fi

    info "systemd: Starting ${SYSTEM_NAME}"
    systemctl restart ${SYSTEM_NAME}
}

# --- INSTALL_K3S_EXEC words come first, then the script's own arguments (words split on blanks) ---
# shellcheck disable=SC2086
set -- ${INSTALL_K3S_EXEC} "$@"

{
    verify_system
    setup_env "$@"
    download_and_verify
    create_symlinks
    create_killall
    create_uninstall
    systemd_disable
    create_env_file
    create_systemd_service_file
    service_enable_and_start
}
