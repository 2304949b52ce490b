#!/usr/bin/env bash
# Build Text Embeddings Inference's router (text-embeddings-router) for CPU into a machine-wide
# cache, once per key; later calls, from any checkout on the machine, print the cached path.
#
#   images/tei/build.sh            prints the directory holding text-embeddings-router (stdout,
#                                  one line); cargo's progress goes to stderr
#
# The key is <TEI version>-<features>-<hash of profile, toolchain, ONNX Runtime and sources>; a
# warm call (binary present for the key) runs no cargo and takes well under a second.
#
# Source: ../shared/vendor/tei (TEI_VENDOR_DIR) holds the `git archive` of tag v1.9.3, the
# Cargo.lock patch and the crates TEI takes from git; cargo's source replacement points the
# three git sources at them, crates.io serves the rest. Without that directory the tag is
# cloned with git and cargo fetches the git crates itself.
#
# Backends: candle (portable) and ort, linked against the libonnxruntime.so of PyPI's
# `onnxruntime` wheel. That library is copied next to the binary, which finds it through an
# rpath of $ORIGIN: keep the two files together (the embedding image copies both).
#
# Environment (defaults in brackets):
#   EMBEDDING_IMAGES_CACHE   [/var/cache/embedding-images] the cache root; TEI goes in tei/
#   TEI_FEATURES             [candle,ort,http]
#   CARGO_PROFILE_RELEASE_LTO            [off]  TEI's own profile says "fat" (410 s against 301 s
#                                               on two quiet cores; candle 5 % faster, ORT the same)
#   CARGO_PROFILE_RELEASE_CODEGEN_UNITS  [16]   TEI's own profile says 1
#   TEI_RUST_TOOLCHAIN       [1.95.0] rustup toolchain (TEI pins 1.92.0; metrics 0.23.1 is
#                            patched in for rustc >= 1.90)
#   TEI_ORT_VERSION          [1.22.1] onnxruntime wheel; ort 2.0.0-rc.10 speaks ORT API 1.22
#   TEI_NICE                 [10]     niceness of the build
set -euo pipefail

TEI_VERSION=1.9.3
TEI_COMMIT=06670157fb6c1523482219bdb2d1660277d38088
TEI_REPO=https://github.com/huggingface/text-embeddings-inference
SRC_SHA256=bfe3dbeb3aad057ab68ab0ac11b835f461c48a52d1328baa0e9a4361ed6a6d6a
PATCH_SHA256=fe18269f9912f7470b68433f81198bc2d5f9215b5bbf1e607271346ed13d816f
GITDEPS_SHA256=52f5b43c8104d82ad07f2e3f5f602d751c332d0390994c8d1dce765eff96ee8d

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
vendor=${TEI_VENDOR_DIR:-$repo/../shared/vendor/tei}
features=${TEI_FEATURES:-candle,ort,http}
lto=${CARGO_PROFILE_RELEASE_LTO:-off}
cgu=${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-16}
toolchain=${TEI_RUST_TOOLCHAIN:-1.95.0}
ort_version=${TEI_ORT_VERSION:-1.22.1}
cache=${EMBEDDING_IMAGES_CACHE:-/var/cache/embedding-images}/tei
rustflags='-C link-arg=-Wl,-rpath,$ORIGIN'

log() { printf 'tei-build: %s\n' "$*" >&2; }

uses_ort=0
[[ ",$features," == *,ort,* ]] && uses_ort=1

key_text="tei=$TEI_VERSION commit=$TEI_COMMIT features=$features lto=$lto cgu=$cgu"
key_text+=" toolchain=$toolchain rustflags=$rustflags patch=$PATCH_SHA256"
(( uses_ort )) && key_text+=" onnxruntime=$ort_version"
key_hash=$(printf '%s' "$key_text" | sha256sum | cut -c1-12)
out="$cache/$TEI_VERSION-${features//,/-}-$key_hash"

if [[ -x $out/text-embeddings-router ]]; then
  echo "$out"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.build.lock"
if ! flock -n 9; then
  log "another build holds $cache/.build.lock; waiting for it"
  flock 9
fi
if [[ -x $out/text-embeddings-router ]]; then   # built by the caller we waited for
  echo "$out"
  exit 0
fi

