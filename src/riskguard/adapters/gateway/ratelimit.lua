-- GCRA rate limit check: one key, one atomic step (riskguard.adapters.gateway.ratelimit).
-- KEYS[1]  the limit's key (hash-tagged by the caller)
-- ARGV[1]  emission interval in microseconds (integer >= 1)
-- ARGV[2]  burst (integer >= 1); burst * emission <= 2^50
-- ARGV[3]  now in microseconds, or '' to take the server's TIME
-- Returns {allowed (0|1), remaining, retry_after_us, reset_after_us}.
-- Every value is an integer below 2^53, so Lua's doubles hold it exactly and the answers are
-- those of gcra_step in ratelimit.py, bit for bit. The stored value is the theoretical arrival
-- time (TAT); the key expires when the TAT passes, as a key at its TAT reads like a fresh one.
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now
if ARGV[3] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[3])
end
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + emission
local allow_at = new_tat - burst * emission
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', ttl_ms)
return {1, math.floor((now - allow_at) / emission), 0, new_tat - now}
