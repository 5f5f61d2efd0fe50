# Shared helpers for scripts/test-aarch64.sh and scripts/aarch64/ort-survey.sh (sourced, not run).
# An aarch64 Python 3.11 is assembled from Debian arm64 packages (no chroot, no binfmt) and run with
# qemu-aarch64-static; aarch64 wheels come from PyPI via `pip download --platform`.

AARCH64_CACHE=${AARCH64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mpee-aarch64}
PY_VER=3.11
# Debian bookworm arm64 packages: the interpreter, its stdlib and the shared libraries that python,
# numpy, onnxruntime and tokenizers load (found by trying imports under the emulator).
ARM64_DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1 libstdc++6 zlib1g
            libffi8 libssl3 libexpat1 libsqlite3-0 libbz2-1.0 liblzma5 libuuid1)
# manylinux tags an aarch64 Debian 12 / Raspberry Pi OS 12 (glibc 2.36) accepts; pip needs them spelled out.
PIP_TARGET_ARGS=(--only-binary=:all: --python-version "$PY_VER" --implementation cp --abi cp311
                 --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64
                 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64)

log() { printf '[aarch64 %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'test-aarch64: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "needs root for: $* (run it once as root, then rerun)"; fi
}

# pip of the host venv, minus the noise of absent local find-links folders some machines configure.
host_pip() { "$HOST_PY" -m pip --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

ensure_qemu() {
  command -v qemu-aarch64-static >/dev/null && return
  log "installing qemu-user-static (apt)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
  command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static still missing after apt-get install"
}

# ROOTFS: Debian arm64 packages unpacked with dpkg -x (cached; rebuilt when the package list changes).
ensure_rootfs() {
  local key; key=$(printf '%s\n' "${ARM64_DEBS[@]}" | sha256sum | cut -c1-12)
  ROOTFS=$AARCH64_CACHE/rootfs-$key
  [ -e "$ROOTFS/.complete" ] && return
  if ! dpkg --print-foreign-architectures | grep -qx arm64 || [ -z "$(apt-cache madison libc6:arm64 2>/dev/null)" ]; then
    log "enabling the arm64 architecture in apt (dpkg --add-architecture arm64; apt-get update)"
    as_root dpkg --add-architecture arm64
    as_root apt-get update -qq
  fi
  mkdir -p "$AARCH64_CACHE"
  local debs tmp f
  debs=$(mktemp -d "$AARCH64_CACHE/debs.tmp.XXXXXX")
  tmp=$(mktemp -d "$AARCH64_CACHE/rootfs.tmp.XXXXXX")
  log "downloading ${#ARM64_DEBS[@]} Debian arm64 packages"
  local get=(apt-get download -qq -o APT::Sandbox::User="$(id -un)" "${ARM64_DEBS[@]/%/:arm64}")
  (cd "$debs" && "${get[@]}") || { log "retrying after apt-get update"; as_root apt-get update -qq; (cd "$debs" && "${get[@]}"); }
  for f in "$debs"/*.deb; do dpkg -x "$f" "$tmp"; done
  (cd "$debs" && ls) > "$tmp/.debs"
  touch "$tmp/.complete"
  rm -rf "$ROOTFS" "$debs"; mv "$tmp" "$ROOTFS"
}

# /proc/cpuinfo as the Raspberry Pi kernel writes it. qemu-user 7.2 (Debian 12) hands the guest the
# host's x86 /proc/cpuinfo; onnxruntime >= 1.28 (pytorch/cpuinfo) then dereferences NULL on import.
# qemu's -L prefix makes the guest read ROOTFS/proc/cpuinfo instead (newer qemu fakes it itself).
fake_cpuinfo() {   # cpu model, number of processors
  local feat part var rev i
  case $1 in
    cortex-a72) feat="fp asimd evtstrm crc32 cpuid"; part=0xd08; var=0x0; rev=3 ;;   # Pi 4 (BCM2711)
    *) feat="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
       part=0xd0b; var=0x4; rev=1 ;;                                                     # Pi 5 (BCM2712)
  esac
  for ((i = 0; i < $2; i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$i" "$feat"
    printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "$var" "$part" "$rev"
  done
}

# A private view of ROOTFS for one emulated CPU (hard links where possible: instant; the cache stays as is)
# with an x86 launcher at usr/bin/python3. The launcher passes its own path as argv[0] (qemu -0), so
# sys.executable is the launcher and subprocesses of sys.executable are emulated too (no binfmt needed).
# Prints the launcher's path.  Args: cpu model, folder, [fake cpuinfo: 1 (default) or 0].
make_python() {
  local cpu=$1 dir=$2 fake=${3:-1}
  rm -rf "$dir"; cp -al "$ROOTFS" "$dir" 2>/dev/null || { rm -rf "$dir"; cp -a "$ROOTFS" "$dir"; }   # other filesystem
  mkdir -p "$dir/proc"
  if [ "$fake" = 1 ]; then fake_cpuinfo "$cpu" "$(getconf _NPROCESSORS_CONF)" > "$dir/proc/cpuinfo"; fi
  cat > "$dir/usr/bin/python3" <<EOF
#!/bin/sh
exec qemu-aarch64-static -cpu $cpu -L "$dir" -0 "\$0" "$dir/usr/bin/python$PY_VER" "\$@"
EOF
  chmod +x "$dir/usr/bin/python3"
  echo "$dir/usr/bin/python3"
}
