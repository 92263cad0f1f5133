-- One write transaction of Heimdall's state (atomic: Redis runs a script alone).
--
-- KEYS[1] = the revision counter, KEYS[2] = the events channel.
-- ARGV[1] = JSON {
--   guards  = [{key, field, allowed = [values...], error}]   -- HGET key field must exist and be one of allowed,
--             or [{key, field, forbidden = [values...], error}]  -- or must not be one of forbidden;
--   alloc   = {hash, owner, owner_key, owner_field, base, count, step, prefix}
--             -- reuse owner_key[owner_field] if hash maps it to owner, else claim the first free
--             -- base + i*step (i < count) in hash; formatted as dotted quad (+ "/prefix" if set);
--   release = [{hash, owner_key, owner_field}]               -- free an owner's allocation;
--   ops     = [[COMMAND, key, args...]]                      -- "$alloc" in args is the allocation;
--   kind, id                                                 -- the event published after the bump
-- }
-- Returns {rev, allocation or "", good replicas}: the caller then WAITs until they all hold the write
-- (good: online and acknowledged within 2 s, as Redis counts them for min-replicas-to-write).
-- Errors: "DENIED <message>", "FULL <message>".
local req = cjson.decode(ARGV[1])

local good_replicas = 0
for state, lag in string.gmatch(redis.call('INFO', 'replication'), 'slave%d+:[^\r\n]*state=(%w+),[^\r\n]*lag=(%d+)') do
  if state == 'online' and tonumber(lag) <= 2 then good_replicas = good_replicas + 1 end
end

for _, g in ipairs(req.guards or {}) do
  local value = redis.call('HGET', g.key, g.field)
  local ok = g.allowed == nil
  for _, allowed in ipairs(g.allowed or {}) do
    if value == allowed then ok = true end
  end
  for _, forbidden in ipairs(g.forbidden or {}) do
    if value == forbidden then ok = false end
  end
  if not ok then return redis.error_reply('DENIED ' .. g.error) end
end

local function dotted(n)
  return string.format('%d.%d.%d.%d', math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end

local allocation = ''
local a = req.alloc
if a then
  local current = redis.call('HGET', a.owner_key, a.owner_field)
  if current and redis.call('HGET', a.hash, current) == a.owner then
    allocation = current
  else
    for i = 0, a.count - 1 do
      local candidate = dotted(a.base + i * a.step)
      if a.prefix then candidate = candidate .. '/' .. a.prefix end
      if redis.call('HSETNX', a.hash, candidate, a.owner) == 1 then
        allocation = candidate
        break
      end
    end
    if allocation == '' then return redis.error_reply('FULL no free address left in ' .. a.hash) end
  end
end

for _, r in ipairs(req.release or {}) do
  local held = redis.call('HGET', r.owner_key, r.owner_field)
  if held then redis.call('HDEL', r.hash, held) end
end

for _, op in ipairs(req.ops or {}) do
  for i, arg in ipairs(op) do
    if arg == '$alloc' then op[i] = allocation end
  end
  redis.call(unpack(op))
end

local rev = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', KEYS[2], cjson.encode({rev = rev, kind = req.kind, id = req.id}))
return {rev, allocation, good_replicas}
