#!/usr/bin/env bash
# Which onnxruntime releases run under qemu-aarch64 (the table in docs/raspberry-pi.md).
# For each version: import it and run the runtime on the tiny bundle against PyTorch's answers, under
# each qemu CPU model, with the Raspberry Pi /proc/cpuinfo that scripts/test-aarch64.sh provides ("pi")
# and with the host's x86 /proc/cpuinfo that qemu 7.2 passes through by default ("host").
# Usage: scripts/aarch64/ort-survey.sh [VERSION ...]     (about 5 s per cell; downloads ~15 MB a version)
# Environment: AARCH64_CACHE, SURVEY_CPUS="cortex-a72 cortex-a76", SURVEY_CPUINFO="pi host"
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
source scripts/aarch64/lib.sh
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(1.16.3 1.17.3 1.18.1 1.19.2 1.20.1 1.21.0 1.21.1 1.22.0 1.22.1 1.23.2 1.24.4
                                       1.25.1 1.26.0 1.27.0 1.28.0 1.29.0 1.30.0 1.31.1 1.32.0)
read -r -a CPUS <<< "${SURVEY_CPUS:-cortex-a72 cortex-a76}"
read -r -a CPUINFO <<< "${SURVEY_CPUINFO:-pi host}"
[ -x .venv/bin/python ] || scripts/setup.sh
HOST_PY=$REPO/.venv/bin/python
ensure_qemu
ensure_rootfs
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mpee-ort-survey.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$HOST_PY" tests/runtime/make_bundle.py "$WORK/tiny"

S=$AARCH64_CACHE/survey
install_to() {   # folder, pip requirements...   (cached)
  local dir=$1; shift
  [ -e "$dir/.complete" ] && return
  rm -rf "$dir"
  host_pip install -q --no-warn-conflicts "${PIP_TARGET_ARGS[@]}" --target "$dir" "$@" >/dev/null
  touch "$dir/.complete"
}
log "aarch64 wheels for the survey (cached in $S)"
install_to "$S/base" tokenizers==0.23.3 protobuf flatbuffers packaging
install_to "$S/numpy2" numpy==2.4.6
install_to "$S/numpy1" numpy==1.26.4      # onnxruntime < 1.19 is built against numpy 1.x

declare -A PY
for cpu in "${CPUS[@]}"; do
  for info in "${CPUINFO[@]}"; do
    PY["$cpu-$info"]=$(make_python "$cpu" "$WORK/root-$cpu-$info" "$([ "$info" = pi ] && echo 1 || echo 0)")
  done
done

printf '%-8s' onnxruntime; for cpu in "${CPUS[@]}"; do for info in "${CPUINFO[@]}"; do printf ' | %-30s' "$cpu, $info cpuinfo"; done; done; echo
for v in "${VERSIONS[@]}"; do
  install_to "$S/ort-$v" --no-deps "onnxruntime==$v"
  np=$S/numpy2; case $v in 1.1[0-8].*) np=$S/numpy1 ;; esac
  printf '%-8s' "$v"
  for cpu in "${CPUS[@]}"; do
    for info in "${CPUINFO[@]}"; do
      set +e
      out=$(PYTHONPATH=$S/ort-$v:$np:$S/base:$REPO/runtime PYTHONDONTWRITEBYTECODE=1 \
            timeout 300 "${PY[$cpu-$info]}" scripts/aarch64/ort_probe.py "$WORK/tiny" 2>&1)
      rc=$?
      set -e
      case $rc in
        0) cell="ok ($(grep -o 'max |dp| .*' <<< "$out"))" ;;
        132) cell="SIGILL" ;;
        139) cell="SIGSEGV" ;;
        *) cell="exit $rc" ;;
      esac
      if [ "$rc" != 0 ]; then
        if grep -q "^predicted" <<< "$out"; then cell+=" wrong answers"
        elif grep -q "^session created" <<< "$out"; then cell+=" predicting"
        elif grep -q "^imported" <<< "$out"; then cell+=" creating session"
        else cell+=" on import"; fi
      fi
      printf ' | %-30s' "$cell"
    done
  done
  echo
done
