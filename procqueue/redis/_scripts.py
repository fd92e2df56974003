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
-- Queue one task (keys: ready delayed meta payload seq wake): meta ``m`` gets
-- its sequence and state; ready now, or delayed by ``delay`` ms.
local function enqueue(k, id, priority, m, payload, delay, now)
  m.priority = priority
  m.seq = redis.call('INCR', k.seq)
  m.attempts = 0
  m.submitted = now
  redis.call('HSET', k.payload, id, payload)
  if delay > 0 then
    m.state = 'scheduled'
    redis.call('ZADD', k.delayed, now + delay, id)
  else
    m.state = 'pending'
    redis.call('ZADD', k.ready, score(m), id)
    redis.call('RPUSH', k.wake, '1')
    redis.call('LTRIM', k.wake, -64, -1)
  end
  redis.call('HSET', k.meta, id, cjson.encode(m))
end
-- Rate limits (GCRA, one theoretical arrival time per key and window, in the
-- ``buckets`` hash): may task ``m`` (key ``m.lk``, windows ``m.lw`` =
-- {{interval ms, tolerance ms}, ...}) start now? Either way its slot is
-- reserved, so the tasks of a key start in claim order, FIFO, each in its own
-- slot, and a parked task holds the slot it waits for.
local function admitted(buckets, m, now)
  if m.slot then
    if m.slot <= now then
      m.slot = nil
      return true
    end
    return false
  end
  local t = now
  for i, w in ipairs(m.lw) do
    local tat = tonumber(redis.call('HGET', buckets, m.lk .. '#' .. i) or '0')
    if tat - w[2] > t then t = tat - w[2] end
  end
  for i, w in ipairs(m.lw) do
    local f = m.lk .. '#' .. i
    local tat = tonumber(redis.call('HGET', buckets, f) or '0')
    if tat < t then tat = t end
    redis.call('HSET', buckets, f, tat + w[1])
  end
  if t <= now then return true end
  m.slot = t
  return false
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
local k = {ready = KEYS[1], delayed = KEYS[2], meta = KEYS[3], payload = KEYS[4],
           seq = KEYS[5], wake = KEYS[6]}
enqueue(k, id, tonumber(ARGV[2]), cjson.decode(ARGV[3]), ARGV[4], tonumber(ARGV[5]), now_ms())
return tonumber(id)
"""
)

#: Promote due delayed tasks, pop up to k ready ones, lease each to ``owner``
#: with a fresh fencing token, counting the attempt: one step, no gap between
#: "popped" and "recorded". A task with a rate-limited key (``lk``) starts only
#: in its slot (GCRA with reservations, ``admitted``); until then it waits in
#: ``delayed``.
#: KEYS: ready delayed leases meta payload fence buckets
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
  local m = raw and cjson.decode(raw)
  if m and m.lk and not admitted(KEYS[7], m, now) then
    -- Throttled: waits for the start slot it was given, off the ready set,
    -- holding no worker and using no attempt; other keys run on.
    m.state = 'throttled'
    redis.call('HSET', KEYS[4], id, cjson.encode(m))
    redis.call('ZADD', KEYS[2], m.slot, id)
    m = nil
  end
  if m then
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

#: One evaluation of a schedule, at most once across every node: fires only
#: if its ``next_ms`` is still the one the caller read (compare-and-set), so
#: of several nodes evaluating the same tick exactly one queues its runs.
#: ``overlap="skip"``: a run is skipped (counted) while the last one is not
#: final. Returns the number of runs queued, or -1 when another node (or a
#: pause) got there first.
#: KEYS: sched ready delayed meta payload seq wake fired (the schedule's id list)
#: ARGV: name expected_next_ms new_next_ms misfired skipped_catchup
#:       then per run: id priority meta_json payload
FIRE = (
    _PRELUDE
    + """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return -1 end
