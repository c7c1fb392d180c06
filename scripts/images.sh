#!/usr/bin/env bash
# Builds the project's images from the Dockerfile, records their sizes, loads them into kind.
#
#   scripts/images.sh [build]        stage the wheels, build the runtime and operator images
#   scripts/images.sh stage          only stage the wheels into .out/image-wheels/{deps,project}
#   scripts/images.sh load [CLUSTER] load both into the kind cluster (default: $KIND_CLUSTER or exo)
#   scripts/images.sh refs           print the image references, one a line
#   scripts/images.sh extras         print the project extras staged for IMAGE_TARGETS
#   scripts/images.sh tidy           remove what earlier builds left (build does it too)
#
# Environment:
#   BASE_IMAGE     the Debian base (default: exo-operator/debian:bookworm, made by
#                  scripts/base-image.sh; debian:bookworm-slim where a registry is reachable)
#   IMAGE_TARGETS  Dockerfile targets to build (default: "runtime operator"; runtime-cuda needs
#                  NVIDIA's CUDA images, so a registry)
#   EXO_BUILD_CACHE_KEEP  how much of BuildKit's cache a build leaves (default 4GB, most recently
#                  used first): enough for a rebuild of both images after a code change to hit it
#
# The images install only the wheels staged here (llama-cpp-python from the host wheelhouse that
# scripts/wheelhouse.sh builds), so no image build downloads a Python package or sees this
# machine's CA. Rebuilds hit Docker's layer cache and take seconds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STAGE_DIR="$REPO_ROOT/.out/image-wheels"
# The dependencies, which change with the pins, apart from the project's own wheel, which changes
# with every commit: the Dockerfile installs them in layers of their own, so a rebuild after a code
# change reuses the dependencies' layers instead of adding another 500 MB of them.
DEPS_DIR="$STAGE_DIR/deps"
PROJECT_DIR="$STAGE_DIR/project"
SIZES_FILE="$REPO_ROOT/.out/image-sizes.txt"
BASE_IMAGE="${BASE_IMAGE:-exo-operator/debian:bookworm}"
IMAGE_TARGETS="${IMAGE_TARGETS:-runtime operator}"
BUILD_CACHE_KEEP="${EXO_BUILD_CACHE_KEEP:-4GB}"

project_version() {
  python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$REPO_ROOT/pyproject.toml"
}

# The llama-cpp-python version pyproject pins (runtime extra), e.g. 0.3.36.
llama_cpp_version() {
  python3 - "$REPO_ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
extra = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["runtime"]
print(next(d.split("==")[1] for d in extra if d.startswith("llama-cpp-python==")))
EOF
}

VERSION="$(project_version)"
image_ref() { echo "exo-operator/$1:$VERSION"; }

# The project's extras the staged wheels cover: both engines with MLX's CPU build (runtime
# image) and the operator; MLX's CUDA build only when runtime-cuda is built (NVIDIA's libraries
# as wheels: gigabytes).
staged_extras() {
  local extras="runtime,mlx,operator"
  [[ " $IMAGE_TARGETS " == *" runtime-cuda "* ]] && extras+=",mlx-cuda"
  echo "$extras"
}

# Every Python package the images install, as wheels, for CPython 3.11 on x86-64 Linux.
stage_wheels() {
  local pyproject_hash stamp llama_version llama_wheel_dir extras
  extras="$(staged_extras)"
  llama_version="$(llama_cpp_version)"
  llama_wheel_dir="$(bash "$REPO_ROOT/scripts/wheelhouse.sh" dir)"
  ls "$llama_wheel_dir"/llama_cpp_python-"$llama_version"-*.whl >/dev/null 2>&1 ||
    bash "$REPO_ROOT/scripts/wheelhouse.sh"
  pyproject_hash="$( (
    cat "$REPO_ROOT/pyproject.toml"
    echo "$llama_wheel_dir" "${DEPS_DIR#"$STAGE_DIR"}"
  ) | sha256sum | cut -c1-16)"
  stamp="$STAGE_DIR/.pyproject-$pyproject_hash"
  if [[ ! -f $stamp ]]; then
    # New pins: start over so that no stale version lingers next to the new one.
    rm -rf "$STAGE_DIR"
    mkdir -p "$STAGE_DIR"
  fi
  # The project itself is rebuilt every time: its source changes more often than its pins.
  rm -rf "$PROJECT_DIR"
  mkdir -p "$DEPS_DIR" "$PROJECT_DIR"
  log "staging the images' wheels in ${STAGE_DIR#"$REPO_ROOT"/} (the project and its extras $extras)"
  python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$DEPS_DIR" \
    --find-links "$llama_wheel_dir" --find-links "$DEPS_DIR" \
    "${REPO_ROOT}[$extras]" ||
    die "staging wheels failed (pip's error above): check that PyPI is reachable and pyproject.toml resolves"
  mv "$DEPS_DIR"/exo_operator-*.whl "$PROJECT_DIR/"
  write_requirements runtime,mlx operator
  [[ " $IMAGE_TARGETS " != *" runtime-cuda "* ]] || write_requirements runtime,mlx-cuda
  if [[ " $IMAGE_TARGETS " == *" runtime-cuda "* ]]; then
    # runtime-cuda compiles llama-cpp-python from its source, with its build backend.
    log "staging llama-cpp-python $llama_version source and its build backend for runtime-cuda"
    python3 -m pip download --quiet --disable-pip-version-check --dest "$DEPS_DIR" \
      --no-deps --no-binary llama-cpp-python "llama-cpp-python==$llama_version"
    python3 -m pip download --quiet --disable-pip-version-check --dest "$DEPS_DIR" \
      --only-binary :all: "scikit-build-core>=0.9.2"
  fi
  touch "$stamp"
  local llama_wheels
  llama_wheels=$(find "$DEPS_DIR" -name "llama_cpp_python-$llama_version-*.whl" | wc -l)
  ((llama_wheels == 1)) || die "expected one llama-cpp-python $llama_version wheel in $STAGE_DIR, found $llama_wheels"
}

