-- bench/gateway.py, maximum rate: closed loop, as fast as the target answers.
--   wrk -t1 -c32 -d10s -s bench/wrk/gateway_max.lua http://127.0.0.1:PORT -- TOKENS_FILE
-- report.lua prints the exact figures (RGBENCH line) and the statuses counted here.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)")
dofile(dir .. "report.lua")
dofile(dir .. "gateway_common.lua")

function init(args)
  load_tokens(args[1])
end

function request()
  return next_request()
end

function response(status, _headers, _body)
  count_status(status)
end
