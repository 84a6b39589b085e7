# Shared by scripts/bench and scripts/bench-redis (sourced, not run). The caller sets ROOT,
# WORK, FLASHSALE, SECRET and H2LOAD_SECS.

NICE=()
if [ "$(id -u)" -eq 0 ]; then
    NICE=(nice -n -10)
    # With autogroup scheduling the CPU is first shared between sessions: raise this one's too.
    if [ -w /proc/self/autogroup ]; then echo -10 >/proc/self/autogroup 2>/dev/null || true; fi
fi
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

log() { printf '==> %s\n' "$*" >&2; }

# need_apt PKG...: installs the Debian packages that are missing (as scripts/test does).
APT_UPDATED=0
need_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo -n); fi
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" -eq 0 ]; then
        "${sudo[@]}" apt-get update -q
        APT_UPDATED=1
    fi
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# start_server NAME [OPTION...]: flashsale on 127.0.0.1:0, rate limits off, with the options
# given (e.g. --redis-uri); sets SERVER_PID, GRPC, METRICS.
start_server() {
    local dir="$WORK/$1"
    shift
    mkdir -p "$dir"
    "${NICE[@]}" "$FLASHSALE" serve --host 127.0.0.1 --port 0 --metrics-port 0 --data-dir "$dir/data" \
        --jwt-secret "$SECRET" --buyer-purchases-per-sec 0 --ip-purchases-per-sec 0 --ip-logins-per-sec 0 "$@" \
        >"$dir/stdout" 2>"$dir/server.log" &
    SERVER_PID=$!
    local line="" i
    for i in $(seq 1 300); do
        line="$(grep -m1 '^flashsale listening' "$dir/stdout" || true)"
        [ -n "$line" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$dir/server.log" >&2; return 1; }
        sleep 0.1
    done
    [ -n "$line" ] || { log "the server did not start"; return 1; }
    GRPC="$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line")"
    METRICS="$(sed -E 's/.*metrics=([^ ]+).*/\1/' <<<"$line")"
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# refusal_count: the server's flashsale_purchases_total for refusals for lack of stock
# (SOLD_OUT, or SALE_ENDED once the sell-out closed the sale).
refusal_count() {
    curl -fsS "http://$METRICS/metrics" |
        awk '$1 ~ /^flashsale_purchases_total/ && ($1 ~ /outcome="SOLD_OUT"/ || $1 ~ /outcome="SALE_ENDED"/) { s += $2 } END { printf "%d\n", s }'
}

# h2load_rps OUTFILE PATH BODY [HEADER...]: one h2load run; prints req/s.
h2load_rps() {
    local out="$1" path="$2" body="$3"
    shift 3
    local headers=(-H 'content-type: application/grpc' -H 'te: trailers')
    local h
    for h in "$@"; do headers+=(-H "$h"); done
    "${NICE[@]}" h2load -D "$H2LOAD_SECS" -c 50 -m 10 -d "$body" "${headers[@]}" "http://$GRPC$path" >"$out" 2>&1
    awk '/^finished in/ { print $4 }' "$out"
}

# server_cpu_ms: CPU the server process has used so far, in ms (USER_HZ is 100).
server_cpu_ms() { awk '{ print ($14 + $15) * 10 }' "/proc/$SERVER_PID/stat"; }
# us_per OUT_MS COUNT: microseconds per item.
us_per() { awk -v ms="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", ms * 1000 / n; else print "n/a" }'; }

# h2load_done OUTFILE: requests done in that run.
h2load_done() { awk '/^requests:/ { print $6 }' "$1"; }

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
figure() { awk -v n="$2" '$1 == n { print $2 }' "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
fmt0() { awk -v a="$1" 'BEGIN { printf "%.0f", a }'; }
meets() { awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { ok = (op == ">=") ? (a >= b) : (a <= b); print ok ? "met" : "**missed**" }'; }

# write_block NAME BLOCK OUT: puts the file BLOCK between the markers `<!-- NAME:begin` and
# `<!-- NAME:end` of OUT (appended when OUT has none; the rest of OUT is kept).
write_block() {
    local name="$1" block="$2" out="$3"
    if [ -f "$out" ] && grep -q "^<!-- $name:begin" "$out" && grep -q "^<!-- $name:end" "$out"; then
        awk -v block="$block" -v name="$name" '
            $0 ~ "^<!-- " name ":begin" { while ((getline line < block) > 0) print line; skip = 1; next }
            $0 ~ "^<!-- " name ":end" { skip = 0; next }
            !skip { print }
        ' "$out" >"$WORK/out.md"
        cp "$WORK/out.md" "$out"
    elif [ -f "$out" ]; then
        { echo; cat "$block"; } >>"$out"
    else
        { echo "# Benchmarks"; echo; cat "$block"; } >"$out"
    fi
}
