-- riskguard: claim an event and step every feature state it touches, in one atomic call.
--
-- Called by riskguard.adapters.redis.state (read its docstring first) as
--   EVALSHA <sha> <numkeys> [claim key] <state key>... <header> <op>...
-- header: B has_claim, I4 claim ttl (s), B python_sum_is_compensated, then the claim's body hash.
-- With a claim, KEYS[1] is the claim key and KEYS[1 + i] the state key of op i (ARGV[1 + i]).
-- Returns {0, stored body hash} when the event id is already claimed (nothing else is done), or
-- {1, replies}: the replies of every op concatenated, each laid out as its decoder in Python
-- expects. All numbers cross the boundary as little-endian IEEE doubles (struct 'd'), never as
-- text, so no value is ever rounded on the way.
--
-- Every op blob starts with B kind, I4 ttl; the rest is per kind (see each step function). A
-- stored state whose length does not fit its kind's layout reads as a fresh state. The
-- arithmetic is the exact sequence of IEEE operations of the Python step (riskguard.engine.
-- features); whatever Lua 5.1 cannot reproduce bit for bit (floor division, log1p, hashing,
-- rounding) the client computes before or after the call.

local sunpack, spack = struct.unpack, struct.pack
local sub, byte, find, rep = string.sub, string.byte, string.find, string.rep
local fmod, abs, huge = math.fmod, math.abs, math.huge
local concat = table.concat
local call = redis.call

local has_claim, claim_ttl, compensated = sunpack('<BI4B', ARGV[1])
local koff = 0
if has_claim == 1 then
  koff = 1
  if not call('SET', KEYS[1], sub(ARGV[1], 7), 'NX', 'EX', claim_ttl) then
    return {0, call('GET', KEYS[1])}
  end
end

local dformats = {}
local function dfmt(n)
  local f = dformats[n]
  if not f then
    f = '<' .. rep('d', n)
    dformats[n] = f
  end
  return f
end

local function doubles(s, n)
  local t = {sunpack(dfmt(n), s)}
  t[n + 1] = nil -- struct.unpack also returns the next position
  return t
end

local function pack_doubles(t, n)
  return spack(dfmt(n), unpack(t, 1, n))
end

-- Python's int(k) % m for an integral double k.
local function pymod(k, m)
  local r = fmod(k, m)
  if r < 0 then r = r + m end
  return r
end

-- Python's builtin sum() of n floats t[first..]: the start value is the int 0, so the first
-- addition is 0.0 + x; from 3.12 on CPython adds floats with Neumaier's compensation.
local function pysum(t, first, n)
  local f = 0.0
  if compensated == 0 then
    for j = first, first + n - 1 do f = f + t[j] end
    return f
  end
  local c = 0.0
  for j = first, first + n - 1 do
    local x = t[j]
    local s = f + x
    if abs(f) >= abs(x) then
      c = c + ((f - s) + x)
    else
      c = c + ((x - s) + f)
    end
    f = s
  end
  if c ~= 0 and c == c and c ~= huge and c ~= -huge then f = f + c end
  return f
end

-- Recent-values maps: H holds 8-byte value digests, T one double per value, least recently seen
-- first (riskguard.engine.features.see_recent / recent_time).
local function find_digest(H, digest)
  local at = find(H, digest, 1, true)
  while at and (at - 1) % 8 ~= 0 do -- a match straddling two entries: keep looking
    at = find(H, digest, at + 1, true)
  end
  return at
end

local function recent_time(H, T, digest)
  local at = find_digest(H, digest)
  if at then return (sunpack('<d', T, at)) end
  return nil
end

local function see_recent(H, T, digest, when, capacity, keep_first)
  local at = find_digest(H, digest)
  local previous = nil
  if at then
    previous = sunpack('<d', T, at)
    if (previous < when) == keep_first then when = previous end
    H = sub(H, 1, at - 1) .. sub(H, at + 8)
    T = sub(T, 1, at - 1) .. sub(T, at + 8)
  end
  H = H .. digest
  T = T .. spack('<d', when)
  if #T > 8 * capacity then
    H = sub(H, 9)
    T = sub(T, 9)
  end
  return H, T, previous
