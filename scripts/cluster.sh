#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, next to the main broker.
#
#   scripts/cluster.sh start         start leveret1..3@localhost and cluster them
#   scripts/cluster.sh stop          stop all three and remove the base directory
#   scripts/cluster.sh status        one line per node; exit 0 only if all 3 run clustered
#   scripts/cluster.sh stop-node N   stop node N (its data stays, so it can come back)
#   scripts/cluster.sh start-node N  start node N again and wait until it rejoined
#
# Node N is leveretN@localhost, AMQP on 127.0.0.1:568N, distribution on
# 127.0.0.1:2568N, guest/guest, no plugins. Its config, data and logs live in
# ${LEVERET_CLUSTER_DIR:-/tmp/leveret-cluster}/leveretN. The nodes run as the
# `rabbitmq` user with HOME=/var/lib/rabbitmq, so they share the main node's
# Erlang cookie and the CLI tools reach them. The main broker (rabbit@localhost,
# port 5672) is never touched. Run as root or as rabbitmq.
#
# Every command is idempotent and every wait is bounded
# (LEVERET_CLUSTER_TIMEOUT seconds, 90 by default).
#
# LEVERET_CLUSTER_DLX_CONFIRM_TIMEOUT_MS, if set, becomes the nodes'
# dead_letter_worker_publisher_confirm_timeout (advanced.config; RabbitMQ's
# default is 180000): how long a quorum queue's at-least-once dead-letter worker
# waits for a confirm before it sends a message again. See docs/cluster.md.
set -euo pipefail

BASE=${LEVERET_CLUSTER_DIR:-/tmp/leveret-cluster}
TIMEOUT=${LEVERET_CLUSTER_TIMEOUT:-90}
DLX_CONFIRM_TIMEOUT_MS=${LEVERET_CLUSTER_DLX_CONFIRM_TIMEOUT_MS:-}
HOST=localhost
RUN_AS=rabbitmq
RABBIT_HOME=/var/lib/rabbitmq # the rabbitmq user's home: .erlang.cookie lives here
RABBIT_BIN=${RABBITMQ_BIN_DIR:-/usr/lib/rabbitmq/bin}
CLI_TIMEOUT=60 # seconds for one rabbitmqctl call
MARKER=.leveret-cluster
ALL=(1 2 3)

say() { printf 'cluster [%3ss]: %s\n' "$SECONDS" "$*"; }
die() {
  printf 'cluster: error: %s\n' "$*" >&2
  exit 1
}

node() { printf 'leveret%s@%s' "$1" "$HOST"; }
amqp_port() { printf '%s' $((5680 + $1)); }
dist_port() { printf '%s' $((25680 + $1)); }
node_dir() { printf '%s/leveret%s' "$BASE" "$1"; }
pid_file() { printf '%s/pid' "$(node_dir "$1")"; }

check_node_arg() {
  [[ ${1:-} =~ ^[123]$ ]] || die "node number must be 1, 2 or 3, got '${1:-}'"
}

