"""The scripts a node runs: claim, renew its leases, report outcomes,
reclaim the expired leases of dead nodes. Written as ``_scripts.py`` says: every key
declared, time from Redis ``TIME``.
"""

from __future__ import annotations

from ._scripts import CAPS, CORE, DORMANT, ENDING, RATE, READY, script

#: Expired leases a task is not charged for. Attempts are counted at claim,
#: so that a task that kills its node every time ends in the DLQ instead of
#: looping; but a node that dies (SIGKILL, OOM, a lost host) takes with it
#: every lease it held, its prefetched tasks' too, which never started: with
#: the default ``max_retries=0`` all of them were dead-lettered. So RECLAIM
#: refunds the attempt of each of a task's first ``LOST_FREE`` lost leases
#: (``m.lost`` counts them) and requeues it at once, in its place in line;
#: from the next one on, an expired lease is a spent attempt, as an error
#: is. A task that kills its node every time is dead-lettered after
#: ``LOST_FREE + max_retries + 1`` node deaths: "at least once" holds for the
#: tasks that merely shared a node with a crash, and the loop stays bounded.
LOST_FREE = 2

#: Charging attempts: what a task has spent, the backoff before a retry.
CHARGE = """
-- The attempts a task has spent: those claimed (``attempts``, which the
-- status and dashboards show: runs started), less the lost leases refunded.
local function charged(m)
  return m.attempts - math.min(m.lost or 0, LOST_FREE)
end
local function backoff(m)
  local d = m.bb * (m.bf ^ (charged(m) - 1))
  if d > m.bm then d = m.bm end
  return math.floor(d)
end
""".replace("LOST_FREE", str(LOST_FREE))

#: Promote due delayed tasks, pop up to k ready ones, lease each to ``owner``
#: with a fresh fencing token, counting the attempt: one step, no gap between
#: "popped" and "recorded". A task with a rate-limited key (``lk``) starts only
#: in its slot (GCRA with reservations, ``admitted``); until then it waits in
#: ``delayed``. A capped key at its cap parks the task (``park``) until a lease
#: of the key ends. Each claimed row carries the upstream values the task takes
#: (``result_of``), read in this same step from ``held``.
#: KEYS: its fixed keys (``KEYS_OF``)
#: ARGV: k lease_ms owner
CLAIM = script(
    "CLAIM",
    CORE,
    READY,
    RATE,
    CAPS,
    """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', K.delayed, '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  local raw = redis.call('HGET', K.meta, id)
  redis.call('ZREM', K.delayed, id)
  if raw then
    local m = cjson.decode(raw)
    if m.state == 'throttled' then bump('t:' .. m.lk, -1) end
    m.state = 'pending'
    redis.call('HSET', K.meta, id, cjson.encode(m))
    redis.call('ZADD', K.ready, score(m), id)
  end
end
local popped = redis.call('ZPOPMIN', K.ready, tonumber(ARGV[1]))
local out, ids = {}, {}
local lease = tonumber(ARGV[2])
-- Fencing tokens for the batch in one INCRBY (a parked or throttled task
-- leaves a token unused: they need only be unique).
local token = 0
if #popped > 0 then token = redis.call('INCRBY', K.fence, #popped / 2) - #popped / 2 end
for i = 1, #popped, 2 do
  local id = popped[i]
  local raw = redis.call('HGET', K.meta, id)
  local m = raw and cjson.decode(raw)
  if m and m.unp then
    m.unp = nil
    bump('u:' .. m.lk, -1)
  end
  if m and m.lc and count('r:' .. m.lk) + count('u:' .. m.lk) >= m.lc then
    -- At its cap across all nodes: parked in order, holding no worker and
    -- using no attempt, until a lease of its key ends (``refill``).
    park(id, m)
    m = nil
  end
  if m and m.lk and #m.lw > 0 and not admitted(m, now) then
    -- Throttled: waits for the start slot it was given, off the ready set,
    -- holding no worker and using no attempt; other keys run on.
    m.state = 'throttled'
    bump('t:' .. m.lk, 1)
    redis.call('HSET', K.meta, id, cjson.encode(m))
    delay_until(m.slot, id)
    m = nil
  end
  if m then
    m.attempts = m.attempts + 1
    token = token + 1
    m.token = token
    m.owner = ARGV[3]
    m.state = 'running'
    m.started = now
    if m.lk then bump('r:' .. m.lk, 1) end
    redis.call('HSET', K.meta, id, cjson.encode(m))
    redis.call('ZADD', K.leases, now + lease, id)
    local row = {id, m.token, m.attempts, false, tostring(m.timeout or 0), m.name}
    if m.inp then
      -- Upstream values: id, state, signed blob or '', error, its own upstream.
      local inputs = {}
      for up, _ in pairs(m.inp) do
        local iv = (m.iv and m.iv[up]) or {}
        local blob = iv.h and redis.call('HGET', K.held, up) or ''
        inputs[#inputs + 1] = up
        inputs[#inputs + 1] = iv.s or ''
        inputs[#inputs + 1] = blob or ''
        inputs[#inputs + 1] = iv.e or ''
        inputs[#inputs + 1] = iv.u and tostring(iv.u) or ''
      end
      row[7] = inputs
    end
    out[#out + 1] = row
    ids[#ids + 1] = id
  end
end
if #ids > 0 then  -- every payload in one read
  local payloads = redis.call('HMGET', K.payload, unpack(ids))
  for i, row in ipairs(out) do row[4] = payloads[i] end
end
-- And how many are left ready (0: claiming again finds nothing until a
-- task is made ready, which pushes a wake token).
return {out, redis.call('ZCARD', K.ready)}
""",
)


