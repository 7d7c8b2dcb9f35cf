#!/usr/bin/env bash
# A deployed federation across real network interfaces, on one Linux machine.
#
# The coordinator and three sites each get a network namespace of their own: their own
# loopback, their own "eth0" and their own routes, as separate hosts would have. Each
# eth0 is one end of a veth pair whose other end is plugged into a bridge in a "hub"
# namespace (a switch), on the private network 10.77.0.0/24. Nothing is created in the
# machine's own network namespace, so the host's interfaces and routes are untouched.
#
#   coordinator 10.77.0.1   north 10.77.0.11   south 10.77.0.12   east 10.77.0.13
#
# The script makes the credentials (the server certificate is valid for 10.77.0.1; each
# site makes its own key pair and hands over only its public key), a small
# PneumoniaMNIST shard per site, starts `medfed server start` in the coordinator's
# namespace listening on 10.77.0.1 only and `medfed site start` in each site's namespace,
# runs 2 rounds, prints the metrics, and shows that the traffic crossed the veths: the
# sites cannot reach the coordinator's 127.0.0.1, and the byte counters of every eth0
# grow by at least the model's weights.
#
# Usage (as root; medfed installed in $PYTHON's environment):
#   MEDFED_DATA_DIR=/path/to/datasets scripts/netns_demo.sh [WORK_DIR]
# Environment: PYTHON (default: python), MEDFED_NETNS_ID (prefix of the namespaces'
# names, default medfed-PID), PORT (default 8000, not the sites' Runtime API port 9094),
# ROUNDS (default 2), RUN_TIMEOUT (seconds, default 900), KEEP_WORK=1 keeps a WORK_DIR
# the script created. Exit code 0 when the run finished and the checks held.
#
# Whatever happens (success, failure, Ctrl-C), the trap stops the processes the script
# started, by PID, and deletes every namespace it created (which removes the veths and
# the bridge with them).

set -euo pipefail

PYTHON=${PYTHON:-python}
ID=${MEDFED_NETNS_ID:-medfed-$$}
PORT=${PORT:-8000}
ROUNDS=${ROUNDS:-2}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
NET=10.77.0
COORD_IP=$NET.1
SITES=(north south east)
HUB=$ID-hub
COORD_NS=$ID-coordinator
DATA_FILE=${MEDFED_DATA_DIR:-$(dirname "$0")/../../shared/datasets}/pneumoniamnist.npz
MIN_WEIGHT_BYTES=100000  # the CNN's weights are ~0.5 MB a message: far more than any handshake

# Everything the processes started here inherit, so a test can find any that outlive the script.
export MEDFED_NETNS_DEMO=$ID OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
export FLWR_DISABLE_UPDATE_CHECK=1 FLWR_TELEMETRY_ENABLED=0

site_ns() { echo "$ID-$1"; }
site_ip() { echo "$NET.$((11 + $1))"; }
say() { printf '\n== %s\n' "$*"; }
# forget PID: it has ended and been reaped, so its number may be reused: never signal it again
forget() {
    local pid kept=()
    for pid in "${STARTED[@]}"; do [[ $pid == "$1" ]] || kept+=("$pid"); done
    STARTED=("${kept[@]}")
}

# ---- cleanup: only what this script created ------------------------------------------------

CREATED_NS=()  # namespaces, in the order they were made
STARTED=()     # PIDs of the medfed processes started here
WORK_MADE=""

