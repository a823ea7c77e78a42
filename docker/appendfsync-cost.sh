#!/usr/bin/env bash
# What `appendfsync always` (docker-compose.yml's Redis setting) costs tally against
# `everysec`, on this machine: three local redis-server nodes with `--appendonly yes
# --appendfsync MODE`, the release tally-server over them with its default batching, and a
# small keep-alive HTTP/1.1 client (built here) POSTing visits from 64 connections for
# 10 s after a 2 s warm-up. Redis's fsyncs over those 10 s are counted with `perf stat` on
# the fdatasync/fsync tracepoints (root, or perf_event_paranoid permitting).
#
# Two scenarios: `hot` (100 pages: a batch per node every BATCH_INTERVAL_SECONDS) and
# `cold` (every visit a new page: a batch per node every BATCH_SIZE_LIMIT pages). The modes
# alternate, ROUNDS times (default 5), and the medians are printed as a Markdown table.
#
# Usage, from the repository root: docker/appendfsync-cost.sh [ROUNDS]
# Needs cargo, redis-server, redis-cli, perf and python3 (for free ports). Honours
# CARGO_TARGET_DIR.
set -euo pipefail

rounds=${1:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
for tool in cargo redis-server redis-cli perf python3; do
  command -v "$tool" >/dev/null || { echo "appendfsync-cost: $tool is not installed" >&2; exit 2; }
done
perf stat -e syscalls:sys_enter_fdatasync -- true >/dev/null 2>&1 ||
  { echo "appendfsync-cost: perf cannot count syscall tracepoints here (try as root)" >&2; exit 2; }

work=$(mktemp -d /tmp/appendfsync-cost.XXXXXX)
children=()
cleanup() {
  for pid in "${children[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# ---- build: the server, and the load client ------------------------------------------------
(cd "$root" && cargo build --release -p tally-server --quiet)
server_bin=$target/release/tally-server
mkdir -p "$work/client/src"
cp "$root/Cargo.lock" "$work/client/Cargo.lock"
cat > "$work/client/Cargo.toml" <<'TOML'
[package]
name = "appendfsync-client"
version = "0.1.0"
edition = "2024"

[dependencies]
tokio = { version = "1", features = ["rt", "net", "io-util", "time", "macros"] }

[workspace]
TOML
cat > "$work/client/src/main.rs" <<'RUST'
//! `appendfsync-client HOST:PORT SECONDS CONNECTIONS PAGES`: keep-alive connections POST
//! visits, one request in flight each, until SECONDS pass; prints `visits_per_s=… visits=…`.
//! PAGES 0: every visit a new page.
use std::io::{Error, ErrorKind};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

async fn connection(address: String, id: usize, until: Instant, pages: u64) -> std::io::Result<u64> {
    let stream = TcpStream::connect(&address).await?;
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let (mut line, mut body, mut ok) = (String::new(), Vec::new(), 0);
    for i in 0u64.. {
        if Instant::now() >= until {
            break;
        }
        let page = match pages {
            0 => format!("c{id}x{i}"),
            n => format!("h{}", (i * 7 + id as u64) % n),
        };
        let request =
            format!("POST /api/v1/counter/visit/{page} HTTP/1.1\r\nHost: tally\r\nContent-Length: 0\r\n\r\n");
        writer.write_all(request.as_bytes()).await?;
        line.clear();
        reader.read_line(&mut line).await?;
        if line.split(' ').nth(1) != Some("200") {
            return Err(Error::other(format!("answer {line:?} to {page}")));
        }
        let mut length = 0;
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
            }
        }
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
        ok += 1;
    }
    Ok(ok)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [address, seconds, connections, pages] = args.as_slice() else {
        return Err("usage: appendfsync-client HOST:PORT SECONDS CONNECTIONS PAGES".into());
    };
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds.parse()?);
    let pages: u64 = pages.parse()?;
    let tasks: Vec<_> = (0..connections.parse::<usize>()?)
        .map(|id| tokio::spawn(connection(address.clone(), id, until, pages)))
        .collect();
    let mut visits = 0;
    for task in tasks {
        visits += task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("visits_per_s={:.0} visits={visits}", visits as f64 / elapsed);
    Ok(())
}
RUST
CARGO_TARGET_DIR=$target/appendfsync-client cargo build --release --quiet \
  --manifest-path "$work/client/Cargo.toml"
