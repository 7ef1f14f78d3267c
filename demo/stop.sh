#!/usr/bin/env bash
# Stops the demo's certmapd and backend.
RUN=$(cd "$(dirname "$0")" && pwd)/run
for p in certmapd backend; do
  if [ -f "$RUN/$p.pid" ]; then
    kill "$(cat "$RUN/$p.pid")" 2>/dev/null || true
    rm -f "$RUN/$p.pid"
  fi
done
