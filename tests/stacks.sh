# Sourced by tests/run: bring up each PostgreSQL/PoWA stack the suite runs
# on, all from Debian's packages. Each prepare_* function fails (non-zero)
# with a message on stderr when its stack cannot be brought up.
#
#   pg15-powa4  Debian 12's PostgreSQL 15 and PoWA 4.1, on the host.
#   pg17-powa5  Debian 13's PostgreSQL 17 and PoWA 5, in a debootstrap root
#               cached outside the clone ($POWAFLEET_TRIXIE_ROOT), run
#               with chroot; the host's /tmp is bind-mounted on its /tmp so
#               that cluster paths are the same inside and out.

TRIXIE_ROOT=${POWAFLEET_TRIXIE_ROOT:-/var/cache/powa-fleet/trixie}
TRIXIE_PACKAGES=postgresql-17,postgresql-17-powa,postgresql-17-pg-qualstats,postgresql-17-pg-stat-kcache,postgresql-17-hypopg

# Install the host packages that are missing (as root), else say which.
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "installing: ${missing[*]}"
        if [ -z "${APT_UPDATED:-}" ]; then
            apt-get update -qq
            APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "missing packages: ${missing[*]}" >&2
        echo "run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
        return 1
    fi
}

prepare_pg15_powa4() {
    apt_install postgresql-15 postgresql-15-powa postgresql-15-pg-qualstats \
        postgresql-15-pg-stat-kcache postgresql-15-hypopg powa-collector
}

# The Debian mirror apt already uses (deb822 or one-line sources).
debian_mirror() {
    local m
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v '^\s*#' | grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ')
    echo "${m:-http://deb.debian.org/debian}"
}

prepare_pg17_powa5() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "the pg17-powa5 stack needs root (debootstrap, chroot, mounts)" >&2
        return 1
    fi
    if [ ! -x "$TRIXIE_ROOT/usr/lib/postgresql/17/bin/postgres" ]; then
        apt_install debootstrap || return 1
        local mirror building="$TRIXIE_ROOT.building"
        mirror=$(debian_mirror)
        echo "building the Debian 13 root $TRIXIE_ROOT from $mirror"
        rm -rf "$building"
        mkdir -p "$(dirname "$TRIXIE_ROOT")"
        if ! debootstrap --variant=minbase --include="$TRIXIE_PACKAGES" \
                trixie "$building" "$mirror" >"$building.log" 2>&1; then
            echo "debootstrap failed; the end of $building.log:" >&2
            tail -n 20 "$building.log" >&2
            return 1
        fi
        # Debian's packaging made a default cluster; the tests never use it.
        rm -rf "$building/var/lib/postgresql/17/main" "$building/etc/postgresql/17/main"
        mv "$building" "$TRIXIE_ROOT"
        rm -f "$building.log"
    fi
    # Mounts stay in place for later runs (and runs of other clones).
    mountpoint -q "$TRIXIE_ROOT/proc" || mount -t proc proc "$TRIXIE_ROOT/proc" || return 1
    mountpoint -q "$TRIXIE_ROOT/dev" || mount --bind /dev "$TRIXIE_ROOT/dev" || return 1
    mountpoint -q "$TRIXIE_ROOT/tmp" || mount --bind /tmp "$TRIXIE_ROOT/tmp" || return 1
    # The stack works when its PostgreSQL starts as its postgres user.
    if ! chroot "$TRIXIE_ROOT" runuser -u postgres -- /usr/lib/postgresql/17/bin/postgres --version >/dev/null; then
        echo "PostgreSQL 17 does not run in $TRIXIE_ROOT" >&2
        return 1
    fi
}