client_bin=$target/appendfsync-client/release/appendfsync-client

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# One measurement: prints `MODE SCENARIO VISITS_PER_S VISITS FSYNCS`.
measure() {
  local mode=$1 scenario=$2 pages=100 run=$work/run
  [ "$scenario" = cold ] && pages=0
  rm -rf "$run" && mkdir -p "$run"
  local pids=() ports=() urls=() port
  for i in 1 2 3; do
    port=$(free_port)
    mkdir -p "$run/redis$i"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$run/redis$i" --save "" \
      --appendonly yes --appendfsync "$mode" --logfile "$run/redis$i.log" &
    pids+=($!) ports+=("$port") urls+=("redis://127.0.0.1:$port")
    children+=($!)
  done
  for port in "${ports[@]}"; do
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
  done
  local nodes tally_port server
  nodes=$(IFS=,; echo "${urls[*]}")
  tally_port=$(free_port)
  (cd "$run" && exec env -i PATH="$PATH" REDIS_NODES="$nodes" HOST=127.0.0.1 \
    PORT="$tally_port" "$server_bin" >"$run/server.log" 2>&1) &
  server=$!
  children+=("$server")
  until grep -q "listening on" "$run/server.log" 2>/dev/null; do sleep 0.05; done

  "$client_bin" "127.0.0.1:$tally_port" 2 64 "$pages" >/dev/null
  perf stat -x, -o "$run/perf.csv" -p "$(IFS=,; echo "${pids[*]}")" \
    -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync -- sleep 10.2 &
  local perf=$!
  sleep 0.1
  local result
  result=$("$client_bin" "127.0.0.1:$tally_port" 10 64 "$pages")
  wait "$perf"
  local fsyncs
  fsyncs=$(awk -F, '/sys_enter_f(data)?sync/ { n += $1 } END { print n }' "$run/perf.csv")
  local rate=${result#visits_per_s=}; rate=${rate%% *}
  local visits=${result##*visits=}
  echo "$mode $scenario $rate $visits $fsyncs"

  kill -TERM "$server" && wait "$server" || true
  for port in "${ports[@]}"; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
  wait "${pids[@]}" 2>/dev/null || true
  children=()
}

echo "appendfsync-cost: $rounds rounds; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
: > "$work/results"
for round in $(seq "$rounds"); do
  for scenario in hot cold; do
    for mode in always everysec; do
      measure "$mode" "$scenario" | tee -a "$work/results" >&2
    done
  done
done
echo "appendfsync-cost: load average after $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# Medians per scenario and mode, and the ratio of the medians.
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def med(scenario, mode, column):
    return statistics.median(float(r[column]) for r in rows if r[0] == mode and r[1] == scenario)
def per_1k(scenario, mode):
    return statistics.median(1000 * float(r[4]) / float(r[3]) for r in rows if r[0] == mode and r[1] == scenario)
def ratios(scenario):
    always = [float(r[2]) for r in rows if r[0] == "always" and r[1] == scenario]
    everysec = [float(r[2]) for r in rows if r[0] == "everysec" and r[1] == scenario]
    return [a / e for a, e in zip(always, everysec)]
print("| scenario | visits/s, always | visits/s, everysec | always / everysec (per round: min to max) | Redis fsyncs per 1,000 visits, always / everysec |")
print("|---|--:|--:|--:|--:|")
for scenario, label in [("hot", "hot, 100 pages"), ("cold", "cold, every visit a new page")]:
    a, e = med(scenario, "always", 2), med(scenario, "everysec", 2)
    r = ratios(scenario)
    print(f"| {label} | {a:,.0f} | {e:,.0f} | {a / e:.2f} ({min(r):.2f} to {max(r):.2f}) | "
          f"{per_1k(scenario, 'always'):.2f} / {per_1k(scenario, 'everysec'):.2f} |")
PY