# write_requirements EXTRAS...: deps/requires-<extras, dash-joined>.txt for each comma-joined
# list, the project's requirements with those extras: what the Dockerfile installs before the
# project's wheel.
write_requirements() {
  python3 - "$REPO_ROOT/pyproject.toml" "$DEPS_DIR" "$@" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for extras in sys.argv[3:]:
    extra = project["optional-dependencies"]
    lines = project["dependencies"] + [d for name in extras.split(",") for d in extra[name]]
    with open(f"{sys.argv[2]}/requires-{extras.replace(',', '-')}.txt", "w") as out:
        out.write("\n".join(lines) + "\n")
EOF
}

ensure_base_image() {
  docker_cli image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
  if [[ $BASE_IMAGE == exo-operator/debian:* ]]; then
    bash "$REPO_ROOT/scripts/base-image.sh"
  else
    log "$BASE_IMAGE is not local: the build pulls it from its registry"
  fi
}

build() {
  docker_cli info >/dev/null 2>&1 || die "the docker daemon does not answer: run scripts/docker.sh up"
  stage_wheels
  ensure_base_image
  local revision target image started
  revision="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  for target in $IMAGE_TARGETS; do
    image="$(image_ref "$target")"
    log "building $image (Dockerfile target $target, base $BASE_IMAGE)"
    started=$SECONDS
    # Debian's client drives BuildKit itself (DOCKER_BUILDKIT=1); plain progress keeps CI
    # logs readable.
    DOCKER_BUILDKIT=1 docker_cli build --progress=plain \
      --target "$target" \
      --build-arg BASE_IMAGE="$BASE_IMAGE" \
      --build-arg VERSION="$VERSION" \
      --build-arg REVISION="$revision" \
      --tag "$image" \
      "$REPO_ROOT" 2>&1 | sed -u "s/^/  [$target] /" ||
      die "building $image failed (BuildKit's log above)"
    log "built $image in $((SECONDS - started)) s"
  done
  record_sizes
  tidy
}

# The untagged images that this Dockerfile's targets left: every final stage sets a title label
# that starts with exo-operator (tests/unit/test_dockerfile_targets.py), and no other image's does.
replaced_images() {
  local id title
  for id in $(docker_cli image ls --quiet --no-trunc --filter dangling=true --filter label=org.opencontainers.image.title); do
    title=$(docker_cli image inspect -f '{{index .Config.Labels "org.opencontainers.image.title"}}' "$id")
    [[ $title != exo-operator* ]] || echo "$id"
  done
}

# A rebuild moves the tag and leaves the image it replaced untagged (~850 MB for both), and
# every build adds about 1 GB to BuildKit's cache, which Docker never trims by itself: a busy
# machine held 40 GB of it. The project's untagged images go (one a container still uses
# stays), and the cache is cut to its most recently used $BUILD_CACHE_KEEP. The cache is the
# daemon's, shared by every build on it: the bound applies to all of them.
tidy() {
  local ids reclaimed
  mapfile -t ids < <(replaced_images)
  if ((${#ids[@]} > 0)); then
    log "removing ${#ids[@]} image(s) that earlier builds left untagged"
    docker_cli image rm "${ids[@]}" >/dev/null ||
      log "kept the untagged images that a container still uses (docker's message above)"
  fi
  reclaimed="$(docker_cli builder prune --force --keep-storage "$BUILD_CACHE_KEEP" | tail -n 1)"
  log "BuildKit's cache cut to $BUILD_CACHE_KEEP at most (EXO_BUILD_CACHE_KEEP): ${reclaimed:-nothing to reclaim}"
}

record_sizes() {
  local target image
  mkdir -p "$(dirname "$SIZES_FILE")"
  : >"$SIZES_FILE"
  for target in $IMAGE_TARGETS; do
    image="$(image_ref "$target")"
    printf '%s\t%s\n' "$image" \
      "$(docker_cli image inspect -f '{{.Size}}' "$image" | numfmt --to=si --suffix=B)" >>"$SIZES_FILE"
  done
  log "image sizes (also in ${SIZES_FILE#"$REPO_ROOT"/}):"
  column -t "$SIZES_FILE" >&2
}

load() {
  local target images=()
  [[ -n ${1:-} ]] && export KIND_CLUSTER="$1"
  for target in $IMAGE_TARGETS; do images+=("$(image_ref "$target")"); done
  bash "$REPO_ROOT/scripts/kind.sh" load "${images[@]}"
}

case "${1:-build}" in
  build) build ;;
  stage) stage_wheels ;;
  load) load "${2:-}" ;;
  refs) for target in $IMAGE_TARGETS; do image_ref "$target"; done ;;
  extras) staged_extras ;;
  tidy) tidy ;;
  *) die "usage: $0 [build|stage|load [CLUSTER]|refs|extras|tidy]" ;;
esac
