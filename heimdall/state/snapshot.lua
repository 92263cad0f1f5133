#!lua flags=no-writes
-- The whole state at one revision, read in one atomic step (runs on replicas too).
-- KEYS: rev, nodes set, peers set, authorized, routes, master, seen, node key prefix, peer key prefix,
--       handshakes key prefix.
-- Returns {rev, nodes, peers, authorized, routes, master, seen, handshakes}; nodes/peers are lists of
-- flat HGETALLs; handshakes is a list of {node id, flat HGETALL} per node.
local rev = tonumber(redis.call('GET', KEYS[1]) or '0')
local function records(set_key, prefix)
  local out = {}
  for _, id in ipairs(redis.call('SMEMBERS', set_key)) do
    local fields = redis.call('HGETALL', prefix .. id)
    if #fields > 0 then table.insert(out, fields) end
  end
  return out
end
local handshakes = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  table.insert(handshakes, {id, redis.call('HGETALL', KEYS[10] .. id)})
end
return {
  rev,
  records(KEYS[2], KEYS[8]),
  records(KEYS[3], KEYS[9]),
  redis.call('HGETALL', KEYS[4]),
  redis.call('HGETALL', KEYS[5]),
  redis.call('HGETALL', KEYS[6]),
  redis.call('HGETALL', KEYS[7]),
  handshakes,
}