local s = cjson.decode(raw)
if s.paused or s.next_ms ~= tonumber(ARGV[2]) then return -1 end
local now = now_ms()
local k = {ready = KEYS[2], delayed = KEYS[3], meta = KEYS[4], payload = KEYS[5],
           seq = KEYS[6], wake = KEYS[7]}
s.next_ms = tonumber(ARGV[3])
s.misfired = (s.misfired or 0) + tonumber(ARGV[4])
s.skipped_catchup = (s.skipped_catchup or 0) + tonumber(ARGV[5])
local fired = 0
for i = 6, #ARGV, 4 do
  local busy = false
  if s.overlap == 'skip' and s.last_id then
    local last = redis.call('HGET', KEYS[4], tostring(s.last_id))
    busy = last ~= false and cjson.decode(last).state ~= 'failed'
  end
  if busy then
    s.skipped_overlap = (s.skipped_overlap or 0) + 1
  else
    enqueue(k, ARGV[i], tonumber(ARGV[i + 1]), cjson.decode(ARGV[i + 2]), ARGV[i + 3], 0, now)
    s.last_id = tonumber(ARGV[i])
    s.runs = (s.runs or 0) + 1
    redis.call('RPUSH', KEYS[8], ARGV[i])
    redis.call('LTRIM', KEYS[8], -1000, -1)
    fired = fired + 1
  end
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(s))
return fired
"""
)

#: A schedule's controls, atomic against FIRE: ``add`` (fails if the name is
#: taken), ``pause``, ``resume`` (from ``next_ms``), ``cancel``.
#: KEYS: sched schedp fired
#: ARGV: name op json_or_next_ms payload
SCHEDULE = """
local name, op = ARGV[1], ARGV[2]
if op == 'add' then
  if redis.call('HSETNX', KEYS[1], name, ARGV[3]) == 0 then return 0 end
  redis.call('HSET', KEYS[2], name, ARGV[4])
  return 1
end
local raw = redis.call('HGET', KEYS[1], name)
if not raw then return 0 end
if op == 'cancel' then
  redis.call('HDEL', KEYS[1], name)
  redis.call('HDEL', KEYS[2], name)
  redis.call('DEL', KEYS[3])
  return 1
end
local s = cjson.decode(raw)
if op == 'pause' then
  s.paused = true
else
  s.paused = false
  s.next_ms = tonumber(ARGV[3])
end
redis.call('HSET', KEYS[1], name, cjson.encode(s))
return 1
"""

#: Run a dead letter again as a new task (new id, fresh attempts): its meta
#: moves to the new id, with the payload the caller re-sealed for that id.
#: Returns 1, or 0 if it is not a dead letter.
#: KEYS: dlq ready meta payload seq wake
#: ARGV: old_id new_id max_retries ('' keeps it) priority ('' keeps it) payload
REQUEUE = (
    _PRELUDE
    + """
local old, new = ARGV[1], ARGV[2]
if redis.call('ZREM', KEYS[1], old) == 0 then return 0 end
local m = cjson.decode(redis.call('HGET', KEYS[3], old))
local payload = ARGV[5]
redis.call('HDEL', KEYS[3], old)
redis.call('HDEL', KEYS[4], old, old .. ':e')
m.error = nil
m.finished = nil
m.started = nil
if ARGV[3] ~= '' then m.max_retries = tonumber(ARGV[3]) end
local priority = m.priority
if ARGV[4] ~= '' then priority = tonumber(ARGV[4]) end
local k = {ready = KEYS[2], delayed = '', meta = KEYS[3], payload = KEYS[4],
           seq = KEYS[5], wake = KEYS[6]}
enqueue(k, new, priority, m, payload, 0, now_ms())
return 1
"""
)

#: Drop dead letters. KEYS: dlq meta payload. ARGV: ids. Returns how many.
PURGE = """
local n = 0
for _, id in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id, id .. ':e')
    n = n + 1
  end
end
return n
"""
