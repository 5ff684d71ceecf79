#!/usr/bin/env bash
# Where the time of a Firecracker-style restore goes: one restore per implementation by the VMM
# fixture (KVM vCPU, pinned with the handler on CPU 0, warm page cache) under `perf record -a -g`,
# then, per thread that ran on CPU 0, its CPU time (samples at 4 kHz) and how much of it was in
# the x86 emulator, in a userfault wait, in UFFDIO ioctls, in page faults, in poll/read, and in
# user space. The numbers behind the explanations in bench/README.md ("Firecracker restore").
#
#   bench/fc_profile.sh [MiB (default 64)] [touch (default all)] [impls (default all of them)]
#   bench/fc_profile.sh 64 random:10:7 c,deno-ondemand
#
# Needs root (perf -a), perf, cc, and node_modules/.bin/{deno,bun}. Measures `git archive HEAD`
# (REV=... to choose), each restore holding flock /tmp/uffd-bench.lock like bench/firecracker.ts.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-64}
TOUCH=${2:-all}
IMPLS=${3:-file,threads-file,c,deno-ondemand,deno,deno-prefetch,bun-ondemand,bun,bun-prefetch}
REV=${REV:-HEAD}
W=$(mktemp -d /tmp/uffd-fc-profile-XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir "$W/lib"
git archive "$REV" -- cli.ts cli mod.ts src ffi deno.json tests/fixtures/fc_vmm.c bench/native/fc_handler.c tests/helpers/vmm.ts |
  tar -x -C "$W/lib"
cc -O2 -Wall -Werror -pthread -o "$W/fc_vmm" "$W/lib/tests/fixtures/fc_vmm.c"
cc -O2 -Wall -Werror -pthread -o "$W/fc_handler" "$W/lib/bench/native/fc_handler.c"
MEM=/tmp/uffd-fc-profile-$$.mem
trap 'rm -rf "$W" "$MEM"' EXIT
node_modules/.bin/deno eval "import { writePatternFile } from '$W/lib/tests/helpers/vmm.ts';
  writePatternFile('$MEM', $MIB * 1048576, 20251);"
BYTES=$((MIB * 1048576))
S=$W/fc.sock
echo "library $(git rev-parse --short "$REV"), $MIB MiB, --touch $TOUCH, pinned (taskset -c 0), warm cache"

profile() { # impl
  local impl=$1 h=() hp=
  case $impl in
  c) h=("$W/fc_handler" --socket "$S" --mem-file "$MEM") ;;
  deno*) h=(node_modules/.bin/deno run --allow-ffi --allow-read --allow-write "$W/lib/cli.ts") ;;
  bun*) h=(node_modules/.bin/bun run "$W/lib/cli.ts") ;;
  esac
  case $impl in
  deno* | bun*) h+=(firecracker --socket "$S" --mem-file "$MEM" --json) ;;
  esac
  case $impl in *-ondemand) h+=(--readahead 1) ;; esac
  local vmm=("$W/fc_vmm" --mode kvm --socket "$S")
  if [[ $impl == *-prefetch ]]; then
    # the first restore records the working set (not profiled)
    rm -f "$S"
    "${h[@]}" --readahead 1 --record "$W/ws.json" >/dev/null 2>"$W/r.err" &
    hp=$!
    for _ in $(seq 1 1000); do grep -q listening "$W/r.err" && break; sleep 0.01; done
    "${vmm[@]}" --regions "$BYTES" --touch "$TOUCH" >/dev/null
    wait "$hp"
    hp=
    h+=(--prefetch "$W/ws.json")
  fi
  case $impl in
  file) vmm=("$W/fc_vmm" --mode file --mem-file "$MEM") ;;
  threads-file) vmm=("$W/fc_vmm" --mode threads-file --mem-file "$MEM") ;;
  esac
  rm -f "$S"
  cat "$MEM" >/dev/null
  if [ ${#h[@]} -gt 0 ]; then
    taskset -c 0 "${h[@]}" >"$W/h.out" 2>"$W/h.err" &
    hp=$!
    for _ in $(seq 1 1000); do grep -q listening "$W/h.err" && break; sleep 0.01; done
  fi
  perf record -q -a -g -F 4000 -o "$W/$impl.data" -- taskset -c 0 "${vmm[@]}" --regions "$BYTES" --touch "$TOUCH" \
    >"$W/v.out" 2>/dev/null
  [ -n "$hp" ] && wait "$hp"
  local t
  t=$(grep -o '"touchMs":[0-9.]*' "$W/v.out" | cut -d: -f2)
  echo
  echo "== $impl: touchMs $t${hp:+; handler: $(tail -1 "$W/h.out" | grep -o '"faults":[0-9]*\|"prefetched":[0-9]*\|"prefetchMs":[0-9.]*\|"handshakeMs":[0-9.]*' | tr '\n' ' ')}"
  # Threads of the VMM and the handler that ran on CPU 0, by samples (4 kHz: 0.25 ms each);
  # other processes on CPU 0 (other tenants) summed in one line.
  perf script -i "$W/$impl.data" -F comm,pid,tid,cpu,ip,sym,dso 2>/dev/null | awk -v hp="${hp:-0}" '
    function flush() {
      if (key == "") return
      n[key]++
      if (stack ~ /x86_emulate_instruction/) emu[key]++
      if (stack ~ /handle_userfault/) uf[key]++
      if (stack ~ /userfaultfd_ioctl/) io[key]++
      if (stack ~ /exc_page_fault/) pf[key]++
      if (stack ~ /do_sys_poll|ksys_read/) pr[key]++
      if (first !~ /kernel\.kallsyms/) us[key]++
      key = ""
    }
    /^[^\t]/ && match($0, /[0-9]+\/[0-9]+ +\[[0-9]+\]/) {
      flush()
      hdr = substr($0, RSTART, RLENGTH); comm = substr($0, 1, RSTART - 1); gsub(/^ +| +$/, "", comm)
      split(hdr, f, /[\/ \[\]]+/)
      if (hdr !~ /\[000\]/) next
      key = (f[1] == hp || comm == "fc_vmm") ? comm " " f[1] "/" f[2] : "(other processes)"
      stack = ""; first = ""
      next
    }
    NF == 0 { flush(); next }
    key != "" { stack = stack " " $0; if (first == "") first = $0 }
    END {
      flush()
      for (k in n) if (n[k] >= 8 || k ~ /other/)
        printf "%d\t  %-30s %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f\n", n[k], k, n[k] / 4, emu[k] / 4, uf[k] / 4, io[k] / 4, pf[k] / 4, pr[k] / 4, us[k] / 4
    }' >"$W/rows"
  printf "  %-30s %8s %8s %8s %8s %8s %8s %8s\n" "CPU 0 thread (comm pid/tid)" "cpu ms" "emul" "uf-wait" "ioctl" "pgfault" "poll+rd" "user"
  sort -rn "$W/rows" | cut -f2-
}

IFS=, read -r -a list <<<"$IMPLS"
for impl in "${list[@]}"; do
  flock /tmp/uffd-bench.lock bash -c "$(declare -f profile); W='$W' S='$S' MEM='$MEM' BYTES=$BYTES TOUCH='$TOUCH' profile $impl"
done
