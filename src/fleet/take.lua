-- poolguard fleet budget: take, renew or give back one process's block of
-- permits for one host, atomically, on Redis's own clock.
--
-- KEYS[1] holders: sorted set, holder -> lease end (ms, Redis time)
-- KEYS[2] held:    hash, holder -> permits recorded as taken
-- KEYS[3] wants:   hash, holder -> permits asked for
-- KEYS[4] epoch:   string, when these keys were first made (ms)
-- KEYS[5] learn:   string, present while a restart's learning window lasts
-- (all hash-tagged by host, so that Redis Cluster keeps them on one node)
--
-- ARGV[1] holder id, ARGV[2] permits wanted, ARGV[3] floor (permits the
-- holder may have in use: recorded at least), ARGV[4] budget, ARGV[5] lease
-- (ms), ARGV[6] the epoch the holder last saw ('' for none)
--
-- Returns { granted, epoch, contended (0/1), learning (0/1) }.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local want = tonumber(ARGV[2])
local floor = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local lease = tonumber(ARGV[5])
local seen = ARGV[6]

-- The epoch: made with the keys. A holder that saw another epoch knows
-- Redis lost the keys (a restart without persistence): for one lease from
-- the new epoch, nobody grows, so every live holder can record what it has
-- in use before anyone takes more.
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  epoch = tostring(now)
  redis.call('SET', KEYS[4], epoch)
end
if seen ~= '' and seen ~= epoch then
  local left = tonumber(epoch) + lease - now
  if left > 0 and redis.call('EXISTS', KEYS[5]) == 0 then
    redis.call('SET', KEYS[5], '1', 'PX', left)
  end
end
local learning = redis.call('EXISTS', KEYS[5]) == 1

-- Holders whose lease ran out (a vanished process) give their permits back.
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, h in ipairs(gone) do
  redis.call('HDEL', KEYS[2], h)
  redis.call('HDEL', KEYS[3], h)
end
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end

if want <= 0 and floor <= 0 then
  redis.call('ZREM', KEYS[1], me)
  redis.call('HDEL', KEYS[2], me)
  redis.call('HDEL', KEYS[3], me)
  return { 0, epoch, 0, learning and 1 or 0 }
end

-- What the others hold, and what everyone wants.
local others = 0
local held = redis.call('HGETALL', KEYS[2])
for i = 1, #held, 2 do
  if held[i] ~= me then
    others = others + tonumber(held[i + 1])
  end
end
local wants = { want }
local total = want
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  if all[i] ~= me then
    local w = tonumber(all[i + 1])
    table.insert(wants, w)
    total = total + w
  end
end

-- Never more than the others leave free.
local granted = math.min(want, math.max(budget - others, 0))
local contended = total > budget
if contended then
  -- Max-min fair share: the level at which the wants, each capped by it,
  -- add up to the budget. Holders over it shrink at their next renewal.
  table.sort(wants)
  local left = budget
  local level = budget
  for i, w in ipairs(wants) do
    local share = left / (#wants - i + 1)
    if w <= share then
      left = left - w
    else
      level = share
      break
    end
  end
  granted = math.min(granted, math.ceil(level))
end
if learning then
  granted = math.min(granted, floor)
end

-- Recorded: what was granted, or what the holder may have in use, if more.
local record = math.max(granted, floor)
redis.call('HSET', KEYS[2], me, record)
redis.call('HSET', KEYS[3], me, want)
redis.call('ZADD', KEYS[1], now + lease, me)
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], lease * 2)
end
return { granted, epoch, contended and 1 or 0, learning and 1 or 0 }
