-- Shared by the riskguard HTTP benchmark's wrk scripts (bench/http.py): after the run, print
-- one line "RGBENCH <json>" with exact figures, so the harness parses numbers, not wrk's
-- rounded text. Latencies are in microseconds; `tallies` merges every thread's `tally` table
-- (response statuses and body flags counted by the script's response(), when it has one).

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local function encode(value)
  if type(value) == "table" then
    local parts = {}
    for k, v in pairs(value) do
      table.insert(parts, string.format("%q:%s", tostring(k), encode(v)))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif type(value) == "number" then
    return string.format("%.17g", value)
  end
  return string.format("%q", tostring(value))
end

function done(summary, latency, requests)
  local tallies = {}
  for _, thread in ipairs(threads) do
    local tally = thread:get("tally")
    if type(tally) == "table" then
      for k, v in pairs(tally) do
        tallies[k] = (tallies[k] or 0) + v
      end
    end
  end
  local percentiles = {}
  for _, p in ipairs({50, 75, 90, 99, 99.9}) do
    percentiles[tostring(p)] = latency:percentile(p)
  end
  io.write("RGBENCH ", encode({
    requests = summary.requests,
    duration_us = summary.duration,
    bytes = summary.bytes,
    errors = {
      connect = summary.errors.connect,
      read = summary.errors.read,
      write = summary.errors.write,
      status = summary.errors.status,
      timeout = summary.errors.timeout,
    },
    latency_us = {
      min = latency.min,
      mean = latency.mean,
      max = latency.max,
      stdev = latency.stdev,
      percentiles = percentiles,
    },
    tallies = tallies,
  }), "\n")
end
