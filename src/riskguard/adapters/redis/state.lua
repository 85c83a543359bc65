-- riskguard: claim an event and step every feature state it touches, in one atomic call.
--
-- Called by riskguard.adapters.redis.state (read its docstring first) as
--   EVALSHA <sha> <numkeys> [claim key] <state key>... <header> <op>...
-- header: B has_claim, B python_sum_is_compensated, B length + the claim ttl (s) as text, then
-- the claim's body hash. With a claim, KEYS[1] is the claim key and KEYS[1 + i] the state key of
-- op i (ARGV[1 + i]). Returns an array {stored body hash} when the event id is already claimed
-- (nothing else is done), or else one string: the replies of every op concatenated, each laid
-- out as its decoder in Python expects. All numbers cross the boundary as little-endian IEEE
-- doubles (struct 'd'), never as text, so no value is ever rounded on the way.
--
-- Every op blob starts with B kind, B length + the key's ttl (s) as text (what SET ... EX takes,
-- so no number is formatted here); the rest is per kind (see each step). A stored state whose
-- length does not fit its kind's layout reads as a fresh state. The arithmetic is the exact
-- sequence of IEEE operations of the Python step (riskguard.engine.features); whatever Lua 5.1
-- cannot reproduce bit for bit (floor division, log1p, hashing, rounding) the client computes
-- before or after the call.
--
-- Cost: this chunk runs in full for every event, so it is written flat: the steps are blocks of
-- the main loop, not functions (creating a dozen closures over shared locals each call cost more
-- than some steps), every state is read with one MGET, only the doubles an event needs are
-- unpacked, and a changed state is built from slices of the stored string (a velocity event
-- that stays in its buckets rewrites 16 bytes a window, not the whole state). Struct formats
-- that depend only on the feature come in the blob.

local sunpack, spack = struct.unpack, struct.pack
local sub, byte, find, rep = string.sub, string.byte, string.find, string.rep
local fmod, abs, huge = math.fmod, math.abs, math.huge
local concat = table.concat
local call = redis.call

local has_claim, compensated, claim_ttl, hpos = sunpack('<BBBc0', ARGV[1])
local koff = 0
if has_claim == 1 then
  koff = 1
  if not call('SET', KEYS[1], sub(ARGV[1], hpos), 'NX', 'EX', claim_ttl) then
    return {call('GET', KEYS[1])}
  end
end
local nops = #ARGV - 1
if nops == 0 then return '' end

-- Constants (a literal costs nothing per call): zero bytes, the double 1.0 and the struct format
-- of up to 64 doubles.
local Z8 = '\0\0\0\0\0\0\0\0'
local ONE = '\0\0\0\0\0\0\240?'
local DFMT = '<dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd'

local stored = call('MGET', unpack(KEYS, koff + 1, koff + nops))
local out, no = {false, false, false, false, false, false, false, false,
  false, false, false, false, false, false, false, false}, 0 -- the reply, in pieces