#: Renew the leases ``owner`` still holds (token and lease must match); the
#: reply names the ones it lost and the ones to cancel.
#: KEYS: its fixed keys (``KEYS_OF``)
#: ARGV: lease_ms owner id1 token1 id2 token2 ...
RENEW = script(
    "RENEW",
    CORE,
    """
local deadline = now_ms() + tonumber(ARGV[1])
local lost, cancels = {}, {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], tonumber(ARGV[i + 1])
  local raw = redis.call('HGET', K.meta, id)
  local m = raw and cjson.decode(raw)
  if m and m.token == token and m.owner == ARGV[2] and redis.call('ZSCORE', K.leases, id) then
    redis.call('ZADD', K.leases, 'XX', deadline, id)
    if redis.call('SISMEMBER', K.cancel, id) == 1 then cancels[#cancels + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, cancels}
""",
)


#: Record the outcomes of attempts, each fenced: only while its lease exists
#: and its token matches. ``completed``/``cancelled``: the result hash (with a
#: TTL) and the task's fields go; ``retry``: back to ``delayed`` after its
#: backoff; ``failed``: into the DLQ (meta and payload stay, for requeue; the
#: sealed exception, if given, as payload field ``<id>:e``);
#: ``error``: ``retry`` while attempts remain, else ``failed``. A final
#: outcome releases or ends the task's dependents (``cascade``), and the lease's
#: end frees its key's concurrency slot, both in this same step. A task whose
#: cancel was asked while it ran (``cancel``) and whose attempt ends in a
#: retry ends ``cancelled`` instead: the request outlives its attempt.
#: A node reports every outcome it has in one call (issue #9: one script run
#: and one ``TIME`` per batch, not per task, and no pipeline of scripts, which
#: redis-py precedes with a ``SCRIPT EXISTS`` round trip); each still gets its
#: own fence check, state change and ``PUBLISH`` (a client or the dashboard
#: reads one id per message).
#: Returns 1 per outcome, or 0 for one fenced off (the late result is dropped).
#: KEYS: its fixed keys (``KEYS_OF``), then r:<id> per outcome
#: ARGV: ttl_s channel, then per outcome: id token outcome value error
FINISH = script(
    "FINISH",
    *ENDING,
    CHARGE,
    """
local function finish(id, token, outcome, value, err, r, ctx)
  local raw = redis.call('HGET', K.meta, id)
  if not raw then return 0 end
  local m = cjson.decode(raw)
  if m.token ~= token or not redis.call('ZSCORE', K.leases, id) then return 0 end
  local now = ctx.now
  redis.call('ZREM', K.leases, id)
  local flagged = redis.call('SREM', K.cancel, id) == 1
  m.node = m.owner  -- where its last attempt ran, for get_task_status
  m.owner = nil
  m.token = nil
  lease_ended(m)
  if outcome == 'error' then
    -- The attempt raised or crashed: retry while attempts (counted at claim) remain.
    if charged(m) <= m.max_retries then outcome = 'retry' else outcome = 'failed' end
  end
  if outcome == 'retry' and flagged then
    outcome, value, err = 'cancelled', '', 'cancelled'
  end
  if outcome == 'retry' then
    m.state = 'retrying'
    m.error = err
    delay_until(now + backoff(m), id)
    redis.call('HSET', K.meta, id, cjson.encode(m))
    return 1
  end
  local ended = {id = id, state = outcome, error = err, name = m.name}
  if outcome == 'failed' then
    m.state = 'failed'
    m.error = err
    m.finished = now
    redis.call('HSET', K.meta, id, cjson.encode(m))
    if value ~= '' then redis.call('HSET', K.payload, id .. ':e', value) end
    redis.call('ZADD', K.dlq, now, id)
    ended.blob = value
  else
    keep_outcome(id, m, r, outcome, value, err, ctx)
    if outcome == 'completed' then ended.blob = value end
  end
  announce(ctx, id, outcome == 'completed' and err == '' and value or nil)
  cascade(ended, ctx)
  return 1
end
local ctx = {now = now_ms(), ttl = tonumber(ARGV[1]), channel = ARGV[2], pub = {}, inl = {}}
local out = {}
for i = 3, #ARGV, 5 do
  local n = #out + 1
  out[n] = finish(ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
                  KEYS[NFIXED + n], ctx)
end
flush(ctx)
return out
""",
)


