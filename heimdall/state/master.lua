-- Name the master (heimdall-elector, after Sentinel's choice): its epoch goes up by one whenever the
-- master changes and never otherwise, so the epoch of the surviving history never goes backwards.
-- KEYS[1] = the master record, KEYS[2] = the revision counter, KEYS[3] = the events channel.
-- ARGV[1] = node id, ARGV[2] = its tunnel address. Returns the record's epoch.
local current = redis.call('HMGET', KEYS[1], 'node_id', 'address', 'epoch')
local epoch = tonumber(current[3]) or 0
if current[1] == ARGV[1] and current[2] == ARGV[2] then return epoch end
epoch = epoch + 1
redis.call('HSET', KEYS[1], 'node_id', ARGV[1], 'address', ARGV[2], 'epoch', epoch)
local rev = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], cjson.encode({rev = rev, kind = 'master', id = ARGV[1]}))
return epoch
