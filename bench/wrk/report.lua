-- Shared by every wrk script: print one JSON line with throughput and percentiles.
-- errors = every failed request; status = answers outside 2xx/3xx, timeout = no
-- answer within wrk's timeout, socket = connect/read/write errors.
done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  local errors = e.status + e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    '{"requests": %d, "rps": %.1f, "p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f, "errors": %d,'
    .. ' "status": %d, "timeout": %d, "socket": %d}\n',
    summary.requests, summary.requests / seconds, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(99) / 1000, errors,
    e.status, e.timeout, e.connect + e.read + e.write))
end
