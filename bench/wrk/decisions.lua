-- POST /v1/decisions with a unique event_id per request (bench/http.py runs it).
--   wrk -t1 -c32 -d10s -s bench/wrk/decisions.lua http://127.0.0.1:PORT/v1/decisions \
--       -- RUN_ID INGEST_KEY [ACCOUNTS [RISKY_PER_MILLE FIRST_ACCOUNT]]
-- event_id = "<RUN_ID>-<thread>-<counter>": RUN_ID is fresh per wrk run (the harness makes it),
-- the thread number comes from setup(), so ids never repeat across threads, runs or rounds
-- (an id seen before would be answered as an idempotent replay, not decided).
--
-- Two workloads:
-- * default (no RISKY_PER_MILLE): accounts, counterparties, amounts, IPs and devices vary with
--   the counter, so feature state is read and updated for many entities (ACCOUNTS distinct
--   accounts, default 5000). At benchmark rates every account pays every few seconds, so once
--   the state has warmed up nearly every decision is a review on the account-velocity rules:
--   a stress test of the decision path, and of what follows a decision at its worst (every
--   decision alerts).
-- * mixed (RISKY_PER_MILLE given): RISKY_PER_MILLE of every 1000 events, spread evenly, come
--   from 50 "burst" accounts paying 2+ times a second (velocity: review or block, and an
--   alert); the rest from ACCOUNTS accounts taken in turn from FIRST_ACCOUNT on (the harness
--   moves it on for every run, so no account pays twice within minutes), each with its own
--   IP address and device and a counterparty shared by few accounts: allowed, as most
--   payments are.
-- response() counts statuses, outcomes ("outcome_review", ...) and, in 2xx bodies,
-- "degraded":true / "recorded":false / "replayed":true; report.lua prints the totals.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

local run_id, accounts = "run", 5000
local risky, first_account = nil, 0
local counter = 0
local headers = { ["Content-Type"] = "application/json" }
local format = string.format
local find = string.find
local match = string.match
local floor = math.floor
tally = {}

function init(args)
  run_id = args[1] or run_id
  headers["Authorization"] = "Bearer " .. (args[2] or "missing-key")
  accounts = tonumber(args[3] or accounts)
  risky = tonumber(args[4])
  first_account = tonumber(args[5] or 0) + ((tid or 1) - 1) * 100003
  run_id = run_id .. "-" .. tostring(tid or 1)
end

local body_format = '{"event_id":"%s-%d","type":"transaction",'
  .. '"data":{"account_id":"acct-%d","counterparty_id":"m-%d","amount":%d.5,"currency":"EUR"},'
  .. '"context":{"ip":"10.0.%d.%d","device_id":"d-%d"}}'
local mixed_format = '{"event_id":"%s-%d","type":"transaction",'
  .. '"data":{"account_id":"%s","counterparty_id":"m-%d","amount":%d.5,"currency":"EUR"},'
  .. '"context":{"ip":"10.%d.%d.%d","device_id":"d-%s"}}'

local function mixed_body()
  if (counter * 7919) % 1000 < risky then -- 7919 is prime: the risky events spread evenly
    local b = counter % 50
    local name = "burst-" .. b
    return format(mixed_format, run_id, counter, name, b, counter % 900, 255, 0, b, name)
  end
  local a = (first_account + counter) % accounts
  local name = "acct-" .. a
  return format(mixed_format, run_id, counter, name, a % 100000, counter % 900,
    floor(a / 65536) % 250, floor(a / 256) % 256, a % 256, name)
end

function request()
  counter = counter + 1
  local body
  if risky then
    body = mixed_body()
  else
    body = format(body_format, run_id, counter, counter % accounts, counter % 300,
      counter % 900, counter % 200, counter % 250, counter % accounts)
  end
  return wrk.format("POST", nil, headers, body)
end

local function bump(key)
  tally[key] = (tally[key] or 0) + 1
end

function response(status, _headers, body)
  bump(tostring(status))
  if status < 300 and body then
    local outcome = match(body, '"outcome":"(%a+)"')
    if outcome then bump("outcome_" .. outcome) end
    if find(body, '"degraded":true', 1, true) then bump("degraded") end
    if find(body, '"recorded":false', 1, true) then bump("not_recorded") end
    if find(body, '"replayed":true', 1, true) then bump("replayed") end
  end
end
