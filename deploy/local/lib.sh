# Shared by the local service scripts (kafka.sh, registry.sh), which source it after defining
# `say` (their own prefix) and `pidfile`.

# The live pid of $pidfile, if any.
running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}


# stop_process WHAT PIDFILE: SIGTERM, up to 30 s for it to exit, then SIGKILL.
stop_process() {
  local what=$1 pidfile=$2 pid
  if ! pid=$(running_pid); then
    say "not running (no live pid in $pidfile)"
    rm -f "$pidfile"
    return 0
  fi
  say "stopping $what pid $pid"
  kill -TERM "$pid"
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; say "stopped"; return 0; }
    sleep 0.25
  done
  say "still running after 30s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}
