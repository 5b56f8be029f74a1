#!/usr/bin/env bash
# Build a real kube-apiserver v1.20.2 from Debian bookworm's `kubernetes` source package and cache it.
#
# Usage: bash tests/support/kube/build-apiserver.sh        (prints the cached binary's path last)
#
# What it does (see SPEC.md "Test environment", Kubernetes apiserver row):
#   1. apt: makes sure a bookworm deb-src entry exists, installs dpkg-dev golang-go rsync jq make
#      golang-github-modern-go-reflect2-dev (build) and etcd-server (runtime; the helpers need `etcd`).
#   2. `apt-get source kubernetes=$DEB_VERSION` into a build directory.
#   3. Replaces vendor/github.com/modern-go/reflect2 (v1.0.1, which segfaults under Go >= 1.18) with
#      Debian's reflect2 1.0.2 sources from /usr/share/gocode.
#   4. GO111MODULE=off GOPROXY=off CGO_ENABLED=0 make WHAT=cmd/kube-apiserver, with a
#      KUBE_GIT_VERSION_FILE (the source package has no .git to read the version from).
#   5. Copies the binary to $KUBEOBS_CACHE/kube-apiserver-v1.20.2 (atomically) and deletes the build tree.
#
# Idempotent: when the cached binary exists and answers --version it exits 0 at once (a few ms, plus an
# etcd install if `etcd` is missing). Concurrent runs serialise on a lock file.
#
# Environment:
#   KUBEOBS_CACHE       cache directory (default: $HOME/.cache/kubeobs)
#   KUBEOBS_BUILD_DIR   where the source is unpacked and built (default: $KUBEOBS_CACHE/build)
#   KUBEOBS_KEEP_BUILD  1: keep the build tree (about 1.8 GB) after a successful build
#   KUBEOBS_SKIP_ETCD   1: do not install etcd-server
set -euo pipefail

K8S_VERSION=v1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
SUITE=bookworm
CACHE=${KUBEOBS_CACHE:-${HOME:-/root}/.cache/kubeobs}
OUT=$CACHE/kube-apiserver-$K8S_VERSION
BUILD_DIR=${KUBEOBS_BUILD_DIR:-$CACHE/build}
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2

T0=$(date +%s)
log() { printf '[build-apiserver %4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() { printf '[build-apiserver] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || printf "[build-apiserver] FAILED (exit %s) at line %s: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2' EXIT

cached_ok() {
  [ -x "$OUT" ] && "$OUT" --version 2>/dev/null | grep -qx "Kubernetes $K8S_VERSION"
}

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  # apt_install PKG...: install the packages that are not installed yet.
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  is_root || die "need root to apt-get install ${missing[*]} (or install them first)"
  log "apt-get install ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      >/dev/null 2>"$CACHE/apt-install.err"; then
    log "install failed; running apt-get update and retrying"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      >/dev/null 2>"$CACHE/apt-install.err" || { cat "$CACHE/apt-install.err" >&2; die "apt-get install ${missing[*]} failed"; }
  fi
}

ensure_etcd() {
  [ "${KUBEOBS_SKIP_ETCD:-0}" = 1 ] && return 0
  command -v etcd >/dev/null 2>&1 && return 0
  # etcd 3.4 from Debian: the version Kubernetes 1.20 was released against. policy-rc.d on these machines
  # keeps the package from starting a system etcd service.
  apt_install etcd-server
  command -v etcd >/dev/null 2>&1 || die "etcd-server installed but no etcd on PATH"
  log "etcd: $(etcd --version 2>/dev/null | head -1)"
}

mkdir -p "$CACHE"

# -- fast path -------------------------------------------------------------------------------------
if cached_ok; then
  ensure_etcd
  echo "$OUT"
  exit 0
fi

# Serialise concurrent builds; re-check once we hold the lock.
exec 9>"$CACHE/.build-apiserver.lock"
if ! flock -n 9; then
  log "another build holds $CACHE/.build-apiserver.lock; waiting"
  flock 9
