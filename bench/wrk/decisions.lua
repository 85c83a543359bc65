-- POST /v1/decisions with a unique event_id per request (bench/http.py runs it).
--   wrk -t1 -c32 -d10s -s bench/wrk/decisions.lua http://127.0.0.1:PORT/v1/decisions \
--       -- RUN_ID INGEST_KEY [ACCOUNTS]
-- event_id = "<RUN_ID>-<thread>-<counter>": RUN_ID is fresh per wrk run (the harness makes it),
-- the thread number comes from setup(), so ids never repeat across threads, runs or rounds
-- (an id seen before would be answered as an idempotent replay, not decided).
-- Accounts, counterparties, amounts, IPs and devices vary with the counter, so feature state
-- is read and updated for many entities (ACCOUNTS distinct accounts, default 5000).
-- response() counts statuses and, in 2xx bodies, "degraded":true / "recorded":false /
-- "replayed":true; report.lua prints the totals.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

local run_id, accounts = "run", 5000
local counter = 0
local headers = { ["Content-Type"] = "application/json" }
local format = string.format
local find = string.find
tally = {}

function init(args)
  run_id = args[1] or run_id
  headers["Authorization"] = "Bearer " .. (args[2] or "missing-key")
  accounts = tonumber(args[3] or accounts)
  run_id = run_id .. "-" .. tostring(tid or 1)
end

local body_format = '{"event_id":"%s-%d","type":"transaction",'
  .. '"data":{"account_id":"acct-%d","counterparty_id":"m-%d","amount":%d.5,"currency":"EUR"},'
  .. '"context":{"ip":"10.0.%d.%d","device_id":"d-%d"}}'

function request()
  counter = counter + 1
  local body = format(body_format, run_id, counter, counter % accounts, counter % 300,
    counter % 900, counter % 200, counter % 250, counter % accounts)
  return wrk.format("POST", nil, headers, body)
end

local function bump(key)
  tally[key] = (tally[key] or 0) + 1
end

function response(status, _headers, body)
  bump(tostring(status))
  if status < 300 and body then
    if find(body, '"degraded":true', 1, true) then bump("degraded") end
    if find(body, '"recorded":false', 1, true) then bump("not_recorded") end
    if find(body, '"replayed":true', 1, true) then bump("replayed") end
  end
end
