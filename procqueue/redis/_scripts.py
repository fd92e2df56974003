"""The Lua scripts: every state change of a task in Redis is one of these,
atomic, with every key declared (``_keys.py``) and time from Redis ``TIME``
(never a node's clock, so clock skew between nodes moves no deadline).

Per task, ``meta`` holds JSON: ``priority``, ``seq`` (FIFO), ``attempts``
(counted at claim), ``max_retries``, backoff (``bb``, ``bf``, ``bm``: base ms,
factor, max ms), ``name``, ``state``, ``owner`` and ``token`` (fencing) while
claimed, ``submitted``/``started`` (ms), ``error`` once failed. The ready
score is ``-priority * 2^32 + seq``: higher priority first, FIFO within one.
"""

from __future__ import annotations

#: Shared Lua: Redis time in ms, the ready score, the backoff before a retry.
_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function score(m)
  return -m.priority * 4294967296 + m.seq
end
local function backoff(m)
  local d = m.bb * (m.bf ^ (m.attempts - 1))
  if d > m.bm then d = m.bm end
  return math.floor(d)
end
"""

#: Returns the task's id: ``id``, or, for an idempotency key already used,
#: the first task's id (nothing new is queued).
#: KEYS: ready delayed meta payload seq wake idem (the key's own key, or "")
#: ARGV: id priority meta_json payload delay_ms idem_ttl_s
SUBMIT = (
    _PRELUDE
    + """
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[3], id) == 1 then
  return redis.error_reply('duplicate task id ' .. id)
end
if KEYS[7] ~= '' then
  local first = redis.call('GET', KEYS[7])
  if first then return tonumber(first) end
  redis.call('SET', KEYS[7], id, 'EX', tonumber(ARGV[6]))
end
local m = cjson.decode(ARGV[3])
local now = now_ms()
m.priority = tonumber(ARGV[2])
m.seq = redis.call('INCR', KEYS[5])
m.attempts = 0
m.submitted = now
redis.call('HSET', KEYS[4], id, ARGV[4])
local delay = tonumber(ARGV[5])
if delay > 0 then
  m.state = 'scheduled'
  redis.call('ZADD', KEYS[2], now + delay, id)
else
  m.state = 'pending'
  redis.call('ZADD', KEYS[1], score(m), id)
  redis.call('RPUSH', KEYS[6], '1')
  redis.call('LTRIM', KEYS[6], -64, -1)
end
redis.call('HSET', KEYS[3], id, cjson.encode(m))
return tonumber(id)
"""
)

#: Promote due delayed tasks, pop up to k ready ones, lease each to ``owner``
#: with a fresh fencing token, counting the attempt: one step, no gap between
#: "popped" and "recorded".
#: KEYS: ready delayed leases meta payload fence
#: ARGV: k lease_ms owner
CLAIM = (
    _PRELUDE
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  local raw = redis.call('HGET', KEYS[4], id)
  redis.call('ZREM', KEYS[2], id)
  if raw then
    local m = cjson.decode(raw)
    m.state = 'pending'
    redis.call('HSET', KEYS[4], id, cjson.encode(m))
    redis.call('ZADD', KEYS[1], score(m), id)
  end
end
local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
local out = {}
local lease = tonumber(ARGV[2])
for i = 1, #popped, 2 do
  local id = popped[i]
  local raw = redis.call('HGET', KEYS[4], id)
  if raw then
    local m = cjson.decode(raw)
    m.attempts = m.attempts + 1
    m.token = redis.call('INCR', KEYS[6])
    m.owner = ARGV[3]
    m.state = 'running'
    m.started = now
    redis.call('HSET', KEYS[4], id, cjson.encode(m))
    redis.call('ZADD', KEYS[3], now + lease, id)
    local payload = redis.call('HGET', KEYS[5], id) or false
    out[#out + 1] = {id, m.token, m.attempts, payload, tostring(m.timeout or 0), m.name}
  end
end
return out
"""
)

#: Renew the leases ``owner`` still holds (token and lease must match); the
#: reply names the ones it lost and the ones to cancel.
#: KEYS: leases meta cancel
#: ARGV: lease_ms owner id1 token1 id2 token2 ...
RENEW = (
    _PRELUDE
    + """
local deadline = now_ms() + tonumber(ARGV[1])
local lost, cancels = {}, {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], tonumber(ARGV[i + 1])
  local raw = redis.call('HGET', KEYS[2], id)
  local m = raw and cjson.decode(raw)
  if m and m.token == token and m.owner == ARGV[2] and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
    if redis.call('SISMEMBER', KEYS[3], id) == 1 then cancels[#cancels + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, cancels}
"""
)