fi
if cached_ok; then
  ensure_etcd
  echo "$OUT"
  exit 0
fi

log "no usable cached binary at $OUT; building kube-apiserver $K8S_VERSION from Debian source $DEB_VERSION"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script needs a Debian $SUITE machine"

# -- 1. deb-src entry --------------------------------------------------------------------------------
has_deb_src() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    grep -qE "^[[:space:]]*deb-src[[:space:]].*[[:space:]]$SUITE([[:space:]]|$)" "$f" && return 0
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822: a stanza whose Types has deb-src and whose Suites has $SUITE (and is not Enabled: no).
    awk -v suite="$SUITE" '
      function check() { if (types ~ /(^| )deb-src( |$)/ && suites ~ ("(^| )" suite "( |$)") && enabled != "no") found = 1 }
      /^[[:space:]]*$/ { check(); types = suites = enabled = ""; next }
      tolower($1) == "types:"   { $1 = ""; types = $0 " " }
      tolower($1) == "suites:"  { $1 = ""; suites = $0 " " }
      tolower($1) == "enabled:" { enabled = tolower($2) }
      END { check(); exit found ? 0 : 1 }' "$f" && return 0
  done
  return 1
}

SRC_LIST=/etc/apt/sources.list.d/kubeobs-deb-src.sources
need_update=0
if ! has_deb_src; then
  is_root || die "no deb-src entry for $SUITE and not root: add one to /etc/apt/sources.list.d"
  # Mirror the machine's own `deb` entries for the main suite, so the same mirror and keyring are used.
  uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk -v suite="$SUITE" '
      function check() { if (types ~ / deb / && suites ~ (" " suite " ") && uri != "" && out == "") out = uri }
      /^[[:space:]]*$/ { check(); types = suites = uri = ""; next }
      tolower($1) == "types:"  { $1 = ""; types = $0 " " }
      tolower($1) == "suites:" { $1 = ""; suites = $0 " " }
      tolower($1) == "uris:"   { uri = $2 }
      END { check(); print out }' "$f")
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk -v suite="$SUITE" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i == suite && $(i-1) ~ /:\/\//) { print $(i-1); exit } }' /etc/apt/sources.list)
  fi
  uri=${uri:-http://deb.debian.org/debian}
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  log "adding deb-src entry for $SUITE ($uri) in $SRC_LIST"
  {
    echo "# Added by kubeobs tests/support/kube/build-apiserver.sh (apt-get source kubernetes)."
    echo "Types: deb-src"
    echo "URIs: $uri"
    echo "Suites: $SUITE"
    echo "Components: main"
    [ -f "$keyring" ] && echo "Signed-By: $keyring"
  } >"$SRC_LIST"
  need_update=1
fi

if [ $need_update = 0 ] && ! apt-cache showsrc kubernetes 2>/dev/null | grep -qx "Version: $DEB_VERSION"; then
  need_update=1
fi
if [ $need_update = 1 ]; then
  log "apt-get update"
  apt-get update -qq || die "apt-get update failed"
fi
apt-cache showsrc kubernetes 2>/dev/null | grep -qx "Version: $DEB_VERSION" \
  || die "apt has no source package kubernetes=$DEB_VERSION (have: $(apt-cache showsrc kubernetes 2>/dev/null | sed -n 's/^Version: //p' | tr '\n' ' '))"

# -- 2. build tools ---------------------------------------------------------------------------------
apt_install dpkg-dev golang-go rsync jq make patch xz-utils golang-github-modern-go-reflect2-dev
ensure_etcd
command -v go >/dev/null 2>&1 || die "golang-go installed but no go on PATH"
log "$(go version)"
[ -f "$REFLECT2_SRC/reflect2.go" ] || die "no reflect2 sources at $REFLECT2_SRC (golang-github-modern-go-reflect2-dev)"

# -- 3. source ---------------------------------------------------------------------------------------
mkdir -p "$BUILD_DIR"
SRC_DIR=$BUILD_DIR/kubernetes-src
if [ ! -f "$SRC_DIR/.kubeobs-unpacked" ]; then
  rm -rf "$SRC_DIR" "$BUILD_DIR/fetch"
  mkdir -p "$BUILD_DIR/fetch"
  log "apt-get source kubernetes=$DEB_VERSION"
  # As root apt downloads as the _apt user; let it write into the fetch directory.
  if is_root && id _apt >/dev/null 2>&1; then chown _apt "$BUILD_DIR/fetch"; fi
  (cd "$BUILD_DIR/fetch" && apt-get source -qq "kubernetes=$DEB_VERSION" >"$BUILD_DIR/apt-source.log" 2>&1) \
    || { tail -20 "$BUILD_DIR/apt-source.log" >&2; die "apt-get source kubernetes=$DEB_VERSION failed"; }
  unpacked=$(find "$BUILD_DIR/fetch" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
  [ -n "$unpacked" ] && [ -f "$unpacked/Makefile" ] || die "apt-get source did not unpack a kubernetes tree into $BUILD_DIR/fetch"
  mv "$unpacked" "$SRC_DIR"
  rm -rf "$BUILD_DIR/fetch"
  touch "$SRC_DIR/.kubeobs-unpacked"
  log "source unpacked in $SRC_DIR ($(du -sh "$SRC_DIR" | cut -f1))"
else
  log "reusing unpacked source in $SRC_DIR"
fi

# -- 4. reflect2 ------------------------------------------------------------------------------------
VENDOR_REFLECT2=$SRC_DIR/vendor/github.com/modern-go/reflect2
[ -d "$VENDOR_REFLECT2" ] || die "no vendored reflect2 at $VENDOR_REFLECT2"
log "replacing vendored reflect2 with Debian's ($(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev))"
rsync -a --delete --exclude='*_test.go' --exclude='test*/' "$REFLECT2_SRC/" "$VENDOR_REFLECT2/"

# -- 5. build ---------------------------------------------------------------------------------------
cat >"$SRC_DIR/.kubeobs-version" <<VERSION
KUBE_GIT_COMMIT='faecb196815e248d3ecfb03c680a4507229c2a56'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='$K8S_VERSION'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
VERSION

log "make WHAT=cmd/kube-apiserver (GOPATH mode; takes a few minutes on 2 cores)"
(
  cd "$SRC_DIR"
  export GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS= GOTOOLCHAIN=local
  export KUBE_GIT_VERSION_FILE=$SRC_DIR/.kubeobs-version
  make WHAT=cmd/kube-apiserver >"$BUILD_DIR/make.log" 2>&1
) || { tail -40 "$BUILD_DIR/make.log" >&2; die "make WHAT=cmd/kube-apiserver failed (full log: $BUILD_DIR/make.log)"; }

BIN=$SRC_DIR/_output/local/bin/linux/$(go env GOARCH)/kube-apiserver
[ -x "$BIN" ] || BIN=$(find "$SRC_DIR/_output" -type f -name kube-apiserver -perm -u+x | head -1)
[ -n "$BIN" ] && [ -x "$BIN" ] || die "build finished but no kube-apiserver binary under $SRC_DIR/_output"
"$BIN" --version | grep -qx "Kubernetes $K8S_VERSION" || die "built binary reports '$("$BIN" --version 2>&1 | head -1)', expected Kubernetes $K8S_VERSION"

cp "$BIN" "$OUT.tmp.$$"
chmod 0755 "$OUT.tmp.$$"
mv -f "$OUT.tmp.$$" "$OUT"
log "cached $OUT ($(du -h "$OUT" | cut -f1); build tree $(du -sh "$BUILD_DIR" | cut -f1))"

if [ "${KUBEOBS_KEEP_BUILD:-0}" != 1 ]; then
  rm -rf "$BUILD_DIR"
  log "removed build tree $BUILD_DIR (KUBEOBS_KEEP_BUILD=1 keeps it)"
fi
cached_ok || die "cached binary $OUT does not answer --version"
log "done: $("$OUT" --version)"
echo "$OUT"