# --- what the build needs from the system ---------------------------------------------------
need_pkgs=()
dpkg -s libssl-dev >/dev/null 2>&1 || need_pkgs+=(libssl-dev)
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)
command -v zstd >/dev/null || need_pkgs+=(zstd)
command -v cc >/dev/null || need_pkgs+=(build-essential)
if (( ${#need_pkgs[@]} )); then
  log "installing ${need_pkgs[*]} with apt-get"
  sudo_=(); (( EUID == 0 )) || sudo_=(sudo)
  "${sudo_[@]}" apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -q "${need_pkgs[@]}" >&2
fi
if ! command -v cargo >/dev/null; then
  log "cargo not found: install rustup (https://rustup.rs) and toolchain $toolchain"
  exit 1
fi
if command -v rustup >/dev/null; then
  if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    log "installing rust toolchain $toolchain with rustup"
    rustup toolchain install "$toolchain" --profile minimal >&2
  fi
  export RUSTUP_TOOLCHAIN=$toolchain
fi

# --- source ----------------------------------------------------------------------------------
build=$cache/build
src=$build/text-embeddings-inference-$TEI_VERSION
mkdir -p "$build"
check_sha() {  # file expected
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [[ $got == "$2" ]] || { log "$1: sha256 $got, expected $2"; exit 1; }
}
if [[ ! -f $src/.prepared ]]; then
  rm -rf "$src"
  if [[ -f $vendor/text-embeddings-inference-$TEI_VERSION.tar.gz ]]; then
    log "unpacking TEI $TEI_VERSION from $vendor"
    check_sha "$vendor/text-embeddings-inference-$TEI_VERSION.tar.gz" "$SRC_SHA256"
    check_sha "$vendor/cargo-lock-metrics-0.23.1.patch" "$PATCH_SHA256"
    check_sha "$vendor/git-dependencies-$TEI_VERSION.tar.zst" "$GITDEPS_SHA256"
    tar -xzf "$vendor/text-embeddings-inference-$TEI_VERSION.tar.gz" -C "$build"
    gitdeps=$build/git-dependencies-$TEI_VERSION
    rm -rf "$gitdeps" && mkdir -p "$gitdeps"
    tar --zstd -xf "$vendor/git-dependencies-$TEI_VERSION.tar.zst" -C "$gitdeps"
    # cargo's source replacement: the three git sources of Cargo.lock -> the vendored crates
    mkdir -p "$src/.cargo"
    {
      while read -r url rev; do
        printf '[source."git+%s?rev=%s"]\ngit = "%s"\nrev = "%s"\nreplace-with = "vendored-git"\n\n' \
          "$url" "$rev" "$url" "$rev"
      done < <(grep -o 'source = "git+[^"]*"' "$src/Cargo.lock" | sort -u |
               sed -E 's/source = "git\+([^?]+)\?rev=([0-9a-f]+)#.*"/\1 \2/')
      printf '[source.vendored-git]\ndirectory = "%s"\n' "$gitdeps"
    } > "$src/.cargo/config.toml"
    patch_file=$vendor/cargo-lock-metrics-0.23.1.patch
  else
    log "no vendored source in $vendor: cloning $TEI_REPO v$TEI_VERSION"
    git clone -q --depth 1 --branch "v$TEI_VERSION" "$TEI_REPO" "$src"
    [[ $(git -C "$src" rev-parse HEAD) == "$TEI_COMMIT" ]] || { log "tag moved"; exit 1; }
    patch_file=$here/cargo-lock-metrics-0.23.1.patch
  fi
  patch -s -p1 -d "$src" < "$patch_file"
  touch "$src/.prepared"
fi

# --- ONNX Runtime from PyPI's wheel ----------------------------------------------------------
ort_lib=""
if (( uses_ort )); then
  ort_dir=$cache/onnxruntime-$ort_version
  if [[ ! -f $ort_dir/.ready ]]; then
    log "fetching onnxruntime $ort_version's wheel from PyPI"
    rm -rf "$ort_dir" && mkdir -p "$ort_dir/wheel" "$ort_dir/lib"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$ort_dir/wheel" \
      "onnxruntime==$ort_version" >&2
    python3 -m zipfile -e "$ort_dir"/wheel/onnxruntime-*.whl "$ort_dir/wheel/x"
    so=$(ls "$ort_dir"/wheel/x/onnxruntime/capi/libonnxruntime.so.* | head -1)
    cp "$so" "$ort_dir/lib/"
    soname=$(objdump -p "$so" | awk '/SONAME/ {print $2}')
    [[ -n $soname && $soname != "$(basename "$so")" ]] && ln -sf "$(basename "$so")" "$ort_dir/lib/$soname"
    ln -sf "$(basename "$so")" "$ort_dir/lib/libonnxruntime.so"
    rm -rf "$ort_dir/wheel/x"
    touch "$ort_dir/.ready"
  fi
  ort_lib=$ort_dir/lib
  export ORT_LIB_LOCATION=$ort_lib ORT_PREFER_DYNAMIC_LINK=1
fi

# --- cargo -----------------------------------------------------------------------------------
export CARGO_PROFILE_RELEASE_LTO=$lto CARGO_PROFILE_RELEASE_CODEGEN_UNITS=$cgu
export RUSTFLAGS=$rustflags
log "building text-embeddings-router $TEI_VERSION ($features, lto=$lto, codegen-units=$cgu) into $out"
start=$(date +%s)
(cd "$src" && nice -n "${TEI_NICE:-10}" cargo build --release --locked \
   --bin text-embeddings-router --no-default-features --features "$features" \
   --target-dir "$build/target")
log "cargo took $(( $(date +%s) - start )) s"

tmp=$(mktemp -d "$cache/.install.XXXXXX")
cp "$build/target/release/text-embeddings-router" "$tmp/"
if [[ -n $ort_lib ]]; then
  cp -P "$ort_lib"/libonnxruntime.so* "$tmp/"
fi
printf '%s\n' "$key_text" > "$tmp/BUILD-KEY"
chmod 755 "$tmp"
rm -rf "$out"
mv "$tmp" "$out"
echo "$out"
