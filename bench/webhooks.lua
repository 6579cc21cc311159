-- wrk script: POST real registry notifications (a manifest push captured from docker-registry 2.8),
-- each with its own event id and one of TAGS tags, so some requests coalesce and none is a duplicate.
local template = nil
local counter = 0
local threads = 0

setup = function(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end
local tags = tonumber(os.getenv("BENCH_TAGS") or "100000")
local token = os.getenv("BENCH_TOKEN")
local host = os.getenv("BENCH_IMAGE_HOST") or "127.0.0.1:5000"

init = function(args)
  local f = assert(io.open(os.getenv("BENCH_PAYLOAD"), "r"))
  template = f:read("*all")
  f:close()
  math.randomseed(os.time() * 100 + thread_id)
end

request = function()
  counter = counter + 1
  local id = string.format("%d-%d-%08x", thread_id, counter, math.random(0, 0x7fffffff))
  local tag = "t" .. tostring(math.random(1, tags))
  local body = template:gsub("__ID__", id):gsub("__TAG__", tag):gsub("__HOST__", host)
  return wrk.format("POST", "/webhooks/registry", {
    ["Content-Type"] = "application/vnd.docker.distribution.events.v1+json",
    ["Authorization"] = "Bearer " .. token,
  }, body)
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d non2xx=%d errors=%d duration_us=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
