--[[
token_bucket.lua: take `cost` tokens from every bucket of a request, or from none.

The same arithmetic as gateway/buckets.py, line for line. Units, all integers
(Lua numbers are doubles, exact up to 2^53; the gateway refuses limits whose
capacity in units exceeds 2^52, so no intermediate value here goes beyond 2^53):
  time   microseconds, read from this server's TIME (never the caller's clock)
  level  units: one token is `unit` units; the refill is `rate` units per microsecond

KEYS[i]      bucket i; a missing key is a full bucket. The value packs three
             little-endian doubles (struct '<ddd'): level in units, stamp in
             microseconds, units per token of the limit it was written under.
             The key expires when its bucket is full again.
ARGV[1]      cost in whole tokens (negative: a refund, always allowed, capped at capacity)
ARGV[1 + i]  bucket i's limit, packed '<dddd': unit, rate, full (capacity in units),
             fill_us (microseconds for an empty bucket to fill)

Binary, because parsing and printing decimal numbers cost this script more than
all its Redis calls; gateway/stores/script.py packs each limit once, at load.

Returns {allowed (1 or 0), now_us, then per bucket: remaining whole tokens,
reset_us (until full), wait_us (until `cost` tokens are there, 0 if they are now)}.
A denied request writes nothing.
]]

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 5: allow writes after TIME (a no-op since 5)
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local cost = tonumber(ARGV[1])
local n = #KEYS
local floor, min, pack, unpack = math.floor, math.min, struct.pack, struct.unpack

-- floor(a / b) for integers 0 <= a <= 2^53, b > 0, exact despite double division.
local function idiv(a, b)
  local q = floor(a / b)
  if q * b > a then return q - 1 end
  if (q + 1) * b <= a then return q + 1 end
  return q
end

local function cdiv(a, b) -- ceil(a / b), same domain
  return idiv(a + b - 1, b)
end

local buckets = {}
local allowed = 1
for i = 1, n do
  local unit, rate, full, fill = unpack('<dddd', ARGV[i + 1])
  local level, t = full, now
  local value = redis.call('GET', KEYS[i])
  if value then
    local stamp, old_unit
    level, stamp, old_unit = unpack('<ddd', value)
    if old_unit ~= unit then
      -- written under another limit (config reload): keep its whole tokens
      level = min(idiv(level, old_unit), full / unit) * unit
    end
    local elapsed = now - stamp
    if elapsed < 0 then
      level, t = min(level, full), stamp
    elseif elapsed >= fill then
      level = full
    else
      level = min(level + elapsed * rate, full)
    end
  end
  buckets[i] = {unit, rate, full, fill, level, t}
  if level < cost * unit then allowed = 0 end
end

local out = {allowed, now}
for i = 1, n do
  local b = buckets[i]
  local unit, rate, full, fill, level, t = b[1], b[2], b[3], b[4], b[5], b[6]
  local need = cost * unit
  local after = level
  if allowed == 1 then after = min(level - need, full) end
  local wait = 0
  if level < need then
    if need > full then
      wait = fill -- can never pass: the longest wait a satisfiable request could see
    else
      wait = t - now + cdiv(need - level, rate)
    end
  end
  local reset = t - now + cdiv(full - after, rate)
  if allowed == 1 then
    if after == full then
      redis.call('DEL', KEYS[i])
    else
      -- expire when full again, rounded up: never forget a bucket early
      redis.call('SET', KEYS[i], pack('<ddd', after, t, unit),
        'PX', string.format('%d', cdiv(reset, 1000)))
    end
  end
  out[3 * i] = idiv(after, unit)
  out[3 * i + 1] = reset
  out[3 * i + 2] = wait
end
return out
