#!/usr/bin/env bash
# Builds Dockerfile.gpu with podman and runs the image the way the manifests in k8s/ run it, on a
# machine with no Docker engine and no registry access for the base image.
#
#   bash scripts/image_test.sh            # everything below, in order (make image-test)
#   bash scripts/image_test.sh base       # only the stand-in base image
#   bash scripts/image_test.sh build      # base + the image
#   bash scripts/image_test.sh run        # the four checks on the built image (builds it if needed)
#   bash scripts/image_test.sh podman ... # podman with this script's settings and image store
#
# 1. Machine: podman + runc + mmdebstrap from apt when missing (root only). podman's settings
#    (runc, cgroupfs, file events, explicit ulimits: see DESIGN.md section 1) and its image store
#    live in $TFF_LAB_IMAGE_CACHE (default ~/.cache/tff-lab-image): nothing in /etc is changed.
# 2. Base: tensorflow/tensorflow:2.14.0-gpu cannot be pulled here, so a Debian 12 root file system
#    (Python 3.11, like the real base) from mmdebstrap is imported and tagged with that name in this
#    script's own image store only. Dockerfile.gpu is built as it is, byte for byte, with --pull=never.
# 3. Build: podman build -f Dockerfile.gpu (layer cache: a rebuild with no change takes seconds).
# 4. Run, each as the rendered manifests run it (command, args, env, runAsUser/runAsGroup/fsGroup,
#    read-only root file system, dropped capabilities, no privilege escalation, memory limits,
#    read-only ConfigMap mount, a host directory as the PVC, tmpfs for emptyDirs):
#      fresh - the image's tff_lab modules are this tree's (catches a stale layer cache)
#      help  - `tff-lab --help`
#      run   - a 2-round `tff-lab run` of experiments/default.yaml (experiments mounted read-only)
#      dist  - the 2 MultiWorkerMirroredStrategy pods of k8s/base/job.yaml (the Indexed Job every
#              overlay but tfjob/sweep/federated keeps) as 2 containers on one podman network, their
#              DNS names <job>-<i>.<service> resolving to the containers' addresses
#      fed   - k8s/overlays/federated: the 2 TFF worker pods (StatefulSet), then the driver Job's init
#              container (`tff-lab k8s wait`) and its `tff-lab run` against the workers
#    The ConfigMap's experiment is shortened (dist.epochs=2, training.rounds=2) so a run takes
#    seconds; everything else is the manifest's.
# Results go to $TFF_LAB_IMAGE_OUT (default runs/image-test): one directory per check with its logs
# and exit codes, the run volumes, and image.json (sizes); tests/deploy/test_image.py reads them.
# Exit status: 0 when every check passed, 1 otherwise (see summary.txt).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${TFF_LAB_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tff-lab-image}
OUT=${TFF_LAB_IMAGE_OUT:-$REPO/runs/image-test}
IMAGE=${TFF_LAB_IMAGE:-localhost/tff-lab-gpu:image-test}
REAL_BASE=docker.io/tensorflow/tensorflow:2.14.0-gpu   # Dockerfile.gpu's FROM, both stages
STANDIN=localhost/tff-lab-standin-base:bookworm
NETWORK=tff-lab-image-test
SUBNET_PREFIX=10.213.77
STEP=${1:-all}