end

-- velocity. blob: B kind, I4 ttl, B windows, B slots, H capacity, B distinct windows,
--   d span x distinct windows (shortest first), B flags (1 update, 2 distinct value),
--   d amount, d ts, d bucket index (ts // width) x windows, [8-byte digest of the value].
-- state: per window [last, count, sum, count_0..count_B, sum_0..sum_B], then the digests and the
--   times of the distinct map. reply: d count, d sum per window, d distinct per distinct window.
local function velocity(key, blob)
  local _, ttl, nw, slots, capacity, nd, pos = sunpack('<BI4BBHB', blob)
  local spans = {}
  for j = 1, nd do spans[j], pos = sunpack('<d', blob, pos) end
  local flags, amount, ts
  flags, amount, ts, pos = sunpack('<Bdd', blob, pos)
  local idxs = {}
  for w = 1, nw do idxs[w], pos = sunpack('<d', blob, pos) end
  local update = flags % 2 == 1
  local stride = 3 + 2 * slots
  local nb = nw * stride
  local raw = call('GET', key)
  if raw then
    local extra = #raw - 8 * nb
    if extra < 0 or extra % 16 ~= 0 or (nd == 0 and extra ~= 0) then raw = false end
  end
  local b, H, T
  if raw then
    b = doubles(raw, nb)
    if nd > 0 then
      local k = (#raw - 8 * nb) / 16
      H = sub(raw, 8 * nb + 1, 8 * nb + 8 * k)
      T = sub(raw, 8 * nb + 8 * k + 1)
    end
  else
    b = {}
    for j = 1, nb do b[j] = 0.0 end
    for w = 0, nw - 1 do b[w * stride + 1] = -1.0 end
    H, T = '', ''
  end
  local dirty = false
  local out = {}
  for w = 0, nw - 1 do
    local base = w * stride
    local idx = idxs[w + 1]
    local last = b[base + 1]
    if idx > last then
      -- Expire the slots the window slid past since the entity's last event.
      if last < 0 or idx - last >= slots then
        for j = base + 2, base + stride do b[j] = 0.0 end
      else
        local expired_sum = false
        for k = last + 1, idx do
          local c = base + 4 + pymod(k, slots)
          if b[c] ~= 0 then
            b[base + 2] = b[base + 2] - b[c]
            b[c] = 0.0
            if b[c + slots] ~= 0 then
              b[c + slots] = 0.0
              expired_sum = true
            end
          end
        end
        if expired_sum then b[base + 3] = pysum(b, base + 4 + slots, slots) end
      end
      b[base + 1] = idx
      last = idx
      dirty = true
    end
    if update and idx > last - slots then
      local c = base + 4 + pymod(idx, slots)
      b[c] = b[c] + 1.0
      b[base + 2] = b[base + 2] + 1.0
      if amount ~= 0 then
        b[c + slots] = b[c + slots] + amount
        b[base + 3] = b[base + 3] + amount
      end
      dirty = true
    end
    out[#out + 1] = b[base + 2]
    out[#out + 1] = b[base + 3]
  end
  if nd > 0 then
    if update and flags >= 2 then
      H, T = see_recent(H, T, sub(blob, pos, pos + 7), ts, capacity, false)
      dirty = true
    end
    -- Walk from the most recent value back, windows shortest first.
    local i, count = 1, 0
    local horizon = ts - spans[1]
    local j = #T - 7
    while j > 0 and i <= nd do
      local last_seen = sunpack('<d', T, j)
      while last_seen <= horizon do
        out[#out + 1] = count
        i = i + 1
        if i > nd then break end
        horizon = ts - spans[i]
      end
      count = count + 1
      j = j - 8
    end
    while i <= nd do
      out[#out + 1] = count
      i = i + 1
    end
  end
  if dirty then
    local s = pack_doubles(b, nb)
    if nd > 0 then s = s .. H .. T end
    call('SET', key, s, 'EX', ttl)
  end
  return pack_doubles(out, #out)
end

-- baseline. blob: B kind, I4 ttl, d max_count, B 1 when the event updates with a value, d value.
-- state and reply: d n, d mean, d variance (the reply is the state before the event).
local function baseline(key, blob)
  local _, ttl, max_count, update, x = sunpack('<BI4dBd', blob)
  local raw = call('GET', key)
  local n, mean, var = 0.0, 0.0, 0.0
  if raw and #raw == 24 then n, mean, var = sunpack('<ddd', raw) end
  if update == 1 then
    -- Welford's update written with a weight: 1/n while n grows, 1/max_count after.
    local m = n + 1.0
    if max_count < m then m = max_count end
    local alpha = 1.0 / m
    local delta = x - mean
    call('SET', key, spack('<ddd', m, mean + alpha * delta,
      (1.0 - alpha) * (var + (alpha * delta) * delta)), 'EX', ttl)
  end
  return spack('<ddd', n, mean, var)
end

-- hour_profile. blob: B kind, I4 ttl, B update, d absolute hour (ts // 3600), B hour, d ts.
-- state: the 30 doubles of the Python state. reply: the counts of hour-1, hour, hour+1, the total
-- and the first event's time, after pending hours were folded in and before the event.
local function hour_profile(key, blob)
  local _, ttl, update, absolute, hour, ts = sunpack('<BI4BdBd', blob)
  local raw = call('GET', key)
  local h
  if raw and #raw == 240 then
    h = doubles(raw, 30)
  else
    h = {}
    for j = 1, 30 do h[j] = 0.0 end
    h[26], h[28], h[30] = -1.0, -1.0, -1.0
  end
  local dirty = false
  local function fold(at, count)
    h[at + 1] = h[at + 1] + count
    h[25] = h[25] + count
    if h[25] > 2000.0 then
      for j = 1, 25 do h[j] = h[j] / 2.0 end
    end
  end
  if 0 <= h[26] and h[26] < absolute - 1 then
    fold(pymod(h[26], 24), h[27])
    h[26], h[27] = -1.0, 0.0
    dirty = true
  end
  if 0 <= h[28] and h[28] < absolute - 1 then
    fold(pymod(h[28], 24), h[29])
    h[28], h[29] = -1.0, 0.0
    dirty = true
  end
  local reply = spack('<ddddd', h[(hour - 1) % 24 + 1], h[hour + 1], h[(hour + 1) % 24 + 1],
    h[25], h[30])
  if update == 1 then
    if h[30] < 0 then h[30] = ts end
    if h[26] == absolute then
      h[27] = h[27] + 1.0
    elseif h[28] == absolute then
      h[29] = h[29] + 1.0
    elseif h[26] < 0 then
      h[26], h[27] = absolute, 1.0
    elseif h[28] < 0 then
      h[28], h[29] = absolute, 1.0
    else -- both pending slots hold other hours (a late event): count it straight away
      fold(hour, 1.0)
    end
    dirty = true
  end
  if dirty then call('SET', key, pack_doubles(h, 30), 'EX', ttl) end
  return reply
end

-- novelty. blob: B kind, I4 ttl, H capacity, B flags (1 update, 2 value), d ts, [8-byte digest].
-- state: B has first time, d first time, digests, times. reply: d values known, B has first
-- time, d first time (both before the event), B value held, d its first-seen time.
local function novelty(key, blob)
  local _, ttl, capacity, flags, ts = sunpack('<BI4HBd', blob)
  local raw = call('GET', key)
  local has_first, first, H, T = 0, 0.0, '', ''
  if raw and #raw >= 9 and (#raw - 9) % 16 == 0 then
    has_first, first = sunpack('<Bd', raw)
    local k = (#raw - 9) / 16
    H = sub(raw, 10, 9 + 8 * k)
    T = sub(raw, 10 + 8 * k)
  end
  local known = #T / 8
  local seen = nil
  if flags >= 2 then
    local digest = sub(blob, 17, 24)
    if flags % 2 == 1 then
      H, T, seen = see_recent(H, T, digest, ts, capacity, true)
      local new_first = has_first == 1 and first or ts
      call('SET', key, spack('<Bd', 1, new_first) .. H .. T, 'EX', ttl)
    else
      seen = recent_time(H, T, digest)
    end
  end
  return spack('<dBdBd', known, has_first, first, seen and 1 or 0, seen or 0.0)
end

-- geo_velocity. blob: B kind, I4 ttl, B flags (1 update, 2 lat and lon, 4 country), d ts, d lat,
-- d lon, the country. state: d ts, d lat, d lon, B has country, the country.
-- reply: I4 length, then the state before the event (length 0: none).
local function geo_velocity(key, blob)
  local _, ttl, flags, ts, lat, lon = sunpack('<BI4Bddd', blob)
  local raw = call('GET', key)
  if raw and #raw < 25 then raw = false end
  if flags % 2 == 1 and flags % 4 >= 2 and (not raw or ts >= sunpack('<d', raw)) then
    local has_country = flags >= 4 and 1 or 0
    call('SET', key, spack('<dddB', ts, lat, lon, has_country) .. sub(blob, 31), 'EX', ttl)
  end
  if raw then return spack('<I4', #raw) .. raw end
  return spack('<I4', 0)
end

-- continuity. blob: B kind, I4 ttl, B attributes, B update, then per attribute B present, I4
-- length, the value's canonical bytes. state: d events, then per attribute B held, I4 length,
-- bytes. reply: d events before the event, then per attribute B 0 (no output), 1 (unchanged) or
-- 2 (changed).
local function continuity(key, blob)
  local _, ttl, na, update, pos = sunpack('<BI4BB', blob)
  local raw = call('GET', key)
  local events = 0.0
  local firsts = {}
  if raw and #raw >= 8 + 5 * na then
    local at
    events, at = sunpack('<d', raw)
    for a = 1, na do
      if at + 4 > #raw then break end
      local held, len
      held, len, at = sunpack('<BI4', raw, at)
      firsts[a] = held == 1 and sub(raw, at, at + len - 1) or false
      at = at + len
    end
    if at ~= #raw + 1 then raw = false end
  else
    raw = false
  end
  if not raw then
    events = 0.0
    for a = 1, na do firsts[a] = false end
  end
  local codes = {}
  local dirty = update == 1
  for a = 1, na do
    local present, len
    present, len, pos = sunpack('<BI4', blob, pos)
    local code = 0
    if present == 1 then
      local value = sub(blob, pos, pos + len - 1)
      local first = firsts[a]
      if first then
        -- 'N' is NaN, which equals nothing (not even itself) in Python
        if value ~= first or value == 'N' then code = 2 else code = 1 end
      elseif update == 1 then
        firsts[a] = value
      end
    end
    codes[a] = code
    pos = pos + len
  end
  if dirty then
    local parts = {spack('<d', events + 1.0)}
    for a = 1, na do
      local first = firsts[a]
      if first then
        parts[#parts + 1] = spack('<BI4', 1, #first) .. first
      else
        parts[#parts + 1] = spack('<BI4', 0, 0)
      end
    end
    call('SET', key, concat(parts), 'EX', ttl)
  end
  return spack('<d', events) .. spack(rep('B', na), unpack(codes, 1, na))
end

-- last_seen. blob: B kind, I4 ttl, B update, d ts. state: d previous time.
-- reply: B has previous, d previous.
local function last_seen(key, blob)
  local _, ttl, update, ts = sunpack('<BI4Bd', blob)
  local raw = call('GET', key)
  local previous = raw and #raw == 8 and sunpack('<d', raw) or nil
  if update == 1 and (previous == nil or ts > previous) then
    call('SET', key, spack('<d', ts), 'EX', ttl)
  end
  return spack('<Bd', previous and 1 or 0, previous or 0.0)
end

local steps = {velocity, baseline, hour_profile, novelty, geo_velocity, continuity, last_seen}

local replies = {}
for i = 2, #ARGV do
  local blob = ARGV[i]
  replies[i - 1] = steps[byte(blob, 1)](KEYS[i - 1 + koff], blob)
end
return {1, concat(replies)}
