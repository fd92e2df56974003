"""The scripts a client runs: submit, read outcomes, cancel, requeue from the
dead letter queue, purge. Written as ``_scripts.py`` says: every key
declared, time from Redis ``TIME``.
"""

from __future__ import annotations

from ._scripts import (
    CORE,
    DORMANT,
    ENDING,
    ENQUEUE,
    GRAPH,
    PINS,
    READY,
    UPSTREAMS,
    script,
)

#: Returns the task's id: ``id``, or, for an idempotency key already used,
#: the first task's id (nothing new is queued). With upstream ids, the task
#: waits (``waiting``) for them; each upstream's state is read here, in the
#: same step: one already completed counts as done, one already failed or
#: cancelled ends the task at once (or, ``all_done``, counts as done too), so
#: an upstream ending meanwhile cannot leave it waiting for ever (RQ's
#: deferred-forever race, rq/rq#743). An unknown upstream is refused (error
#: ``PQUNKNOWN <id>``), before anything is written.
#: KEYS: its fixed keys (``KEYS_OF``), then the idempotency key's own key
#:       (``k:<key>``) only when there is one, then r:<up> for each upstream
#: ARGV: id priority meta_json payload delay_ms idem_ttl_s ttl_s channel up...
SUBMIT = script(
    "SUBMIT",
    CORE,
    READY,
    PINS,
    GRAPH,
    UPSTREAMS,
    """
local id = ARGV[1]
local nup = #ARGV - 8
-- The idempotency key is declared only when given: a placeholder key
-- outside the queue's hash tag (the empty key is slot 0) fails a Cluster's
-- CROSSSLOT check. ``ik``: 1 when it is there, before the upstreams' keys.
local ik = #KEYS - NFIXED - nup
local idem = ik == 1 and KEYS[NFIXED + 1]
if idem then
  local first = redis.call('GET', idem)
  if first then return tonumber(first) end
end
local now = now_ms()
if nup == 0 then
  -- The common case, in as few calls as it takes (each costs ~4 µs inside a
  -- script): no JSON round trip (the client's meta is an object, closed
  -- here with the fields ``enqueue`` adds), and HSETNX is the duplicate check.
  local priority, delay = tonumber(ARGV[2]), tonumber(ARGV[5])
  local seq = redis.call('INCR', K.seq)
  local state = 'pending'
  if delay > 0 then state = 'scheduled' end
  local meta = string.sub(ARGV[3], 1, -2) .. string.format(
    ',"priority":%d,"seq":%d,"attempts":0,"submitted":%d,"state":"%s"}',
    priority, seq, now, state)
  if redis.call('HSETNX', K.meta, id, meta) == 0 then
    return redis.error_reply('duplicate task id ' .. id)
  end
  if idem then redis.call('SET', idem, id, 'EX', tonumber(ARGV[6])) end
  redis.call('HSET', K.payload, id, ARGV[4])
  if delay > 0 then
    delay_until(now + delay, id)
  else
    redis.call('ZADD', K.ready, -priority * 4294967296 + seq, id)
    wake()
  end
  return tonumber(id)
end
if redis.call('HEXISTS', K.meta, id) == 1 then
  return redis.error_reply('duplicate task id ' .. id)
end
local m = cjson.decode(ARGV[3])
-- Every upstream's state, before anything is written.
local ups = {}
for i = 1, nup do
  ups[i] = read_upstream(ARGV[8 + i], KEYS[NFIXED + ik + i])
  if not ups[i] then return redis.error_reply('PQUNKNOWN ' .. ARGV[8 + i]) end
end
if idem then redis.call('SET', idem, id, 'EX', tonumber(ARGV[6])) end
m.priority = tonumber(ARGV[2])
local delay = tonumber(ARGV[5])
if delay > 0 then m.due = now + delay end
queue_waiting(id, m, ARGV[4], ups, {now = now, ttl = tonumber(ARGV[7]), channel = ARGV[8]})
return tonumber(id)
""",
)