#: Expired leases (node killed, partitioned, frozen). Each lost lease counts
#: (``m.lost``); the first ``LOST_FREE`` of a task are refunded: it goes back
#: to ``ready`` at once, uncharged. From then on a lost lease is a spent
#: attempt: requeued with backoff, or dead-lettered once the attempts are
#: spent, ending the task's dependents. A task whose cancel was asked while it
#: ran ends ``cancelled`` (its dependents too), as CANCEL ends a queued one:
#: that writes its ``r:<id>``, which the caller declares (the ids in ARGV,
#: read from ``cancel``); one it did not declare keeps its expired lease and
#: is returned in the third list, for the caller to run again declaring it.
#: Atomic and lock-free: any node may run it, concurrently, and each lease is
#: handled once. Also sweeps the expired ``ended`` entries (and the dormant
#: copies kept with them).
#: KEYS: its fixed keys (``KEYS_OF``), then r:<id> per id in ARGV[4..]
#: ARGV: limit channel ttl_s, then the ids flagged for cancel it may end
#: Returns {requeued, dead-lettered, flagged but undeclared}.
RECLAIM = script(
    "RECLAIM",
    *ENDING,
    CHARGE,
    DORMANT,
    """
local now = now_ms()
local ctx = {now = now, ttl = tonumber(ARGV[3]), channel = ARGV[2]}
local rkeys = {}
for i = 4, #ARGV do rkeys[ARGV[i]] = KEYS[NFIXED + i - 3] end
local expired = redis.call('ZRANGEBYSCORE', K.leases, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local requeued, dead, later = {}, {}, {}
-- Task ``id`` (meta ``m``) lost its lease on ``node``: refunded, retried or
-- dead-lettered (LOST_FREE).
local function lost(id, m, node)
  m.lost = (m.lost or 0) + 1
  local err = 'lease expired on node ' .. node .. ' (attempt ' .. m.attempts
  if m.lost <= LOST_FREE then
    -- Not charged: its node may have died for another task's sake (a
    -- prefetched task had not even started). Back in its place in line.
    m.error = err .. ', not charged: lost lease ' .. m.lost .. ' of LOST_FREE free)'
    make_ready(id, m)
    redis.call('HSET', K.meta, id, cjson.encode(m))
    requeued[#requeued + 1] = id
    return
  end
  err = err .. '; ' .. m.lost .. ' leases lost, the first LOST_FREE not charged)'
  m.error = err
  if charged(m) <= m.max_retries then
    m.state = 'retrying'
    delay_until(now + backoff(m), id)
    redis.call('HSET', K.meta, id, cjson.encode(m))
    requeued[#requeued + 1] = id
    return
  end
  m.state = 'failed'
  m.finished = now
  redis.call('ZADD', K.dlq, now, id)
  redis.call('HSET', K.meta, id, cjson.encode(m))
  dead[#dead + 1] = id
  announce(ctx, id)
  cascade({id = id, state = 'failed', error = err, name = m.name}, ctx)
end
for _, id in ipairs(expired) do
  local raw = redis.call('HGET', K.meta, id)
  local m = raw and cjson.decode(raw)
  local r = nil  -- its r:<id>, if its cancel was asked
  if m and redis.call('SISMEMBER', K.cancel, id) == 1 then r = rkeys[id] or false end
  if r == false then
    -- Ending it writes its r:<id>, not declared here: its lease stays, for
    -- the caller's next run.
    later[#later + 1] = id
  else
    redis.call('ZREM', K.leases, id)
    if m then
      local node = tostring(m.owner)
      m.owner = nil
      m.token = nil
      lease_ended(m)
      if r then
        redis.call('SREM', K.cancel, id)
        keep_outcome(id, m, r, 'cancelled', '', 'cancelled', ctx)
        announce(ctx, id)
        cascade({id = id, state = 'cancelled', error = 'cancelled', name = m.name}, ctx)
      else
        lost(id, m, node)
      end
    end
  end
end
local old = redis.call('ZRANGEBYSCORE', K.ended_ttl, '-inf', now, 'LIMIT', 0, 1000)
if #old > 0 then
  redis.call('HDEL', K.ended, unpack(old))
  redis.call('ZREM', K.ended_ttl, unpack(old))
  for _, id in ipairs(old) do drop_dormant(id) end
end
return {requeued, dead, later}
""".replace("LOST_FREE", str(LOST_FREE)),
)
