-- GET one path ($BENCH_PATH) with $API_KEY; print one JSON line with the results.
local path = os.getenv("BENCH_PATH")
local headers = {Authorization = "Bearer " .. os.getenv("API_KEY")}
request = function()
  return wrk.format("GET", path, headers)
end
done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "errors": %d}\n',
    summary.requests, summary.requests / seconds, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, errors))
end