cleanup() {
    local code=$? pid ns deadline
    trap - EXIT INT TERM
    # SIGTERM first: `medfed server start` and `medfed site start` then stop their own
    # Flower processes (SuperLink, SuperNode and their helpers) and end.
    for pid in "${STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 40))
    for pid in "${STARTED[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    done
    # Anything still inside our namespaces was started by this script (nobody else can
    # enter them): kill it by PID before deleting the namespace.
    for ns in "${CREATED_NS[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            echo "cleanup: killing leftover process $pid in $ns" >&2
            kill -KILL "$pid" 2>/dev/null || true
        done
    done
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
    # Deleting a namespace deletes its interfaces; a veth pair goes with either end.
    for ns in "${CREATED_NS[@]}"; do
        ip netns del "$ns" 2>/dev/null || echo "cleanup: could not delete namespace $ns" >&2
    done
    if [[ -n $WORK_MADE && ${KEEP_WORK:-0} != 1 ]]; then
        rm -rf "$WORK_MADE"
    fi
    echo "cleanup: ${#STARTED[@]} medfed process(es) still running were stopped;" \
        "${#CREATED_NS[@]} namespace(s) deleted" >&2
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # run the EXIT trap on Ctrl-C and kill too

# ---- checks before anything is made -------------------------------------------------------

if [[ $(id -u) -ne 0 ]]; then
    echo "netns_demo: needs root for 'ip netns'" >&2
    exit 2
fi
command -v ip >/dev/null || { echo "netns_demo: 'ip' (iproute2) not found" >&2; exit 2; }
"$PYTHON" -c "import medfed.cli" || { echo "netns_demo: medfed is not installed for $PYTHON" >&2; exit 2; }
MEDFED=("$PYTHON" -m medfed.cli)
[[ -f $DATA_FILE ]] || { echo "netns_demo: $DATA_FILE not found; set MEDFED_DATA_DIR" >&2; exit 2; }
for ns in "$HUB" "$COORD_NS" "${SITES[@]/#/$ID-}"; do
    if ip netns list | awk '{print $1}' | grep -qxF -- "$ns"; then
        echo "netns_demo: namespace $ns already exists; set MEDFED_NETNS_ID" >&2
        exit 2
    fi
done

if [[ $# -ge 1 ]]; then
    WORK=$1
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d /tmp/medfed-netns.XXXXXX)
    WORK_MADE=$WORK
fi
WORK=$(cd "$WORK" && pwd)
mkdir -p "$WORK/logs"

# ---- the network: a hub with a bridge, and one namespace per host --------------------------

add_ns() {
    ip netns add "$1"
    CREATED_NS+=("$1")
    ip -n "$1" link set lo up  # each host has its own loopback: 127.0.0.1 stays inside it
}

# join NS ADDRESS: plug NS's eth0 into the hub's bridge and give it ADDRESS/24
join() {
    local ns=$1 address=$2 port=v${#CREATED_NS[@]}
    ip -n "$HUB" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$HUB" link set "$port" master br0
    ip -n "$HUB" link set "$port" up
    ip -n "$ns" addr add "$address/24" dev eth0
    ip -n "$ns" link set eth0 up
}

say "network namespaces ($ID-*) on $NET.0/24"
add_ns "$HUB"
ip -n "$HUB" link add br0 type bridge
ip -n "$HUB" link set br0 up
add_ns "$COORD_NS"
join "$COORD_NS" "$COORD_IP"
for i in "${!SITES[@]}"; do
    add_ns "$(site_ns "${SITES[$i]}")"
    join "$(site_ns "${SITES[$i]}")" "$(site_ip "$i")"
done
for ns in "$COORD_NS" "${SITES[@]/#/$ID-}"; do
    echo "$ns: $(ip -n "$ns" -brief addr show eth0)"
done

# ---- credentials, data, settings ----------------------------------------------------------

say "credentials: the server certificate names $COORD_IP"
"${MEDFED[@]}" certs --out "$WORK/creds" --coordinator-host coordinator.medfed.test \
    --coordinator-ip "$COORD_IP" >"$WORK/logs/certs.log" 2>&1
ls "$WORK/creds"

say "data: a shard of PneumoniaMNIST per site, a test slice for the coordinator"
COORD_DATA=$("$PYTHON" -m medfed.demo_shards "$DATA_FILE" "$WORK/data" "$(IFS=,; echo "${SITES[*]}")")

say "site keys: each site makes its own pair; only SITE.pub goes to the coordinator"
mkdir -p "$WORK/site-keys"
for site in "${SITES[@]}"; do
    ip netns exec "$(site_ns "$site")" "${MEDFED[@]}" site keygen "$site" --out "$WORK/data/$site/keys" \
        >>"$WORK/logs/keygen.log" 2>&1
    cp "$WORK/data/$site/keys/$site.pub" "$WORK/site-keys/"
done
ls "$WORK/site-keys"

for site in "${SITES[@]}"; do
    # each site knows the coordinator only by its address on the shared network
    cat >"$WORK/data/$site/SITE.yaml" <<EOF
name: $site
data: {format: npz, path: data.npz}
device: cpu
state_dir: state
coordinator:
  address: $COORD_IP:$PORT
  ca_cert: $WORK/creds/ca.crt
  private_key: keys/$site.key
  public_key: keys/$site.pub
  trusted_entities: $WORK/creds/trusted-entities.yaml
policy:
  tasks: [classification]
  models: [cnn]
EOF
done
cat >"$WORK/experiment.yaml" <<EOF
name: netns
seed: 3
data: {dataset: pneumoniamnist, root: $COORD_DATA}
model: {name: cnn}
train: {rounds: $ROUNDS, local_steps: 1, batch_size: 16, device: cpu, amp: false}
strategy: {min_sites: 2, timeout: 60}
logging: {progress: false}
EOF

# ---- counters before ----------------------------------------------------------------------

# bytes NS DIRECTION: eth0's byte counter (rx or tx) as seen inside NS
bytes() { ip netns exec "$1" cat "/sys/class/net/eth0/statistics/$2_bytes"; }
declare -A RX0 TX0
say "eth0 counters before the run"
for ns in "$COORD_NS" "${SITES[@]/#/$ID-}"; do
    RX0[$ns]=$(bytes "$ns" rx)
    TX0[$ns]=$(bytes "$ns" tx)
    echo "--- $ns"
    ip -n "$ns" -s link show eth0
done

# ---- the coordinator ----------------------------------------------------------------------

say "coordinator: medfed server start on $COORD_IP:$PORT (in $COORD_NS)"
ip netns exec "$COORD_NS" "${MEDFED[@]}" server start "$WORK/experiment.yaml" --certs "$WORK/creds" \
    --sites-keys "$WORK/site-keys" --host "$COORD_IP" --port "$PORT" --state "$WORK/coordinator-state" \
    --output "$WORK/run" --wait-for-sites 120 >"$WORK/logs/coordinator.log" 2>&1 &
COORD_PID=$!
STARTED+=("$COORD_PID")

# Sites start once their keys are registered: an unregistered site is turned away for good.
registered() {
    "$PYTHON" -c 'import json, sys; sys.exit(len(json.load(open(sys.argv[1]))["sites"]) < int(sys.argv[2]))' \
        "$WORK/coordinator-state/state.json" "${#SITES[@]}" 2>/dev/null
}
deadline=$((SECONDS + 120))
until registered; do
    if ! kill -0 "$COORD_PID" 2>/dev/null || ((SECONDS > deadline)); then
        echo "netns_demo: the coordinator did not register the sites:" >&2
        tail -n 30 "$WORK/logs/coordinator.log" >&2
        exit 1
    fi
    sleep 1
done
echo "the coordinator registered ${SITES[*]}"

# ---- the sites ----------------------------------------------------------------------------

declare -A SITE_PID
for site in "${SITES[@]}"; do
    # every site uses the default Runtime API port 9094: each has a loopback of its own
    ip netns exec "$(site_ns "$site")" "${MEDFED[@]}" site start "$WORK/data/$site/SITE.yaml" \
        >"$WORK/logs/$site.log" 2>&1 &
    SITE_PID[$site]=$!
    STARTED+=("$!")
    echo "site $site: medfed site start (pid $!) in $(site_ns "$site"), coordinator $COORD_IP:$PORT"
done

# ---- isolation: the coordinator is reachable only across the network -----------------------

# reach NS HOST: exit 0 when a TCP connection from NS to HOST:PORT opens
reach() {
    ip netns exec "$1" "$PYTHON" -c \
        'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()' \
        "$2" "$PORT" 2>/dev/null
}
say "isolation"
for site in "${SITES[@]}"; do
    ns=$(site_ns "$site")
    if reach "$ns" 127.0.0.1; then
        echo "netns_demo: $ns reaches 127.0.0.1:$PORT: the namespaces are not isolated" >&2
        exit 1
    fi
    reach "$ns" "$COORD_IP" || { echo "netns_demo: $ns cannot reach $COORD_IP:$PORT" >&2; exit 1; }
    # its only route is the shared network: every byte to the coordinator leaves through eth0
    if [[ -n $(ip -n "$ns" route show default) ]]; then
        echo "netns_demo: $ns has a default route" >&2
        exit 1
    fi
    echo "$ns: 127.0.0.1:$PORT refused (its own loopback); $COORD_IP:$PORT reachable;" \
        "routes: $(ip -n "$ns" route | tr -s ' ')"
done
# ---- the run ------------------------------------------------------------------------------

say "waiting for $ROUNDS rounds (at most $RUN_TIMEOUT s)"
deadline=$((SECONDS + RUN_TIMEOUT))
while kill -0 "$COORD_PID" 2>/dev/null; do
    if ((SECONDS > deadline)); then
        echo "netns_demo: the run did not end within $RUN_TIMEOUT s" >&2
        tail -n 30 "$WORK/logs/coordinator.log" >&2
        exit 1
    fi
    sleep 1
done
code=0
wait "$COORD_PID" || code=$?
forget "$COORD_PID"
cat "$WORK/logs/coordinator.log"
if ((code != 0)); then
    echo "netns_demo: medfed server start ended with exit code $code" >&2
    for site in "${SITES[@]}"; do echo "--- $site" >&2; tail -n 15 "$WORK/logs/$site.log" >&2; done
    exit 1
fi

say "metrics ($WORK/run)"
"$PYTHON" - "$WORK/run" <<'EOF'
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
for line in (run / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    test = ", ".join(f"{k} {v:.3f}" for k, v in row["test"].items() if isinstance(v, float))
    print(f"round {row['round']}: sites {sorted(row['sites'])}; test {test}")
summary = json.loads((run / "summary.json").read_text())
print("summary: sites", summary["sites"], "| test auc", round(summary["test"]["auc"], 3))
EOF

# ---- counters after -----------------------------------------------------------------------

say "eth0 counters after the run"
short=0
for ns in "$COORD_NS" "${SITES[@]/#/$ID-}"; do
    echo "--- $ns"
    ip -n "$ns" -s link show eth0
    rx=$(($(bytes "$ns" rx) - RX0[$ns]))
    tx=$(($(bytes "$ns" tx) - TX0[$ns]))
    echo "$ns eth0: received $rx bytes, sent $tx bytes during the run"
    if ((rx < MIN_WEIGHT_BYTES || tx < MIN_WEIGHT_BYTES)); then
        echo "netns_demo: $ns moved fewer bytes than one set of weights" >&2
        short=1
    fi
done
((short == 0)) || exit 1

# ---- the sites stop as an administrator would stop them -----------------------------------

say "stopping the sites"
for site in "${SITES[@]}"; do kill -TERM "${SITE_PID[$site]}"; done
for site in "${SITES[@]}"; do
    code=0
    wait "${SITE_PID[$site]}" || code=$?
    forget "${SITE_PID[$site]}"
    ((code == 0)) || { echo "netns_demo: site $site ended with exit code $code" >&2; exit 1; }
    echo "site $site: stopped"
done
say "finished: $WORK/run"
