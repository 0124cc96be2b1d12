#!/bin/bash
# Added latency vs --merge-ms at 1000 and 5000 HTTP-FLV viewers (rtmpd on core 0, loadgen on core 1).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/benchmarks/out/merge-table; mkdir -p "$OUT" && cd "$OUT"
for n in 1000 5000; do
 for m in 0 10 50 100 auto; do
  pkill -f "rtmpd --rtmp tcp:46935" ; sleep 0.5
  taskset -c 0 $ROOT/.venv/bin/twistd -n --pidfile= rtmpd --rtmp tcp:46935 --http tcp:46501 --web tcp:46080 --root $OUT/media --record none --merge-ms $m > srv.log 2>&1 &
  sleep 2
  taskset -c 1 python3 $ROOT/benchmarks/publish.py --url rtmp://127.0.0.1:46935/live/bench --duration 40 --quiet > pub.log 2>&1 &
  sleep 3
  pid=$(pgrep -f "rtmpd --rtmp tcp:46935")
  taskset -c 1 $ROOT/benchmarks/bin/loadgen --proto http-flv --port 46501 --viewers $n --duration 25 --window 10 --manifest $ROOT/benchmarks/out/clip_1M.json --json lg-$n-$m.json > lg.txt 2>&1 &
  lg=$!
  sleep 15   # joins done and settled: server CPU over the loadgen's 10 s window only
  c0=$(awk '{print $14+$15}' /proc/$pid/stat)
  wait $lg
  c1=$(awk '{print $14+$15}' /proc/$pid/stat)
  python3 -c "
import json; d=json.load(open('lg-$n-$m.json'))
print('| $n | $m |', d['healthy_pct'], '|', round(($c1-$c0)/100/10*100), '|', d['latency_ms']['p50'], '/', d['latency_ms']['p99'], '|')"
  pkill -f "publish.py --url rtmp://127.0.0.1:46935"; pkill -f "rtmpd --rtmp tcp:46935"; sleep 1
 done
done
