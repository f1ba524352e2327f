#!/usr/bin/env bash
# Makes a local stand-in for gcr.io/distroless/cc-debian12:nonroot, the Dockerfile's runtime base,
# which cannot be pulled here (no registry): the same Debian 12 packages distroless "cc" carries
# (glibc, libgcc, libstdc++, CA certificates), its passwd/group with the nonroot user 65532, /tmp
# and /home/nonroot, and, as in distroless, no shell and no package manager — so the image tests
# also prove that nothing in the images needs a shell. The files come from a Debian bookworm
# minbase made by debootstrap (../shared/images.md), cached as a tarball keyed by RECIPE.
#
#   BUILDAH="buildah --root R --runroot RR --storage-driver vfs" bash distroless-standin.sh CACHE_DIR
set -euo pipefail
RECIPE="bookworm-cc-v1"
NAME="gcr.io/distroless/cc-debian12:nonroot"
CACHE="$1"
BUILDAH="${BUILDAH:-buildah --storage-driver vfs}"
log() { printf '\033[1m[distroless-standin]\033[0m %s\n' "$*" >&2; }

# shellcheck disable=SC2086
if [ "$($BUILDAH inspect --type image --format '{{index .ImageAnnotations "chat.stand-in.recipe"}}' "$NAME" 2>/dev/null)" = "$RECIPE" ]; then
  exit 0
fi
mkdir -p "$CACHE"
tarball="$CACHE/$RECIPE.tar"
if [ ! -f "$tarball" ]; then
  work="$(mktemp -d "$CACHE/work.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  root="${ROOTFS:-$work/rootfs}"
  if [ ! -d "$root/var/lib/dpkg" ]; then
    log "debootstrap bookworm (minbase + ca-certificates; once, cached in $CACHE)"
    start=$SECONDS
    debootstrap --variant=minbase --include=ca-certificates bookworm "$root" >"$work/debootstrap.log" 2>&1 ||
      { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
    log "debootstrap took $((SECONDS - start)) s"
  fi
  out="$work/image"
  mkdir -p "$out"
  # Every regular file and symlink of the packages distroless cc is made of, at its real place
  # under merged /usr (dpkg lists /lib/..., which is the symlink lib -> usr/lib), then those
  # top-level symlinks themselves.
  files=()
  for pkg in libc6 libgcc-s1 libstdc++6; do
    while IFS= read -r path; do
      if [ -f "$root$path" ] || [ -L "$root$path" ]; then
        dir="$(cd "$root$(dirname "$path")" && pwd -P)"
        dir="${dir#"$root"}"
        files+=("${dir#/}${dir:+/}$(basename "$path")")
      fi
    done < <(dpkg-query --admindir="$root/var/lib/dpkg" -L "$pkg")
  done
  files+=("lib" "lib64")
  files+=("etc/ssl/certs/ca-certificates.crt" "usr/share/ca-certificates")
  mapfile -t files < <(printf '%s\n' "${files[@]}" | sort -u)
  (cd "$root" && for f in "${files[@]}"; do [ "$f" = lib ] || [ "$f" = lib64 ] || dirname "$f"; done | sort -u | xargs -I{} mkdir -p "$out/{}")
  tar -C "$root" -cf - --no-recursion "${files[@]}" | tar -C "$out" -xf -
  tar -C "$root" -cf - usr/share/ca-certificates | tar -C "$out" -xf -
  # Keep only the shared libraries' runtime: no executables of those packages (ldconfig, iconv...).
  find "$out" -type f -path '*/bin/*' -delete
  find "$out" -type f -path '*/sbin/*' -delete
  rm -rf "$out/usr/bin" "$out/usr/sbin" "$out/usr/libexec" "$out/usr/share/doc" "$out/usr/share/lintian" \
    "$out/usr/share/locale" "$out/usr/share/gcc" "$out/usr/share/gdb"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$out/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$out/etc/group"
  mkdir -p "$out/tmp" "$out/home/nonroot" "$out/root"
  chmod 1777 "$out/tmp"; chmod 700 "$out/home/nonroot" "$out/root"
  chown 65532:65532 "$out/home/nonroot"
  if find "$out" -name sh -o -name bash -o -name dash | grep -q .; then log "a shell slipped into the stand-in"; exit 1; fi
  tar -C "$out" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi
log "importing $tarball as $NAME"
# shellcheck disable=SC2086
{
  c="$($BUILDAH from scratch)"
  $BUILDAH add "$c" "$tarball" / >/dev/null
  $BUILDAH config --user 65532:65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --annotation "chat.stand-in.recipe=$RECIPE" "$c"
  $BUILDAH commit --rm -q "$c" "$NAME" >/dev/null
}
