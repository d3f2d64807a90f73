#!/usr/bin/env bash
# Times `make serve` on a fresh clone until the server answers SERVING, sizes its .venv, says whether torch got
# installed, then stops the server and deletes the clone. Run by hand (not part of `make test`).
#
# Usage: bench/fresh_setup.sh REPOSITORY [PORT]    e.g. bench/fresh_setup.sh . 51001
set -euo pipefail
source_repo=$1
port=${2:-51001}
scratch=$(mktemp -d /tmp/cachesvc-fresh.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
git clone -q "$source_repo" "$scratch/repo"
cd "$scratch/repo"
echo "load before: $(uptime)"
start=$(date +%s.%N)
# its own process group, so that stopping it stops make and the server under it
setsid make serve ARGS="--port $port --metrics-port -1 --data-dir $scratch/data" >"$scratch/serve.log" 2>&1 &
group=$!
until [ -x .venv/bin/cachesvc ] && .venv/bin/cachesvc health --timeout 1 --target "127.0.0.1:$port" >/dev/null 2>&1; do
    if ! kill -0 "$group" 2>/dev/null; then
        echo "make serve exited before SERVING:"; tail -20 "$scratch/serve.log"; exit 1
    fi
    sleep 0.5
done
end=$(date +%s.%N)
kill -TERM -- "-$group" 2>/dev/null || true
wait "$group" 2>/dev/null || true
torch=$(.venv/bin/python -c 'import importlib.util as u; print("yes" if u.find_spec("torch") else "no")')
echo "load after:  $(uptime)"
printf 'make serve until SERVING: %.0f s; .venv: %s MB (%s distributions); torch installed: %s\n' \
    "$(echo "$end - $start" | bc)" "$(du -sm .venv | cut -f1)" \
    "$(.venv/bin/python -m pip list --format=freeze 2>/dev/null | wc -l)" "$torch"
