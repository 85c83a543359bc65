-- Shared by bench/gateway.py's wrk scripts: the requests every target gets, byte for byte.
-- init(args): args[1] = file of bearer tokens (one a line, one per calling service); the rest
-- is the script's own. Each request carries one service's token and one of ROUTES templated
-- routes with a varying id, so the gateway checks many (service, route) pairs: tokens and
-- rate-limit keys, feature state and route templates all vary, as in a service mesh.
-- The direct and NGINX targets get the same headers (and ignore them).
tokens = {}
local ROUTES = 20
local counter = 0
local format = string.format

function load_tokens(path)
  for line in io.lines(path) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  assert(#tokens > 0, "no tokens in " .. path)
end

function next_request()
  counter = counter + 1
  local n = (tid or 1) * 7919 + counter
  local headers = {
    ["Authorization"] = "Bearer " .. tokens[(n % #tokens) + 1],
    ["User-Agent"] = "bench-svc/1.0",
  }
  local path = format("/v1/r%d/items/%d", n % ROUTES, n % 5000)
  return wrk.format("GET", path, headers)
end

tally = {}

function count_status(status)
  local key = tostring(status)
  tally[key] = (tally[key] or 0) + 1
end
