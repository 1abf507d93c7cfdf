# Sourced by the bench scripts: the configuration every benchmark server starts from (the load
# generator signs with bench-app-secret and reads with bench-api-token), a wait for a server to
# answer, the binaries to run, and a scratch folder cleaned up on exit.

# bench_config PORT DATABASE_URL: prints the configuration; append sections after it.
bench_config() {
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
[database]
url = "$2"
[webhook]
verify_token = "bench-verify-token"
app_secrets = ["bench-app-secret"]
[api]
token = "bench-api-token"
[graph]
access_token = "bench-graph-token"
waba_id = "1"
TOML
}

# bench_up PORT: waits up to 60 s for the server's /healthz; fails if it never answers.
bench_up() {
  for _ in $(seq 600); do
    curl -fs "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the server on port $1 did not answer" >&2
  return 1
}

# bench_server [BINARY]: prints the server binary to run; with none given, builds and names
# the release one.
bench_server() {
  if [ -n "${1:-}" ]; then
    echo "$1"
    return 0
  fi
  cargo build --release --locked --quiet --bin ctwa-leads >&2
  echo target/release/ctwa-leads
}

# bench_loadgen: prints the load generator to run, building the release one if it is missing.
bench_loadgen() {
  local bin=target/release/examples/loadgen
  [ -x "$bin" ] || cargo build --release --locked --quiet --example loadgen >&2
  echo "$bin"
}

# bench_work: sets WORK to a fresh folder, removed when the script exits, after every job the
# script started is killed.
bench_work() {
  WORK=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
}
