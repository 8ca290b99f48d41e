#!/usr/bin/env bash
# The C examples against a real `fogconnect signal` on loopback: the device
# registers, the app connects to it by id (QUIC, service 1 and service 0).
# Usage: demo.sh FOGCONNECT_BINARY EXAMPLES_DIR
set -euo pipefail
fogconnect=$1
examples=$2
secret="fogconnect C demo secret, loopback only"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Waits (at most 20 s) until FILE has a line matching PATTERN.
wait_for() {
    local file=$1 pattern=$2
    for _ in $(seq 200); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo: '$pattern' did not appear in $file:" >&2
    cat "$file" >&2
    return 1
}

"$fogconnect" signal --listen 127.0.0.1:0 --secret "$secret" >"$work/signal.log" 2>&1 &
pids+=($!)
wait_for "$work/signal.log" "signaling on"
port=$(sed -n 's|.*ws://127.0.0.1:\([0-9]*\)/ws.*|\1|p' "$work/signal.log")

device_id="ee:34:a1:44:2c:1c"
export FOGCONNECT_LISTEN=127.0.0.1:0
FOGCONNECT_TOKEN=$("$fogconnect" signal token --id "$device_id" --secret "$secret") \
    "$examples/device" "$device_id" 127.0.0.1 "$port" >"$work/device.log" 2>&1 &
pids+=($!)
wait_for "$work/device.log" "registered"

status=0
FOGCONNECT_TOKEN=$("$fogconnect" signal token --id app-1 --secret "$secret") \
    "$examples/app" app-1 "$device_id" 127.0.0.1 "$port" || status=$?
kill -TERM "${pids[1]}"
wait "${pids[1]}" || true
echo "--- device output"
cat "$work/device.log"
exit $status