#: A task's outcome, read in one atomic step (a task finishing between two
#: reads would otherwise look unknown): ``{1, state, value, error}`` once it
#: completed or was cancelled (``r:<id>``); ``{2, meta, sealed exception or
#: false}`` while live or dead-lettered; ``{3, ended}`` when its upstream
#: ended it unrun; ``{0}`` when unknown. One script, not a MULTI of four
#: reads: the client's cost per result (issue #9).
#: KEYS: its fixed keys (``KEYS_OF``), then r:<id> for each id
#: ARGV: id...; returns one row per id (a burst of results is one call)
LOOKUP = script(
    "LOOKUP",
    """
local out = {}
for i, id in ipairs(ARGV) do
  local h = redis.call('HMGET', KEYS[NFIXED + i], 'state', 'value', 'error')
  if h[1] then
    out[i] = {1, h[1], h[2] or '', h[3] or ''}
  else
    local raw = redis.call('HGET', K.meta, id)
    if raw then
      local sealed = false
      if cjson.decode(raw).state == 'failed' then
        sealed = redis.call('HGET', K.payload, id .. ':e')
      end
      out[i] = {2, raw, sealed}
    else
      local gone = redis.call('HGET', K.ended, id)
      if gone then out[i] = {3, gone} else out[i] = {0} end
    end
  end
end
return out
""",
)


#: Cancel: a queued, delayed, parked or waiting task ends ``cancelled`` at
#: once, and so do its dependents (returns 1); a claimed one is flagged for
#: its owner, whose next renewal kills it (2: should its attempt end in a
#: retry, or its lease expire, instead, FINISH or RECLAIM ends it cancelled);
#: 0 when it is unknown or already final.
#: KEYS: its fixed keys (``KEYS_OF``), then r:<id>
#: ARGV: id ttl_s channel
CANCEL = script(
    "CANCEL",
    *ENDING,
    """
local id = ARGV[1]
local raw = redis.call('HGET', K.meta, id)
if not raw then return 0 end
local m = cjson.decode(raw)
if m.state == 'failed' then return 0 end
if redis.call('ZSCORE', K.leases, id) then
  redis.call('SADD', K.cancel, id)
  return 2
end
local ctx = {now = now_ms(), ttl = tonumber(ARGV[2]), channel = ARGV[3]}
unqueue(id, m)
-- A flag left behind (by a RECLAIM of an older version, which requeued a
-- flagged task) would outlive the task: the key count must come back down.
redis.call('SREM', K.cancel, id)
keep_outcome(id, m, KEYS[NFIXED + 1], 'cancelled', '', 'cancelled', ctx)
announce(ctx, id)
cascade({id = id, state = 'cancelled', error = 'cancelled', name = m.name}, ctx)
return 1
""",
)


