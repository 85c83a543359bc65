-- bench/gateway.py, fixed rate: RATE requests/s in total, one connection per wrk thread, each
-- on its own schedule (thread i sends every THREADS/RATE s, the threads staggered evenly).
--   wrk -tT -cT -d15s -s bench/wrk/gateway_paced.lua http://127.0.0.1:PORT -- TOKENS RATE T
-- wrk2 is not available, so the pacing is done here: delay() waits until the next scheduled
-- send (LuaJIT's ffi reads CLOCK_MONOTONIC; wrk rounds the wait down to whole milliseconds, so
-- a request may leave up to 1 ms early, never late unless the previous answer was late).
-- Latency runs from the actual send to the answer, except when the previous answer on the
-- connection came after this request was due: then from the scheduled time, so waiting behind
-- a slow answer counts (no coordinated omission), while a load-generator thread that merely
-- woke late (a busy machine) is not blamed on the target. done() prints "RGBENCH <json>" with
-- the percentiles of those latencies (and wrk's own, uncorrected p50/p99 for comparison).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)")
dofile(dir .. "gateway_common.lua")

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } rg_timespec;
int clock_gettime(int clk_id, rg_timespec *tp);
]]
local ts = ffi.new("rg_timespec")
local CLOCK_MONOTONIC = 1

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local threads = {}
local interval_us, next_at, started_at
local answered_at = 0
latencies = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  load_tokens(args[1])
  local rate, nthreads = tonumber(args[2]), tonumber(args[3])
  interval_us = 1000000 * nthreads / rate
  next_at = now_us() + 50000 + (tid - 1) * interval_us / nthreads  -- staggered start
end

function delay()
  local wait = next_at - now_us()
  if wait <= 0 then return 0 end
  return wait / 1000
end

function request()
  local now = now_us()
  if answered_at > next_at and next_at < now then
    started_at = next_at
  else
    started_at = now
  end
  next_at = next_at + interval_us
  return next_request()
end

function response(status, _headers, _body)
  count_status(status)
  answered_at = now_us()
  latencies[#latencies + 1] = answered_at - started_at
end

local function percentile(sorted, p)
  if #sorted == 0 then return 0 end
  local index = math.ceil(#sorted * p / 100)
  if index < 1 then index = 1 end
  return sorted[index]
end

function done(summary, latency, _requests)
  local all, tallies = {}, {}
  for _, thread in ipairs(threads) do
    for _, v in ipairs(thread:get("latencies")) do all[#all + 1] = v end
    for k, v in pairs(thread:get("tally")) do tallies[k] = (tallies[k] or 0) + v end
  end
  table.sort(all)
  local parts = {}
  for _, p in ipairs({50, 90, 99, 99.9}) do
    parts[#parts + 1] = string.format('"%s":%.1f', tostring(p), percentile(all, p))
  end
  local statuses = {}
  for k, v in pairs(tallies) do statuses[#statuses + 1] = string.format('"%s":%d', k, v) end
  io.write(string.format(
    'RGBENCH {"requests":%d,"duration_us":%d,"answered":%d,"errors":{"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d},"latency_us":{"percentiles":{%s},"max":%.1f,'
      .. '"wrk_p50":%.1f,"wrk_p99":%.1f},"tallies":{%s}}\n',
    summary.requests, summary.duration, #all, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    table.concat(parts, ","), all[#all] or 0, latency:percentile(50), latency:percentile(99),
    table.concat(statuses, ",")))
end
