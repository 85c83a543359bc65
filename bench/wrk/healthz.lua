-- GET /healthz, the trivial endpoint: the ceiling the decision throughput is compared with.
-- Nothing per request (wrk sends its one pre-built request), so wrk's own cost is minimal.
--   wrk -t1 -c32 -d10s -s bench/wrk/healthz.lua http://127.0.0.1:PORT/healthz
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")