#: Run a dead letter again as a new task (new id, fresh attempts): its meta
#: moves to the new id, with the payload the caller re-sealed for that id.
#: The upstream values it holds (``iv``) move with it. Returns 1, or 0 if it
#: is not a dead letter.
#: With ``cascade``, the dependents its failure ended (``dormant``, breadth
#: first) come back too, as new tasks (the caller's ids and payloads, whose
#: ``result_of`` markers it moved) waiting on the new ids, each queued as
#: SUBMIT queues a dependent. The caller read that tree first; it is checked
#: here, before anything is written: a tree that changed since (a dependent
#: ended or swept meanwhile) is refused (``PQCHANGED``: read it again), one
#: whose copy expired raises ``PQEXPIRED <id>``, and an upstream outside the
#: tree that is no longer known (its result expired) ``PQGONE <dep> <up>``.
#: KEYS: its fixed keys (``KEYS_OF``), then r:<up> per upstream outside the tree
#: ARGV: old_id new_id max_retries ('' keeps it) priority ('' keeps it) payload
#:       ttl_s channel cascade (0/1) n_dependents n_outside,
#:       then per dependent: old_id new_id payload, then the outside upstream ids
REQUEUE = script(
    "REQUEUE",
    CORE,
    READY,
    ENQUEUE,
    PINS,
    GRAPH,
    DORMANT,
    UPSTREAMS,
    """
local old, new = ARGV[1], ARGV[2]
if not redis.call('ZSCORE', K.dlq, old) then return 0 end
local ctx = {now = now_ms(), ttl = tonumber(ARGV[6]), channel = ARGV[7]}
local ndeps, nout = tonumber(ARGV[9]), tonumber(ARGV[10])
local ids, deps, rkeys = {[old] = new}, {}, {}
if ARGV[8] == '1' then
  local tree = dormant_tree(old)
  if #tree ~= ndeps then return redis.error_reply('PQCHANGED') end
  for i, dep in ipairs(tree) do
    local j = 10 + (i - 1) * 3
    if dep ~= ARGV[j + 1] then return redis.error_reply('PQCHANGED') end
    local raw = redis.call('HGET', K.dormant, dep .. ':m')
    if not raw then return redis.error_reply('PQEXPIRED ' .. dep) end
    deps[i] = {old = dep, new = ARGV[j + 2], payload = ARGV[j + 3], m = cjson.decode(raw)}
    ids[dep] = ARGV[j + 2]
  end
  for i = 1, nout do rkeys[ARGV[10 + ndeps * 3 + i]] = KEYS[NFIXED + i] end
  for _, d in ipairs(deps) do
    for _, up in ipairs(d.m.ups) do
      local u = tostring(up)
      if not ids[u] then
        if not rkeys[u] then return redis.error_reply('PQCHANGED') end
        if not read_upstream(u, rkeys[u]) then
          return redis.error_reply('PQGONE ' .. d.old .. ' ' .. u)
        end
      end
    end
  end
end
redis.call('ZREM', K.dlq, old)
local m = cjson.decode(redis.call('HGET', K.meta, old))
redis.call('HDEL', K.meta, old)
redis.call('HDEL', K.payload, old, old .. ':e')
m.error = nil
m.finished = nil
m.started = nil
m.slot = nil
if ARGV[3] ~= '' then m.max_retries = tonumber(ARGV[3]) end
local priority = m.priority
if ARGV[4] ~= '' then priority = tonumber(ARGV[4]) end
enqueue(new, priority, m, ARGV[5], 0, ctx.now)
drop_edges(old)
for _, d in ipairs(deps) do drop_dormant(d.old) end
for _, d in ipairs(deps) do
  local dm, ups, mapped = d.m, {}, {}
  for i, up in ipairs(dm.ups) do
    local u = tostring(up)
    local to = ids[u]
    if to then
      mapped[i] = tonumber(to)
      -- Re-armed: live, or ended at once (read from there); not queued yet
      -- (a later level), it links as live, and its end reaches this one.
      ups[i] = read_upstream(to, nil) or {id = to, state = 'live'}
    else
      mapped[i] = up
      ups[i] = read_upstream(u, rkeys[u])
    end
  end
  dm.ups = mapped
  if dm.inp then
    local inp = {}
    for u, _ in pairs(dm.inp) do inp[ids[u] or u] = 1 end
    dm.inp = inp
  end
  queue_waiting(d.new, dm, d.payload, ups, ctx)
end
return 1
""",
)


#: Drop dead letters (and their hold on upstream values; the dependents their
#: failure ended can no longer be re-armed, and go with their ``ended`` TTL).
#: KEYS: its fixed keys. ARGV: ids. Returns how many.
PURGE = script(
    "PURGE",
    PINS,
    DORMANT,
    """
local n = 0
for _, id in ipairs(ARGV) do
  if redis.call('ZREM', K.dlq, id) == 1 then
    local raw = redis.call('HGET', K.meta, id)
    if raw then unpin(cjson.decode(raw)) end
    redis.call('HDEL', K.meta, id)
    redis.call('HDEL', K.payload, id, id .. ':e')
    drop_edges(id)
    n = n + 1
  end
end
return n
""",
)