for i = 1, nops do
  local blob = ARGV[i + 1]
  local key = KEYS[i + koff]
  local raw = stored[i]
  local kind = byte(blob, 1)

  if kind == 1 then
    -- velocity. blob: B kind, ttl, B windows (nw), B slots, H capacity, B distinct windows (nd),
    --   B 1 with sums (a sum path), then as B length + text: A, the struct format of what
    --   follows ('<', nd + 3 + nw fields), the formats of the header, of a window's slots and
    --   of one slot; then d span x nd (distinct windows, shortest first), B flags (1 update,
    --   2 distinct value), d amount, d ts, d bucket index (ts // width) x nw, [8-byte digest].
    -- state: a header of d count (and d sum with sums) per window, then d last bucket per
    --   window; per window its slots: d count (and d sum) each; then the digests and the times
    --   of the distinct map. A velocity without a sum path keeps no sums: they stay 0.0.
    -- reply: the header after the event, then d distinct count per distinct window.
    local _, ttl, nw, slots, capacity, nd, sums, afmt, hfmt, wfmt, pfmt, pos =
      sunpack('<BBc0BBHBBBc0Bc0Bc0Bc0', blob)
    local a = {sunpack(afmt, blob, pos)}
    local flags, amount, ts = a[nd + 1], a[nd + 2], a[nd + 3]
    local update = flags % 2 == 1
    local hw = sums + 1 -- doubles per window in the header and per slot
    local wbytes = 8 * hw * slots
    local hbytes = 8 * (hw + 1) * nw
    local sbytes = hbytes + nw * wbytes
    local k = 0
    if raw then
      local extra = #raw - sbytes
      if extra < 0 or extra % 16 ~= 0 or (nd == 0 and extra ~= 0) then
        raw = false
      else
        k = extra / 16
      end
    end
    local hv
    if raw then
      hv = {sunpack(hfmt, raw)}
    else
      hv = {}
      for j = 1, hw * nw do hv[j] = 0.0 end
      for j = hw * nw + 1, (hw + 1) * nw do hv[j] = -1.0 end
      raw = spack(hfmt, unpack(hv, 1, (hw + 1) * nw)) .. rep(Z8, hw * slots * nw)
    end
    -- The new state is parts: the header, then slices of raw (from byte `copied` on) and the
    -- windows or slots that changed.
    local parts, np = {false, false, false, false, false, false, false, false,
      false, false, false, false, false, false, false, false}, 1
    local copied = hbytes + 1
    local dirty = false
    for w = 1, nw do
      local ci, li = hw * (w - 1) + 1, hw * nw + w
      local si = ci + sums -- (== ci without sums: never written then, amount is 0)
      local idx = a[nd + 3 + w]
      local last = hv[li]
      local wstart = hbytes + (w - 1) * wbytes -- the window's slots: bytes wstart + 1 ..
      local b = nil -- the window's slots when rebuilt: false (all zero), a table, a string
      if idx > last then
        -- Expire the slots the window slid past since the entity's last event.
        if last < 0 or idx - last >= slots then
          hv[ci], hv[si] = 0.0, 0.0
          b = false
        else
          b = {sunpack(wfmt, raw, wstart + 1)}
          local expired_sum = false
          for kk = last + 1, idx do
            local c = fmod(kk, slots)
            if c < 0 then c = c + slots end
            c = hw * c + 1
            if b[c] ~= 0 then
              hv[ci] = hv[ci] - b[c]
              b[c] = 0.0
              if sums == 1 and b[c + 1] ~= 0 then
                b[c + 1] = 0.0
                expired_sum = true
              end
            end
          end
          if expired_sum then
            -- Python's sum() of the slot sums: the start value is the int 0, so the first
            -- addition is 0.0 + x; from 3.12 on CPython adds floats with Neumaier's
            -- compensation.
            local f = 0.0
            if compensated == 0 then
              for j = 2, 2 * slots, 2 do f = f + b[j] end
            else
              local comp = 0.0
              for j = 2, 2 * slots, 2 do
                local x = b[j]
                local s = f + x
                if abs(f) >= abs(x) then
                  comp = comp + ((f - s) + x)
                else
                  comp = comp + ((x - s) + f)
                end
                f = s
              end
              if comp ~= 0 and comp == comp and comp ~= huge and comp ~= -huge then
                f = f + comp
              end
            end
            hv[si] = f
          end
        end
        hv[li] = idx
        last = idx
        dirty = true
      end
      if update and idx > last - slots then
        local j = fmod(idx, slots)
        if j < 0 then j = j + slots end
        hv[ci] = hv[ci] + 1.0
        if amount ~= 0 then hv[si] = hv[si] + amount end
        if b then
          b[hw * j + 1] = b[hw * j + 1] + 1.0
          if amount ~= 0 then b[hw * j + 2] = b[hw * j + 2] + amount end
        elseif b == false then
          local slot
          if sums == 0 then
            slot = ONE
          elseif amount ~= 0 then
            slot = spack('<dd', 0.0 + 1.0, 0.0 + amount)
          else
            slot = ONE .. Z8
          end
          b = rep(Z8, hw * j) .. slot .. rep(Z8, hw * (slots - j - 1))
        else
          local at = wstart + 8 * hw * j + 1
          local slot
          if sums == 0 then
            slot = spack('<d', sunpack('<d', raw, at) + 1.0)
          else
            local count, total = sunpack('<dd', raw, at)
            if amount ~= 0 then total = total + amount end
            slot = spack('<dd', count + 1.0, total)
          end
          parts[np + 1] = sub(raw, copied, at - 1)
          parts[np + 2] = slot
          np = np + 2
          copied = at + 8 * hw
        end
        dirty = true
      end
      if b ~= nil then
        if b == false then
          b = rep(Z8, hw * slots)
        elseif type(b) == 'table' then
          b = spack(wfmt, unpack(b, 1, hw * slots))
        end
        parts[np + 1] = sub(raw, copied, wstart)
        parts[np + 2] = b
        np = np + 2
        copied = wstart + wbytes + 1
      end
    end
    local header
    if dirty then
      header = spack(hfmt, unpack(hv, 1, (hw + 1) * nw))
    else
      header = sub(raw, 1, hbytes)
    end
    no = no + 1
    out[no] = header
    if nd > 0 then
      local h = sbytes + 1
      local lo, r, pending = 1, 0, nil
      if update and flags >= 2 then
        local dpos = a[nd + nw + 4]
        local digest = sub(blob, dpos, dpos + 7)
        parts[np + 1] = sub(raw, copied, sbytes)
        np = np + 1
        -- see_recent(keep="last") on the map, as slices of raw (see novelty for the same).
        local t = h + 8 * k
        local at = find(raw, digest, h, true)
        while at and at < t and (at - h) % 8 ~= 0 do at = find(raw, digest, at + 1, true) end
        local n, when = k + 1, ts
        if at and at < t then
          r = (at - h) / 8 + 1
          local previous = sunpack('<d', raw, t + 8 * r - 8)
          if not (previous < when) then when = previous end
          n = k
        end
        if n > capacity then -- the least recently seen value is forgotten
          if r == 1 then lo = 3 else lo = 2 end
        end
        if r >= lo then
          parts[np + 1] = sub(raw, h + 8 * lo - 8, h + 8 * r - 9)
          parts[np + 2] = sub(raw, h + 8 * r, t - 1)
          parts[np + 3] = digest
          parts[np + 4] = sub(raw, t + 8 * lo - 8, t + 8 * r - 9)
          parts[np + 5] = sub(raw, t + 8 * r, t + 8 * k - 1)
          np = np + 6
        else
          parts[np + 1] = sub(raw, h + 8 * lo - 8, t - 1)
          parts[np + 2] = digest
          parts[np + 3] = sub(raw, t + 8 * lo - 8, t + 8 * k - 1)
          np = np + 4
        end
        parts[np] = spack('<d', when)
        pending = when
        copied = false
        dirty = true
      end
      -- Walk the times from the most recent back (the new time first, then the stored ones
      -- that stay: lo..k but r), windows shortest first: a window counts the times seen before
      -- the first one at or before its horizon.
      local counts = {}
      local d, count = 1, 0
      local horizon = ts - a[1]
      if pending then
        while pending <= horizon do
          counts[d] = count
          d = d + 1
          if d > nd then break end
          horizon = ts - a[d]
        end
        count = count + 1
      end
      if d <= nd and k >= lo then
        local times
        if k <= 64 then
          times = {sunpack(sub(DFMT, 1, k + 1), raw, h + 8 * k)}
        else
          times = {sunpack('<' .. rep('d', k), raw, h + 8 * k)}
        end
        for j = k, lo, -1 do
          if j ~= r then
            local x = times[j]
            if x <= horizon then
              repeat
                counts[d] = count
                d = d + 1
                if d > nd then break end
                horizon = ts - a[d]
              until x > horizon
              if d > nd then break end
            end
            count = count + 1
          end
        end
      end
      while d <= nd do
        counts[d] = count
        d = d + 1
      end
      no = no + 1
      out[no] = spack(pfmt, unpack(counts, 1, nd))
    end
    if dirty then
      parts[1] = header
      if copied then
        np = np + 1
        parts[np] = sub(raw, copied)
      end
      call('SET', key, concat(parts, '', 1, np), 'EX', ttl)
    end

  elseif kind == 4 then
    -- novelty. blob: B kind, ttl, H capacity, B flags (1 update, 2 value), d ts, [8-byte
    -- digest]. state: B has first time, d first time, digests, times. reply: d values known,
    -- B has first time, d first time (both before the event), B value held, d its first-seen
    -- time.
    local _, ttl, capacity, flags, ts, pos = sunpack('<BBc0HBd', blob)
    local has_first, first, k = 0, 0.0, 0
    if raw and #raw >= 9 and (#raw - 9) % 16 == 0 then
      has_first, first = sunpack('<Bd', raw)
      k = (#raw - 9) / 16
    else
      raw = ''
    end
    local seen = nil
    if flags >= 2 then
      local digest = sub(blob, pos, pos + 7)
      -- The map: digests from byte 10, then times from byte t. An entry matches at a multiple
      -- of 8 bytes into the digests (else the match straddles two entries: look further).
      local t = 10 + 8 * k
      local at = find(raw, digest, 10, true)
      while at and at < t and (at - 10) % 8 ~= 0 do at = find(raw, digest, at + 1, true) end
      local r = 0 -- the entry of the value, 1-based (0: not held)
      if at and at < t then
        r = (at - 10) / 8 + 1
        seen = sunpack('<d', raw, t + 8 * r - 8)
      end
      if flags % 2 == 1 then
        -- see_recent(keep="first"): the value moves to the end with the earlier of its times;
        -- beyond capacity the least recently seen value is forgotten. The new map is built
        -- from slices of raw: the entries lo..k but r, then the value.
        local when, n, lo = ts, k + 1, 1
        if r > 0 then
          if seen < when then when = seen end
          n = k
        end
        if n > capacity then
          if r == 1 then lo = 3 else lo = 2 end
        end
        if r == k and lo == 1 and when == seen and has_first == 1 then
          -- the most recent value again, its time kept: the same bytes, written anyway (the
          -- write sets the expiry)
          call('SET', key, raw, 'EX', ttl)
        elseif r >= lo then
          call('SET', key, spack('<Bd', 1, has_first == 1 and first or ts)
            .. sub(raw, 8 * lo + 2, 8 * r + 1) .. sub(raw, 8 * r + 10, t - 1) .. digest
            .. sub(raw, t + 8 * lo - 8, t + 8 * r - 9) .. sub(raw, t + 8 * r, t + 8 * k - 1)
            .. spack('<d', when), 'EX', ttl)
        else
          call('SET', key, spack('<Bd', 1, has_first == 1 and first or ts)
            .. sub(raw, 8 * lo + 2, t - 1) .. digest .. sub(raw, t + 8 * lo - 8, t + 8 * k - 1)
            .. spack('<d', when), 'EX', ttl)
        end
      end
    end
    no = no + 1
    out[no] = spack('<dBdBd', k, has_first, first, seen and 1 or 0, seen or 0.0)

  elseif kind == 2 then
    -- baseline. blob: B kind, ttl, d max_count, B 1 when the event updates with a value, d
    -- value. state and reply: d n, d mean, d variance (the reply is the state before the
    -- event).
    local _, ttl, max_count, update, x = sunpack('<BBc0dBd', blob)
    local n, mean, var = 0.0, 0.0, 0.0
    if raw and #raw == 24 then
      n, mean, var = sunpack('<ddd', raw)
    else
      raw = '\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0'
    end
    if update == 1 then
      -- Welford's update written with a weight: 1/n while n grows, 1/max_count after.
      local m = n + 1.0
      if max_count < m then m = max_count end
      local alpha = 1.0 / m
      local delta = x - mean
      call('SET', key, spack('<ddd', m, mean + alpha * delta,
        (1.0 - alpha) * (var + (alpha * delta) * delta)), 'EX', ttl)
    end
    no = no + 1
    out[no] = raw

  elseif kind == 3 then
    -- hour_profile. blob: B kind, ttl, B update, d absolute hour (ts // 3600), B hour, d ts.
    -- state: the 30 doubles of the Python state. reply: the counts of hour-1, hour, hour+1,
    -- the total and the first event's time, after pending hours were folded in and before the
    -- event.
    local _, ttl, update, absolute, hour, ts = sunpack('<BBc0BdBd', blob)
    if not (raw and #raw == 240) then
      raw = rep(Z8, 24) .. spack('<dddddd', 0.0, -1.0, 0.0, -1.0, 0.0, -1.0)
    end
    local total, p1, c1, p2, c2, first = sunpack('<dddddd', raw, 193)
    if not (0 <= p1 and p1 < absolute - 1) and not (0 <= p2 and p2 < absolute - 1)
      and not (update == 1 and p1 ~= absolute and p2 ~= absolute and not (p1 < 0)
        and not (p2 < 0)) then
      -- Nothing to fold: the hourly counts stay as stored, only the pending hours and the
      -- first time may move.
      no = no + 1
      out[no] = spack('<ddddd', sunpack('<d', raw, 8 * ((hour - 1) % 24) + 1),
        sunpack('<d', raw, 8 * hour + 1), sunpack('<d', raw, 8 * ((hour + 1) % 24) + 1),
        total, first)
      if update == 1 then
        if first < 0 then first = ts end
        if p1 == absolute then
          c1 = c1 + 1.0
        elseif p2 == absolute then
          c2 = c2 + 1.0
        elseif p1 < 0 then
          p1, c1 = absolute, 1.0
        else
          p2, c2 = absolute, 1.0
        end
        call('SET', key, sub(raw, 1, 200) .. spack('<ddddd', p1, c1, p2, c2, first), 'EX', ttl)
      end
    else
      local h = {sunpack('<dddddddddddddddddddddddddddddd', raw)}
      -- Fold the pending hours that are over (HourProfile._fold): h[26]/h[27], h[28]/h[29].
      for p = 26, 28, 2 do
        if 0 <= h[p] and h[p] < absolute - 1 then
          local at = fmod(h[p], 24)
          if at < 0 then at = at + 24 end
          local count = h[p + 1]
          h[at + 1] = h[at + 1] + count
          h[25] = h[25] + count
          if h[25] > 2000.0 then
            for j = 1, 25 do h[j] = h[j] / 2.0 end
          end
          h[p], h[p + 1] = -1.0, 0.0
        end
      end
      no = no + 1
      out[no] = spack('<ddddd', h[(hour - 1) % 24 + 1], h[hour + 1], h[(hour + 1) % 24 + 1],
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
          h[hour + 1] = h[hour + 1] + 1.0
          h[25] = h[25] + 1.0
          if h[25] > 2000.0 then
            for j = 1, 25 do h[j] = h[j] / 2.0 end
          end
        end
      end
      -- (a fold happened, so the state changed)
      call('SET', key, spack('<dddddddddddddddddddddddddddddd', unpack(h, 1, 30)), 'EX', ttl)
    end

  elseif kind == 5 then
    -- geo_velocity. blob: B kind, ttl, B flags (1 update, 2 lat and lon, 4 country), d ts, d
    -- lat, d lon, the country. state: d ts, d lat, d lon, B has country, the country.
    -- reply: I4 length, then the state before the event (length 0: none).
    local _, ttl, flags, ts, lat, lon, pos = sunpack('<BBc0Bddd', blob)
    if raw and #raw < 25 then raw = false end
    if flags % 2 == 1 and flags % 4 >= 2 and (not raw or ts >= sunpack('<d', raw)) then
      local has_country = flags >= 4 and 1 or 0
      call('SET', key, spack('<dddB', ts, lat, lon, has_country) .. sub(blob, pos), 'EX', ttl)
    end
    no = no + 1
    if raw then
      out[no] = spack('<I4', #raw) .. raw
    else
      out[no] = spack('<I4', 0)
    end

  elseif kind == 6 then
    -- continuity. blob: B kind, ttl, B attributes, B update, then per attribute B present, I4
    -- length, the value's canonical bytes. state: d events, then per attribute B held, I4
    -- length, bytes. reply: d events before the event, then per attribute B 0 (no output), 1
    -- (unchanged) or 2 (changed).
    local _, ttl, na, update, pos = sunpack('<BBc0BB', blob)
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
    if update == 1 then
      local parts = {spack('<d', events + 1.0)}
      for a = 1, na do
        local first = firsts[a]
        if first then
          parts[a + 1] = spack('<BI4', 1, #first) .. first
        else
          parts[a + 1] = spack('<BI4', 0, 0)
        end
      end
      call('SET', key, concat(parts), 'EX', ttl)
    end
    no = no + 1
    out[no] = spack('<d', events) .. spack(rep('B', na), unpack(codes, 1, na))

  elseif kind == 7 then
    -- last_seen. blob: B kind, ttl, B update, d ts. state: d previous time.
    -- reply: B has previous, d previous.
    local _, ttl, update, ts = sunpack('<BBc0Bd', blob)
    local previous = raw and #raw == 8 and sunpack('<d', raw) or nil
    if update == 1 and (previous == nil or ts > previous) then
      call('SET', key, spack('<d', ts), 'EX', ttl)
    end
    no = no + 1
    out[no] = spack('<Bd', previous and 1 or 0, previous or 0.0)

  else
    return redis.error_reply('riskguard state.lua: unknown op kind ' .. tostring(kind))
  end
end
return concat(out, '', 1, no)
