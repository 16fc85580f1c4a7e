# Optional tools some tests use when present (sourced by .ci/run). Best effort:
# each is unpacked from Debian's package into a scratch folder (nothing installed,
# no service started); a test whose tool is missing skips with its reason.
tools_dir="${TMPDIR:-/tmp}/beseda-ci-tools"
mkdir -p "$tools_dir"

fetch_deb() {  # fetch_deb PACKAGE -> unpacks into $tools_dir/PACKAGE
  local pkg="$1"
  [ -d "$tools_dir/$pkg/usr" ] && return 0
  command -v apt-get >/dev/null 2>&1 || return 1
  (
    cd "$tools_dir" &&
      { timeout 120 apt-get download "$pkg" >/dev/null 2>&1 ||
        { timeout 180 apt-get update >/dev/null 2>&1 && timeout 120 apt-get download "$pkg" >/dev/null 2>&1; }; } &&
      dpkg -x "$pkg"_*.deb "$pkg" && rm -f "$pkg"_*.deb
  ) || return 1
}

if [ -z "${PROMTOOL:-}" ] && ! command -v promtool >/dev/null 2>&1; then
  if fetch_deb prometheus && [ -x "$tools_dir/prometheus/usr/bin/promtool" ]; then
    export PROMTOOL="$tools_dir/prometheus/usr/bin/promtool"
  fi
fi