#: Record the outcome of one attempt, fenced: only while the lease exists and
#: the token matches. ``completed``/``cancelled``: the result hash (with a
#: TTL) and the task's fields go; ``retry``: back to ``delayed`` after its
#: backoff; ``failed``: into the DLQ (meta and payload stay, for requeue; the
#: sealed exception, if given, as payload field ``<id>:e``);
#: ``error``: ``retry`` while attempts remain, else ``failed``.
#: Returns 1, or 0 when fenced off (the late result is dropped).
#: KEYS: leases delayed meta payload dlq cancel result
#: ARGV: id token outcome value error ttl_s channel
FINISH = (
    _PRELUDE
    + """
local id, token, outcome = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local raw = redis.call('HGET', KEYS[3], id)
if not raw then return 0 end
local m = cjson.decode(raw)
if m.token ~= token or not redis.call('ZSCORE', KEYS[1], id) then return 0 end
local now = now_ms()
redis.call('ZREM', KEYS[1], id)
redis.call('SREM', KEYS[6], id)
m.owner = nil
m.token = nil
if outcome == 'error' then
  -- The attempt raised or crashed: retry while attempts (counted at claim) remain.
  if m.attempts <= m.max_retries then outcome = 'retry' else outcome = 'failed' end
end
if outcome == 'retry' then
  m.state = 'retrying'
  m.error = ARGV[5]
  redis.call('ZADD', KEYS[2], now + backoff(m), id)
  redis.call('HSET', KEYS[3], id, cjson.encode(m))
  return 1
end
if outcome == 'failed' then
  m.state = 'failed'
  m.error = ARGV[5]
  m.finished = now
  redis.call('HSET', KEYS[3], id, cjson.encode(m))
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], id .. ':e', ARGV[4]) end
  redis.call('ZADD', KEYS[5], now, id)
else
  redis.call('HSET', KEYS[7], 'state', outcome, 'value', ARGV[4], 'error', ARGV[5],
             'attempts', m.attempts, 'name', m.name, 'finished', now)
  redis.call('EXPIRE', KEYS[7], tonumber(ARGV[6]))
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id, id .. ':e')
end
redis.call('PUBLISH', ARGV[7], id)
return 1
"""
)

#: Expired leases (node killed, partitioned, frozen): requeue with backoff, or
#: dead-letter once the attempts (counted at claim) are spent. Atomic and
#: lock-free: any node may run it, concurrently, and each lease is handled once.
#: KEYS: leases delayed meta dlq
#: ARGV: limit channel
RECLAIM = (
    _PRELUDE
    + """
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local requeued, dead = {}, {}
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  local raw = redis.call('HGET', KEYS[3], id)
  if raw then
    local m = cjson.decode(raw)
    local err = 'lease expired on node ' .. tostring(m.owner) .. ' (attempt ' .. m.attempts .. ')'
    m.owner = nil
    m.token = nil
    m.error = err
    if m.attempts <= m.max_retries then
      m.state = 'retrying'
      redis.call('ZADD', KEYS[2], now + backoff(m), id)
      requeued[#requeued + 1] = id
    else
      m.state = 'failed'
      m.finished = now
      redis.call('ZADD', KEYS[4], now, id)
      dead[#dead + 1] = id
      redis.call('PUBLISH', ARGV[2], id)
    end
    redis.call('HSET', KEYS[3], id, cjson.encode(m))
  end
end
return {requeued, dead}
"""
)

#: Cancel: a queued or delayed task ends ``cancelled`` at once (returns 1); a
#: claimed one is flagged for its owner, whose next renewal kills it (2);
#: 0 when it is unknown or already final.
#: KEYS: ready delayed leases meta payload cancel result
#: ARGV: id ttl_s channel
CANCEL = (
    _PRELUDE
    + """
local id = ARGV[1]
local raw = redis.call('HGET', KEYS[4], id)
if not raw then return 0 end
local m = cjson.decode(raw)
if m.state == 'failed' then return 0 end
if redis.call('ZSCORE', KEYS[3], id) then
  redis.call('SADD', KEYS[6], id)
  return 2
end
redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[2], id)
redis.call('HSET', KEYS[7], 'state', 'cancelled', 'value', '', 'error', 'cancelled',
           'attempts', m.attempts, 'name', m.name, 'finished', now_ms())
redis.call('EXPIRE', KEYS[7], tonumber(ARGV[2]))
redis.call('HDEL', KEYS[4], id)
redis.call('HDEL', KEYS[5], id)
redis.call('PUBLISH', ARGV[3], id)
return 1
"""
)