preflight() {
  [[ $BASE == /* && $BASE != / ]] || die "LEVERET_CLUSTER_DIR must be an absolute path other than /, got '$BASE'"
  [[ -x $RABBIT_BIN/rabbitmq-server ]] || die "RabbitMQ is not installed ($RABBIT_BIN/rabbitmq-server is missing)"
  id "$RUN_AS" >/dev/null 2>&1 || die "there is no '$RUN_AS' user"
  local me
  me=$(id -un)
  [[ $me == root || $me == "$RUN_AS" ]] || die "run as root or as $RUN_AS (the nodes need the Erlang cookie in $RABBIT_HOME)"
  [[ -e $RABBIT_HOME/.erlang.cookie ]] || die "no Erlang cookie at $RABBIT_HOME/.erlang.cookie; start the main broker once (rabbitmq-server -detached)"
}

# Run a command as the rabbitmq user with its home (and so its Erlang cookie).
as_rabbitmq() {
  if [[ $(id -un) == "$RUN_AS" ]]; then
    env HOME="$RABBIT_HOME" "$@"
  else
    runuser -u "$RUN_AS" -- env HOME="$RABBIT_HOME" "$@"
  fi
}

# A RabbitMQ CLI tool against node N, bounded in time: ctl N rabbitmqctl args...
ctl() {
  local n=$1 tool=$2 user=()
  shift 2
  [[ $(id -un) == "$RUN_AS" ]] || user=(runuser -u "$RUN_AS" --)
  (cd / && timeout "$CLI_TIMEOUT" "${user[@]}" env HOME="$RABBIT_HOME" \
    "$RABBIT_BIN/$tool" -n "$(node "$n")" "$@")
}

# The OS pid of node N's VM, or nothing. The pid file first; else any beam.smp
# whose environment names the node (a node whose pid file was lost).
node_pid() {
  local n=$1 pid p
  if [[ -s $(pid_file "$n") ]]; then
    pid=$(<"$(pid_file "$n")")
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == beam.smp ]]; then
      printf '%s' "$pid"
      return
    fi
  fi
  for p in /proc/[0-9]*; do
    [[ $(cat "$p/comm" 2>/dev/null) == beam.smp ]] || continue
    if tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qx "RABBITMQ_NODENAME=$(node "$n")"; then
      printf '%s' "${p#/proc/}"
      return
    fi
  done
}

port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The cluster's running nodes as node N sees them, one per line.
running_nodes() {
  local json
  json=$(ctl "$1" rabbitmqctl -q cluster_status --formatter json 2>/dev/null) || return 1
  grep -o '"running_nodes":\[[^]]*\]' <<<"$json" | grep -o 'leveret[0-9]*@[A-Za-z0-9.-]*' | sort -u
}

write_files() {
  local n=$1 dir
  dir=$(node_dir "$n")
  mkdir -p "$dir/mnesia" "$dir/log"
  touch "$BASE/$MARKER"
  cat >"$dir/rabbitmq.conf" <<EOF
# written by scripts/cluster.sh
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
log.console = false
log.file.level = info
EOF
  # The environment comes from cluster.sh; this file only keeps the main
  # node's /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@localhost) out.
  printf '# written by scripts/cluster.sh; see its environment variables\n' >"$dir/rabbitmq-env.conf"
  printf '[].\n' >"$dir/enabled_plugins"
  if [[ -n $DLX_CONFIRM_TIMEOUT_MS ]]; then
    [[ $DLX_CONFIRM_TIMEOUT_MS =~ ^[0-9]+$ ]] || die "LEVERET_CLUSTER_DLX_CONFIRM_TIMEOUT_MS must be milliseconds, got '$DLX_CONFIRM_TIMEOUT_MS'"
    printf '[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, %s}]}].\n' \
      "$DLX_CONFIRM_TIMEOUT_MS" >"$dir/advanced.config"
  else
    rm -f "$dir/advanced.config"
  fi
  chown -R "$RUN_AS:$RUN_AS" "$BASE"
}

launch() {
  local n=$1 dir
  dir=$(node_dir "$n")
  (cd "$dir" && as_rabbitmq \
    RABBITMQ_NODENAME="$(node "$n")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_PID_FILE="$dir/pid" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "$RABBIT_BIN/rabbitmq-server" -detached)
}

# Start node N's VM unless it runs already; does not wait.
start_vm() {
  local n=$1 pid
  pid=$(node_pid "$n")
  if [[ -n $pid ]]; then
    say "$(node "$n"): already running (pid $pid)"
    return
  fi
  if port_busy "$(amqp_port "$n")"; then
    die "port $(amqp_port "$n") is taken by another process; cannot start $(node "$n")"
  fi
  if port_busy "$(dist_port "$n")"; then
    die "port $(dist_port "$n") is taken by another process; cannot start $(node "$n")"
  fi
  write_files "$n"
  launch "$n"
  say "$(node "$n"): starting on 127.0.0.1:$(amqp_port "$n") (logs in $(node_dir "$n")/log)"
}

wait_ready() {
  local n=$1 deadline=$((SECONDS + TIMEOUT))
  until ctl "$n" rabbitmq-diagnostics -q check_running >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "$(node "$n") not running after ${TIMEOUT}s; see $(node_dir "$n")/log/$(node "$n").log"
    fi
    sleep 1
  done
  say "$(node "$n"): running (pid $(node_pid "$n"))"
}

# Run a CLI step against node N; its chatter goes to the node's log directory
# and is shown only when the step fails.
step() {
  local n=$1 out
  shift
  if ! out=$(ctl "$n" rabbitmqctl -q "$@" 2>&1); then
    printf '%s\n' "$out" >&2
    die "$(node "$n"): 'rabbitmqctl $*' failed"
  fi
  printf '%s\n' "$out" >>"$(node_dir "$n")/log/cli.log"
}

join() {
  local n=$1
  if running_nodes "$n" | grep -qx "$(node 1)"; then
    say "$(node "$n"): already clustered with $(node 1)"
    return
  fi
  step "$n" stop_app
  step "$n" reset # a fresh node: nothing to lose
  step "$n" join_cluster "$(node 1)"
  step "$n" start_app
  say "$(node "$n"): joined $(node 1)"
}

# Wait until some node in $@ (node numbers) sees all three nodes running.
wait_clustered() {
  local deadline=$((SECONDS + TIMEOUT)) n count
  while true; do
    for n in "$@"; do
      count=$(running_nodes "$n" 2>/dev/null | grep -cE '^leveret[123]@' || true)
      if [[ $count == 3 ]]; then
        say "3 nodes running ($(node 1), $(node 2), $(node 3))"
        return
      fi
    done
    ((SECONDS < deadline)) || die "the cluster does not show 3 running nodes after ${TIMEOUT}s (last count: ${count:-0})"
    sleep 1
  done
}

stop_vm() {
  local n=$1 pid deadline
  pid=$(node_pid "$n")
  if [[ -z $pid ]]; then
    say "$(node "$n"): not running"
    return
  fi
  # rabbitmqctl stop with the pid file waits until the VM has exited.
  ctl "$n" rabbitmqctl -q stop "$(pid_file "$n")" >/dev/null 2>&1 || true
  deadline=$((SECONDS + TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      say "$(node "$n"): still running after ${TIMEOUT}s, killing pid $pid"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  say "$(node "$n"): stopped (was pid $pid)"
}

cmd_start() {
  local n
  for n in "${ALL[@]}"; do start_vm "$n"; done
  for n in "${ALL[@]}"; do wait_ready "$n"; done
  join 2
  join 3
  wait_clustered 1
}

cmd_stop() {
  local n pids=() failed=0
  # All three at once: the data goes away, so the order does not matter.
  for n in "${ALL[@]}"; do
    stop_vm "$n" &
    pids+=($!)
  done
  for n in "${pids[@]}"; do wait "$n" || failed=1; done
  ((failed == 0)) || die "could not stop every node; see above"
  if [[ -d $BASE ]]; then
    if [[ -e $BASE/$MARKER || -z $(ls -A "$BASE") ]]; then
      rm -rf "$BASE"
      say "removed $BASE"
    else
      die "$BASE was not made by cluster.sh ($MARKER missing); not removing it"
    fi
  fi
}

cmd_status() {
  local n pid up=() all_ok=0 seen=""
  for n in "${ALL[@]}"; do
    pid=$(node_pid "$n")
    if [[ -n $pid ]] && ctl "$n" rabbitmq-diagnostics -q check_running >/dev/null 2>&1; then
      say "$(node "$n"): running (pid $pid, amqp 127.0.0.1:$(amqp_port "$n"))"
      up+=("$n")
    elif [[ -n $pid ]]; then
      say "$(node "$n"): VM up (pid $pid) but the app is not running"
    else
      say "$(node "$n"): stopped"
    fi
  done
  if ((${#up[@]})); then
    seen=$(running_nodes "${up[0]}" 2>/dev/null | paste -sd, -) || true
    say "running nodes seen by $(node "${up[0]}"): ${seen:-unknown}"
    [[ $(tr ',' '\n' <<<"$seen" | grep -cE '^leveret[123]@') == 3 ]] || all_ok=3
  else
    all_ok=3
  fi
  return "$all_ok"
}

cmd_stop_node() {
  check_node_arg "${1:-}"
  stop_vm "$1"
}

cmd_start_node() {
  check_node_arg "${1:-}"
  [[ -d $(node_dir "$1")/mnesia ]] || die "$(node "$1") has no data under $(node_dir "$1"); run '$0 start' first"
  start_vm "$1"
  wait_ready "$1"
  wait_clustered "$1"
}

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

main() {
  local cmd=${1:-}
  [[ -n $cmd ]] || usage
  shift
  case $cmd in
    start | stop | status | stop-node | start-node) ;;
    *) usage ;;
  esac
  preflight
  case $cmd in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    stop-node) cmd_stop_node "$@" ;;
    start-node) cmd_start_node "$@" ;;
  esac
}

main "$@"