log() { printf '[image-test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- 1. the machine ------------------------------------------------------------------------------
setup_machine() {
  [ "$(id -u)" = 0 ] || die "needs root (rootful podman; run under sudo)"
  local missing=()
  for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "install ${missing[*]} (Debian 12: apt-get install podman runc mmdebstrap)"
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap >/dev/null
  fi
  mkdir -p "$CACHE/storage" "$CACHE/networks" "$CACHE/tmp"
  # podman's default ulimits cannot be raised without CAP_SYS_RESOURCE here: ask for no more than
  # the hard limits this shell has.
  local nofile nproc
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
  nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  cat > "$CACHE/containers.conf" <<EOF
# Written by scripts/image_test.sh. crun refuses this VM's hybrid cgroups: runc with cgroupfs.
[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_config_dir = "$CACHE/networks"
EOF
  cat > "$CACHE/storage.conf" <<EOF
# Written by scripts/image_test.sh: this script's own image store (the stand-in base is tagged
# with the real base's name here, and only here).
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "/run/tff-lab-image-test"
EOF
  export CONTAINERS_CONF="$CACHE/containers.conf" CONTAINERS_STORAGE_CONF="$CACHE/storage.conf"
  export TMPDIR="$CACHE/tmp"
}

# --- 2. the stand-in base --------------------------------------------------------------------------
build_base() {
  if podman image exists "$STANDIN"; then
    log "stand-in base $STANDIN exists"
  else
    log "building the stand-in base (Debian 12 minbase + python3, pip, venv) with mmdebstrap"
    local tar="$CACHE/standin-base.tar"
    rm -f "$tar"
    # passwd: groupadd/useradd for the Dockerfile's tff user. EXTERNALLY-MANAGED is removed so pip
    # installs into the system Python as it does in the real (Ubuntu) TensorFlow image.
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
      --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      bookworm "$tar"
    podman import --quiet \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'LABEL org.tff-lab.standin-for=tensorflow/tensorflow:2.14.0-gpu' \
      --change 'CMD ["/bin/bash"]' "$tar" "$STANDIN" >/dev/null
    rm -f "$tar"
  fi
  podman tag "$STANDIN" "$REAL_BASE"
}

# --- 3. the image ----------------------------------------------------------------------------------
build_image() {
  log "building $IMAGE from Dockerfile.gpu (first build ~5-6 min; cached layers after)"
  local t0=$SECONDS old new
  old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  # The host's CA bundle: pip inside the build reaches the package registry over HTTPS.
  podman build --pull=never --layers -f "$REPO/Dockerfile.gpu" -t "$IMAGE" \
    -v /etc/ssl/certs:/etc/ssl/certs:ro "$REPO" >&2
  log "built in $((SECONDS - t0)) s"
  new=$(podman image inspect --format '{{.Id}}' "$IMAGE")
  # The replaced image (~3 GB) goes; the wheels stage's layers stay as the cache for the next build.
  if [ -n "$old" ] && [ "$old" != "$new" ]; then podman rmi "$old" > /dev/null 2>&1 || true; fi
}

image_facts() {
  mkdir -p "$OUT"
  local size base_size
  size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
  base_size=$(podman image inspect --format '{{.Size}}' "$STANDIN")
  podman run --rm --entrypoint python3 "$IMAGE" -c \
    'import json, importlib.metadata as m; print(json.dumps(sorted(d.metadata["Name"].lower() for d in m.distributions())))' \
    > "$OUT/installed.json"
  printf '{"image": "%s", "size_bytes": %s, "base_size_bytes": %s}\n' "$IMAGE" "$size" "$base_size" > "$OUT/image.json"
  log "image $IMAGE: $((size / 1000000)) MB (stand-in base $((base_size / 1000000)) MB)"
}

# --- 4. the image, run as the manifests run it -----------------------------------------------------
# A pod's `podman run` arguments (NUL-separated, from scripts/image_pod.py in the image itself).
pod_args() {
  local -n _into=$1; shift
  mapfile -d '' _into < <(podman run --rm -i --user 0 --network none --entrypoint python3 \
    -v "$REPO/k8s:/k8s:ro" -v "$OUT:/out" "$IMAGE" - --image "$IMAGE" --out-host "$OUT" \
    --network "$NETWORK" --ip-prefix "$SUBNET_PREFIX" "$@" < "$REPO/scripts/image_pod.py")
  [ ${#_into[@]} -gt 0 ] || die "scripts/image_pod.py produced no arguments for $*"
}

record() {  # record NAME RC: one line of summary.txt
  printf '%s %s\n' "$1" "$2" >> "$OUT/summary.txt"
  if [ "$2" = 0 ]; then log "$1: ok"; else log "$1: FAILED (exit $2; see $OUT/$1*)"; fi
}

cleanup_containers() {
  local ids
  ids=$(podman ps -aq --filter label=tff-lab-image-test=1)
  [ -z "$ids" ] || podman rm -f -t 5 $ids >/dev/null
}

run_fresh() {  # the image holds this tree's tff_lab (a stale layer cache would not)
  local rc=0
  mkdir -p "$OUT/fresh"
  podman run --rm --network none -v "$REPO/tff_lab:/src/tff_lab:ro" --entrypoint python3 "$IMAGE" -c '
import hashlib, pathlib, sys, tff_lab
def digests(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.py"))
            if "__pycache__" not in p.parts}
image, tree = digests(pathlib.Path(tff_lab.__file__).parent), digests(pathlib.Path("/src/tff_lab"))
differ = sorted(k for k in image.keys() & tree.keys() if image[k] != tree[k])
only_tree = sorted(k for k in tree.keys() - image.keys() if (pathlib.Path("/src/tff_lab", k).parent / "__init__.py").exists())
print(f"{len(image)} modules in the image; differ from the tree: {differ}; in the tree only: {only_tree}")
sys.exit(1 if differ or only_tree else 0)' > "$OUT/fresh/log.txt" 2>&1 || rc=$?
  record fresh "$rc"
}

run_help() {
  local args rc=0
  mkdir -p "$OUT/help"
  pod_args args --objects /k8s/base Job tff-lab-train trainer --pod-dir help/pod --podman-name tff-lab-help \
    --args '["--help"]'
  podman run --rm "${args[@]}" > "$OUT/help/stdout.txt" 2> "$OUT/help/stderr.txt" || rc=$?
  echo "$rc" > "$OUT/help/rc"
  record help "$rc"
}

run_experiment() {  # a 2-round tff-lab run, the experiments directory mounted read-only
  local args rc=0
  mkdir -p "$OUT/run"
  pod_args args --objects /k8s/base Job tff-lab-train trainer --pod-dir run/pod --podman-name tff-lab-run \
    --volume "experiment=$REPO/experiments" \
    --args '["run", "/etc/tff-lab/default.yaml", "--out", "/artifacts/runs/default", "--set", "training.rounds=2"]'
  podman run --rm "${args[@]}" > "$OUT/run/log.txt" 2>&1 || rc=$?
  echo "$rc" > "$OUT/run/rc"
  record run "$rc"
}

run_dist() {  # the Indexed Job's 2 MWMS worker pods, 2 containers on one network
  local i args rc=0
  mkdir -p "$OUT/dist"
  for i in 0 1; do
    pod_args args --objects /k8s/base Job tff-lab-train trainer --index "$i" --pod-dir "dist/pod-$i" \
      --podman-name "tff-lab-train-$i" --hosts Job/tff-lab-train --set 'experiment.yaml:dist.epochs=2'
    podman run -d "${args[@]}" > /dev/null
  done
  for i in 0 1; do
    rc=$(timeout 900 podman wait "tff-lab-train-$i" || echo 124)
    podman logs "tff-lab-train-$i" > "$OUT/dist/pod-$i.log" 2>&1 || true
    echo "$rc" > "$OUT/dist/pod-$i.rc"
  done
  rc=0
  for i in 0 1; do [ "$(cat "$OUT/dist/pod-$i.rc")" = 0 ] || rc=1; done
  podman rm -f tff-lab-train-0 tff-lab-train-1 > /dev/null
  record dist "$rc"
}

run_federated() {  # k8s/overlays/federated: 2 TFF worker pods, then the driver Job (init container first)
  local i args rc=0 objects=/k8s/base,/k8s/overlays/federated
  mkdir -p "$OUT/fed"
  for i in 0 1; do
    pod_args args --objects "$objects" StatefulSet tff-lab-worker tff-worker --index "$i" \
      --pod-dir "fed/worker-$i" --podman-name "tff-lab-worker-$i" --hosts StatefulSet/tff-lab-worker
    podman run -d "${args[@]}" > /dev/null
  done
  pod_args args --objects "$objects" Job tff-lab-driver wait-for-workers --pod-dir fed/driver \
    --podman-name tff-lab-driver-init --hosts StatefulSet/tff-lab-worker
  podman run --rm "${args[@]}" > "$OUT/fed/init.log" 2>&1 || rc=$?
  echo "$rc" > "$OUT/fed/init.rc"
  if [ "$rc" = 0 ]; then
    for i in 0 1; do  # the pod's processes: pid -> [executable, parent pid]
      podman exec "tff-lab-worker-$i" python3 -c 'import json, os
print(json.dumps({p: [os.readlink(f"/proc/{p}/exe"), int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])]
                  for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/exe")}))' \
        > "$OUT/fed/worker-$i.procs.json" 2>&1 || true
    done
    pod_args args --objects "$objects" Job tff-lab-driver driver --pod-dir fed/driver \
      --podman-name tff-lab-driver --hosts StatefulSet/tff-lab-worker --set 'experiment.yaml:training.rounds=2'
    timeout 900 podman run --rm "${args[@]}" > "$OUT/fed/driver.log" 2>&1 || rc=$?
  fi
  echo "$rc" > "$OUT/fed/driver.rc"
  local t0 term=0 code
  for i in 0 1; do  # the workers served the rounds and are still up; then SIGTERM, as on scale-down
    podman inspect --format '{{.State.Running}}' "tff-lab-worker-$i" > "$OUT/fed/worker-$i.running" || true
    t0=$(date +%s.%N)
    # The StatefulSet's terminationGracePeriodSeconds (30) before SIGKILL, as the kubelet does.
    podman stop -t 30 "tff-lab-worker-$i" > /dev/null 2>&1 || true
    awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.1f\n", a - b }' > "$OUT/fed/worker-$i.stop_s"
    code=$(podman inspect --format '{{.State.ExitCode}}' "tff-lab-worker-$i" || echo missing)
    echo "$code" > "$OUT/fed/worker-$i.rc"
    case "$code" in 0|143) ;; *) term=1 ;; esac
    podman logs "tff-lab-worker-$i" > "$OUT/fed/worker-$i.log" 2>&1 || true
    podman rm -f "tff-lab-worker-$i" > /dev/null || true
  done
  record fed "$rc"
  record fed-sigterm "$term"  # exit 143 (or 0) on SIGTERM, not 137 after the grace period
}

run_all() {
  podman image exists "$IMAGE" || { build_base; build_image; }
  rm -rf "$OUT"
  mkdir -p "$OUT"
  : > "$OUT/summary.txt"
  image_facts
  cleanup_containers
  podman network exists "$NETWORK" || podman network create --subnet "$SUBNET_PREFIX.0/24" "$NETWORK" > /dev/null
  trap cleanup_containers EXIT
  run_fresh
  run_help
  run_experiment
  run_dist
  run_federated
  if grep -qv ' 0$' "$OUT/summary.txt"; then log "some checks failed: $OUT/summary.txt"; return 1; fi
  log "all checks passed ($OUT)"
}

case "$STEP" in
  all) setup_machine; build_base; build_image; run_all ;;
  base) setup_machine; build_base ;;
  build) setup_machine; build_base; build_image; image_facts ;;
  run) setup_machine; run_all ;;
  podman) shift; setup_machine; exec podman "$@" ;;
  *) die "unknown step $STEP (all, base, build, run, podman ARGS...)" ;;
esac
