# Sourced by the .ci scripts: stage banners, and installing what a script needs from Debian when
# it is missing (CI machines start from a clean image).
started=$SECONDS
stage() { printf '\n=== [%3ds] %s\n' "$((SECONDS - started))" "$*"; }

apt_install() {
  local sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  stage "installing $*"
  # .ci/run's two lanes may both install: wait for the other's dpkg lock instead of failing
  "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 update
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y "$@"
}

# need PKG... and COMMAND=PKG...: installs the packages not installed and the packages of the
# commands not found, in one apt-get call. make is satisfied by ninja too.
need() {
  local missing=() item
  for item in "$@"; do
    if [[ $item == *=* ]]; then
      local command=${item%%=*} pkg=${item#*=}
      [[ $command == make ]] && command -v ninja >/dev/null && continue
      command -v "$command" >/dev/null || missing+=("$pkg")
    else
      dpkg-query -W -f='${Status}' "$item" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$item")
    fi
  done
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
}
