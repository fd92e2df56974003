"""The Lua scripts: every state change of a task in Redis is one of these,
atomic, with every key declared (``_keys.py``) and time from Redis ``TIME``
(never a node's clock, so clock skew between nodes moves no deadline).

Each script is written with ``K.<name>`` for the queue's keys, and built from
the helper sections it needs (``_script``): the keys it uses are its declared
fixed keys (``KEYS[1..n]``, in ``_keys.FIXED`` order, listed in ``KEYS_OF``),
its per-task keys follow. A dependency cascade learns which tasks it ends as
it walks, so every key it may touch has to be a fixed one: the outcomes of
tasks ended that way live in fields of ``ended``, not in keys of their own.

Per task, ``meta`` holds JSON: ``priority``, ``seq`` (FIFO), ``attempts``
(counted at claim), ``max_retries``, ``ttl`` (the submitting client's
``result_ttl``, s: it, not the node's, sets how long the outcome is kept),
backoff (``bb``, ``bf``, ``bm``: base ms, factor, max ms), ``name``,
``state``, ``owner`` and ``token`` (fencing) while claimed,
``submitted``/``started`` (ms), ``error`` once failed. Limits: ``lk`` (the
concrete key), ``lw`` (rate windows), ``lc`` (concurrency cap), ``slot`` (a
reserved start), ``pk`` (its ``parked`` member), ``unp`` (unparked, not yet
claimed). Dependencies: ``ups`` (upstream ids), ``ad`` (trigger ``all_done``),
``inp`` (``{id: 1}``, the upstream results it takes), ``wait`` (upstreams not
ended yet), ``iv`` (``{id: {s: state, e: error, u: its upstream, h: held}}``,
how each ended), ``due`` (ms, a dependent's delay). The ready score is
``-priority * 2^32 + seq``: higher priority first, FIFO within one.

Task states in ``meta``: ``waiting`` (in ``waiting``), ``pending`` (in
``ready``), ``scheduled``/``retrying``/``throttled`` (in ``delayed``),
``parked`` (in ``parked``), ``running`` (in ``leases``), ``failed`` (in
``dlq``). A completed or cancelled task leaves ``meta`` for ``r:<id>``; a
dependent ended by its upstream without running leaves it for ``ended``
(and, ended by a failure, a copy of its meta and payload in ``dormant``, for
``requeue(cascade=True)``, until its ``ended`` entry expires).
"""

from __future__ import annotations

import re

from ._keys import FIXED

#: Redis time in ms, the ready score, the backoff before a retry.
_CORE = """
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
-- Tell the ``done`` channel that task ``id`` ended: at once, or, in a script
-- that set ``ctx.pub`` (FINISH), gathered into one message of comma-separated
-- ids (``flush``): one PUBLISH, and one message for each client to read, per
-- batch of outcomes rather than per task.
local function announce(ctx, id)
  if ctx.pub then ctx.pub[#ctx.pub + 1] = id else redis.call('PUBLISH', ctx.channel, id) end
end
local function flush(ctx)
  if ctx.pub and #ctx.pub > 0 then
    redis.call('PUBLISH', ctx.channel, table.concat(ctx.pub, ','))
  end
end
"""

#: Putting a task on ``ready``, waking an idle node.
_READY = """
local function make_ready(id, m)
  m.state = 'pending'
  redis.call('ZADD', K.ready, score(m), id)
  redis.call('RPUSH', K.wake, '1')
  redis.call('LTRIM', K.wake, -64, -1)
end
"""

#: Queueing a new task: ready or delayed.
_ENQUEUE = """
-- Queue one task: meta ``m`` gets its sequence and state; ready now, or
-- delayed by ``delay`` ms.
local function enqueue(id, priority, m, payload, delay, now)
  m.priority = priority
  m.seq = redis.call('INCR', K.seq)
  m.attempts = 0
  m.submitted = now
  redis.call('HSET', K.payload, id, payload)
  if delay > 0 then
    m.state = 'scheduled'
    redis.call('ZADD', K.delayed, now + delay, id)
  else
    make_ready(id, m)
  end
  redis.call('HSET', K.meta, id, cjson.encode(m))
end
"""

#: Rate limits: a start slot per task.
_RATE = """
-- Rate limits (GCRA, one theoretical arrival time per key and window, in the
-- ``buckets`` hash): may task ``m`` (key ``m.lk``, windows ``m.lw`` =
-- {{interval ms, tolerance ms}, ...}) start now? Either way its slot is
-- reserved, so the tasks of a key start in claim order, FIFO, each in its own
-- slot, and a parked task holds the slot it waits for.
local function admitted(m, now)
  if m.slot then
    if m.slot <= now then
      m.slot = nil
      return true
    end
    return false
  end
  local t = now
  for i, w in ipairs(m.lw) do
    local tat = tonumber(redis.call('HGET', K.buckets, m.lk .. '#' .. i) or '0')
    if tat - w[2] > t then t = tat - w[2] end
  end
  for i, w in ipairs(m.lw) do
    local f = m.lk .. '#' .. i
    local tat = tonumber(redis.call('HGET', K.buckets, f) or '0')
    if tat < t then tat = t end
    redis.call('HSET', K.buckets, f, tat + w[1])
  end
  if t <= now then return true end
  m.slot = t
  return false
end
"""

#: Concurrency caps: counting and parking.
_CAPS = """
local NUL, SOH = string.char(0), string.char(1)
-- Counters in ``caps``, deleted at 0 (an idle queue keeps no field).
local function bump(field, d)
  if redis.call('HINCRBY', K.caps, field, d) <= 0 then redis.call('HDEL', K.caps, field) end
end
local function count(field)
  return tonumber(redis.call('HGET', K.caps, field) or '0')
end
-- Concurrency caps (``m.lc``), global across nodes: ``r:<key>`` counts the
-- key's leased tasks (kept for every limited key, for the stats). A capped
-- task at its cap parks in ``parked`` under a member that sorts by key, then
-- by its ready score, so ZRANGEBYLEX gives a key's parked tasks in priority,
-- then FIFO order, in O(log n), with no key per limit key.
local function park(id, m)
  m.state = 'parked'
  m.pk = m.lk .. NUL .. string.format('%017.0f', score(m) + 9007199254740992) .. id
  redis.call('ZADD', K.parked, 0, m.pk)
  bump('p:' .. m.lk, 1)
  redis.call('HSET', K.meta, id, cjson.encode(m))
end
"""

#: Concurrency caps: a slot freed, parked tasks released.
_FREE = """
-- Room on capped ``key``: parked tasks go back to ``ready``, in their order,
-- while running + unparked stay under ``cap``. Unparked ones count as started
-- until claimed (``u:<key>``), so no later task of the key overtakes them:
-- the local limiter's ``released`` set.
local function refill(key, cap)
  local room = cap - count('r:' .. key) - count('u:' .. key)
  if room <= 0 or count('p:' .. key) == 0 then return end
  local heads = redis.call('ZRANGEBYLEX', K.parked, '[' .. key .. NUL, '(' .. key .. SOH,
                           'LIMIT', 0, room)
  for _, member in ipairs(heads) do
    redis.call('ZREM', K.parked, member)
    bump('p:' .. key, -1)
    local id = string.sub(member, #key + 19)
    local raw = redis.call('HGET', K.meta, id)
    if raw then
      local m = cjson.decode(raw)
      m.pk = nil
      m.unp = 1
      bump('u:' .. key, 1)
      make_ready(id, m)
      redis.call('HSET', K.meta, id, cjson.encode(m))
    end
  end
end
-- A lease ended (finished, retried, reclaimed): its key's slot frees.
local function lease_ended(m)
  if m.lk then
    bump('r:' .. m.lk, -1)
    if m.lc then refill(m.lk, m.lc) end
  end
end
-- Take a task that holds no lease off wherever it waits (cancel).
local function unqueue(id, m)
  redis.call('ZREM', K.ready, id)
  redis.call('ZREM', K.delayed, id)
  redis.call('SREM', K.waiting, id)
  if m.pk then
    redis.call('ZREM', K.parked, m.pk)
    bump('p:' .. m.lk, -1)
  end
  if m.state == 'throttled' then bump('t:' .. m.lk, -1) end
  if m.unp then
    m.unp = nil
    bump('u:' .. m.lk, -1)
    refill(m.lk, m.lc)
  end
end
"""

#: Upstream values held for their dependents.
_PINS = """
-- An upstream's value stays in ``held`` while dependents that may still run
-- need it (``<id>:n`` counts them), whatever its ``r:<id>`` TTL: in RQ a
-- dependent that runs after its parent's result_ttl fails looking the parent
-- up (rq/rq#2452), so here the value's lifetime is its dependents'.
local function pin(up, blob)
  if redis.call('HINCRBY', K.held, up .. ':n', 1) == 1 then
    redis.call('HSET', K.held, up, blob)
  end
end
-- Task ``m`` will never run again: its hold on upstream values goes.
local function unpin(m)
  if not m.iv then return end
  for up, iv in pairs(m.iv) do
    if iv.h then
      if redis.call('HINCRBY', K.held, up .. ':n', -1) <= 0 then
        redis.call('HDEL', K.held, up, up .. ':n')
      end
    end
  end
end
"""

#: Dependencies: edges, release, propagation.
_GRAPH = """
-- Edges: ``down`` holds, per upstream, a count and one field per dependent
-- (O(1) to add, unlike a growing JSON list).
local function link(up, dep)
  local i = redis.call('HINCRBY', K.down, up, 1)
  redis.call('HSET', K.down, up .. '#' .. i, dep)
end
local function take_dependents(up)
  local n = tonumber(redis.call('HGET', K.down, up) or '0')
  local out = {}
  local i = 1
  while i <= n do  -- chunks: unpack() has a stack limit
    local fields = {}
    for j = i, math.min(n, i + 999) do fields[#fields + 1] = up .. '#' .. j end
    for _, dep in ipairs(redis.call('HMGET', K.down, unpack(fields))) do
      if dep then out[#out + 1] = dep end
    end
    redis.call('HDEL', K.down, unpack(fields))
    i = i + 1000
  end
  if n > 0 then redis.call('HDEL', K.down, up) end
  return out
end
-- Every upstream ended as the trigger wants: queue it (or delay it, if a
-- delay was asked for and has not passed).
local function release(id, m, now)
  m.wait = nil
  redis.call('SREM', K.waiting, id)
  if m.due and m.due > now then
    m.state = 'scheduled'
    redis.call('ZADD', K.delayed, m.due, id)
  else
    make_ready(id, m)
  end
  redis.call('HSET', K.meta, id, cjson.encode(m))
end
-- A dependent ended by failed upstream ``up``: what ``requeue(cascade=True)``
-- of the dead letter above it takes to run it again (its sealed payload and
-- meta, in ``dormant``, under an edge from ``up``), until RECLAIM sweeps its
-- ``ended`` entry. The local queue's ``_Dormant`` copies.
local function keep_dormant(id, m, up)
  local payload = redis.call('HGET', K.payload, id)
  if not payload then return end
  local keep = {}
  for k, v in pairs(m) do keep[k] = v end
  keep.iv, keep.wait, keep.state, keep.seq, keep.attempts = nil, nil, nil, nil, nil
  keep.submitted, keep.due = nil, nil
  local i = redis.call('HINCRBY', K.dormant, up .. ':n', 1)
  redis.call('HSET', K.dormant, up .. '#' .. i, id, id, payload, id .. ':m', cjson.encode(keep))
end
-- A waiting task ends without running (its upstream failed or was cancelled):
-- its outcome goes to ``ended`` until ``ctx.ttl`` (RECLAIM sweeps it).
local function end_unrun(id, m, state, err, up, ctx)
  if state == 'failed' then keep_dormant(id, m, up) end
  redis.call('SREM', K.waiting, id)
  redis.call('HDEL', K.meta, id)
  redis.call('HDEL', K.payload, id)
  unpin(m)
  redis.call('HSET', K.ended, id, cjson.encode({state = state, error = err, up = tonumber(up),
                                               name = m.name, finished = ctx.now, ups = m.ups}))
  redis.call('ZADD', K.ended_ttl, ctx.now + (m.ttl or ctx.ttl) * 1000, id)
  announce(ctx, id)
end
-- Waiting task ``id`` (meta ``m``) learns that upstream ``up`` ended
-- (``{id, state, error, name, blob, up}``). Returns the same record for
-- ``id`` if that ended it too (its dependents learn next), else nil.
local function count_upstream(id, m, up, ctx)
  if up.state == 'completed' or m.ad then
    if m.inp and m.inp[up.id] then
      local iv = {s = up.state, e = up.error, u = up.up}
      if up.blob and up.blob ~= '' then
        pin(up.id, up.blob)
        iv.h = 1
      end
      if not m.iv then m.iv = {} end
      m.iv[up.id] = iv
    end
    m.wait = m.wait - 1
    if m.wait <= 0 then
      release(id, m, ctx.now)
    else
      redis.call('HSET', K.meta, id, cjson.encode(m))
    end
    return nil
  end
  local state, err
  if up.state == 'failed' then
    state = 'failed'
    err = 'UpstreamFailedError: task ' .. id .. ' (' .. m.name .. ') did not run: '
          .. 'its upstream task ' .. up.id .. ' (' .. (up.name or '?') .. ') failed with '
          .. string.match(up.error or 'an error', '^[^\\30]*')  -- not its traceback
  else
    state = 'cancelled'
    err = 'task ' .. id .. ' was cancelled: its upstream task ' .. up.id .. ' was'
  end
  end_unrun(id, m, state, err, up.id, ctx)
  return {id = id, state = state, error = err, name = m.name, up = up.id}
end
-- Task ``first`` ended for good: its dependents count it, and those it ends
-- (failure and cancel propagate) are walked in turn, with a worklist. In the
-- same script as the end itself: no window between "upstream ended" and
-- "dependent released", and every way a task ends runs it (RQ missed the
-- abandoned-job path: dependents never enqueued, rq/rq#2006).
local function cascade(first, ctx)
  local work = {first}
  while #work > 0 do
    local up = table.remove(work)
    for _, dep in ipairs(take_dependents(up.id)) do
      local raw = redis.call('HGET', K.meta, dep)
      if raw then
        local m = cjson.decode(raw)
        if m.state == 'waiting' then
          local ended = count_upstream(dep, m, up, ctx)
          if ended then work[#work + 1] = ended end
        end
      end
    end
  end
end
"""

#: Dormant dependents (``keep_dormant``): their edges, their lifetime.
_DORMANT = """
-- The edges from ``up`` to the dependents its failure ended go (a dead letter
-- purged or requeued, a dormant dependent swept or re-armed).
local function drop_edges(up)
  local n = tonumber(redis.call('HGET', K.dormant, up .. ':n') or '0')
  local i = 1
  while i <= n do  -- chunks: unpack() has a stack limit
    local fields = {}
    for j = i, math.min(n, i + 999) do fields[#fields + 1] = up .. '#' .. j end
    redis.call('HDEL', K.dormant, unpack(fields))
    i = i + 1000
  end
  if n > 0 then redis.call('HDEL', K.dormant, up .. ':n') end
end
-- Dependent ``id`` will not be re-armed: its copy and its edges go.
local function drop_dormant(id)
  redis.call('HDEL', K.dormant, id, id .. ':m')
  drop_edges(id)
end
-- The dormant dependents below ``root``, breadth first (parents before
-- their dependents, each level in the order they were ended).
local function dormant_tree(root)
  local out, todo, head = {}, {root}, 1
  while head <= #todo do
    local up = todo[head]
    head = head + 1
    local n = tonumber(redis.call('HGET', K.dormant, up .. ':n') or '0')
    for i = 1, n do
      local dep = redis.call('HGET', K.dormant, up .. '#' .. i)
      if dep then
        out[#out + 1] = dep
        todo[#todo + 1] = dep
      end
    end
  end
  return out
end
"""

#: Queueing a task that waits on upstream tasks, as SUBMIT does (REQUEUE's
#: re-armed dependents; SUBMIT has its own copy, on its hot path).
_UPSTREAMS = """
-- How upstream ``up`` stands: live (``{state = 'live'}``), or how it ended
-- (``{id, state, error, name, blob, up}``, as ``count_upstream`` takes it);
-- nil when unknown. ``rkey``: its ``r:<id>`` key, if declared.
local function read_upstream(up, rkey)
  local raw = redis.call('HGET', K.meta, up)
  if raw then
    local um = cjson.decode(raw)
    if um.state == 'failed' then
      return {id = up, state = 'failed', error = um.error, name = um.name,
              blob = redis.call('HGET', K.payload, up .. ':e') or nil}
    end
    return {id = up, state = 'live'}
  end
  if rkey then
    local h = redis.call('HMGET', rkey, 'state', 'value', 'error', 'name')
    if h[1] then
      local u = {id = up, state = h[1], error = h[3] or nil, name = h[4] or nil}
      if h[1] == 'completed' then u.blob = h[2] or nil end
      return u
    end
  end
  local gone = redis.call('HGET', K.ended, up)
  if not gone then return nil end
  local g = cjson.decode(gone)
  return {id = up, state = g.state, error = g.error, name = g.name, up = tostring(g.up)}
end
-- Queue task ``id`` (meta ``m``, ``m.ups`` set) waiting on ``ups`` (each as
-- ``read_upstream`` gives it): one that already ended counts at once, a
-- decisive one (failed or cancelled, under ``all_success``) ends it.
local function queue_waiting(id, m, payload, ups, ctx)
  m.seq = redis.call('INCR', K.seq)
  m.attempts = 0
  m.submitted = ctx.now
  m.state = 'waiting'
  m.wait = #ups
  redis.call('HSET', K.payload, id, payload)
  redis.call('SADD', K.waiting, id)
  if not m.ad then
    for _, u in ipairs(ups) do
      if u.state ~= 'live' and u.state ~= 'completed' then
        -- Ends at once; a task re-armed with it may already wait on it.
        local ended = count_upstream(id, m, u, ctx)
        if ended then cascade(ended, ctx) end
        return
      end
    end
  end
  local final = {}
  for _, u in ipairs(ups) do
    if u.state == 'live' then link(u.id, id) else final[#final + 1] = u end
  end
  redis.call('HSET', K.meta, id, cjson.encode(m))
  for _, u in ipairs(final) do count_upstream(id, m, u, ctx) end
end
"""

_KEY = re.compile(r"\bK\.([a-z_]+)\b")

#: The fixed keys each script declares (``KEYS[1..n]``, in this order; its
#: per-task keys follow): filled by :func:`_script`.
KEYS_OF: dict[str, tuple[str, ...]] = {}


def _script(name: str, *parts: str) -> str:
    """Join a script from its sections and body. Every ``K.<key>`` it uses is
    declared: the script's fixed keys are exactly those, in ``FIXED`` order,
    and each use becomes ``KEYS[i]`` here, once (building a name table in Lua
    cost every call a microsecond; the unused helpers' closures and keys, three
    more). ``NFIXED`` becomes their count."""
    text = "\n".join(parts)
    used = set(_KEY.findall(text))
    unknown = used - set(FIXED)
    if unknown:
        raise AssertionError(f"{name} uses keys that are not in _keys.FIXED: {sorted(unknown)}")
    names = tuple(n for n in FIXED if n in used)
    index = {n: i for i, n in enumerate(names, 1)}
    KEYS_OF[name] = names
    text = _KEY.sub(lambda m: f"KEYS[{index[m.group(1)]}]", text)
    return re.sub(r"\bNFIXED\b", str(len(names)), text)


#: Returns the task's id: ``id``, or, for an idempotency key already used,
#: the first task's id (nothing new is queued). With upstream ids, the task
#: waits (``waiting``) for them; each upstream's state is read here, in the
#: same step: one already completed counts as done, one already failed or
#: cancelled ends the task at once (or, ``all_done``, counts as done too), so
#: an upstream ending meanwhile cannot leave it waiting for ever (RQ's
#: deferred-forever race, rq/rq#743). An unknown upstream is refused (error
#: ``PQUNKNOWN <id>``), before anything is written.
#: KEYS: its fixed keys (``KEYS_OF``), then idem (the key's own key, or ""),
#:       then r:<up> for each upstream
#: ARGV: id priority meta_json payload delay_ms idem_ttl_s ttl_s channel up...
SUBMIT = _script(
    "SUBMIT",
    _CORE,
    _READY,
    _PINS,
    _GRAPH,
    _UPSTREAMS,
    """
local id = ARGV[1]
local idem = KEYS[NFIXED + 1]
if idem ~= '' then
  local first = redis.call('GET', idem)
  if first then return tonumber(first) end
end
local now = now_ms()
local nup = #ARGV - 8
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
  if idem ~= '' then redis.call('SET', idem, id, 'EX', tonumber(ARGV[6])) end
  redis.call('HSET', K.payload, id, ARGV[4])
  if delay > 0 then
    redis.call('ZADD', K.delayed, now + delay, id)
  else
    redis.call('ZADD', K.ready, -priority * 4294967296 + seq, id)
    redis.call('RPUSH', K.wake, '1')
    redis.call('LTRIM', K.wake, -64, -1)
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
  ups[i] = read_upstream(ARGV[8 + i], KEYS[NFIXED + 1 + i])
  if not ups[i] then return redis.error_reply('PQUNKNOWN ' .. ARGV[8 + i]) end
end
if idem ~= '' then redis.call('SET', idem, id, 'EX', tonumber(ARGV[6])) end
m.priority = tonumber(ARGV[2])
local delay = tonumber(ARGV[5])
if delay > 0 then m.due = now + delay end
queue_waiting(id, m, ARGV[4], ups, {now = now, ttl = tonumber(ARGV[7]), channel = ARGV[8]})
return tonumber(id)
""",
)

#: Promote due delayed tasks, pop up to k ready ones, lease each to ``owner``
#: with a fresh fencing token, counting the attempt: one step, no gap between
#: "popped" and "recorded". A task with a rate-limited key (``lk``) starts only
#: in its slot (GCRA with reservations, ``admitted``); until then it waits in
#: ``delayed``. A capped key at its cap parks the task (``park``) until a lease
#: of the key ends. Each claimed row carries the upstream values the task takes
#: (``result_of``), read in this same step from ``held``.
#: KEYS: its fixed keys (``KEYS_OF``)
#: ARGV: k lease_ms owner
CLAIM = _script(
    "CLAIM",
    _CORE,
    _RATE,
    _CAPS,
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
    redis.call('ZADD', K.delayed, m.slot, id)
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
return out
""",
)

#: Renew the leases ``owner`` still holds (token and lease must match); the
#: reply names the ones it lost and the ones to cancel.
#: KEYS: its fixed keys (``KEYS_OF``)
#: ARGV: lease_ms owner id1 token1 id2 token2 ...
RENEW = _script(
    "RENEW",
    _CORE,
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
#: end frees its key's concurrency slot, both in this same step.
#: A node reports every outcome it has in one call (issue #9: one script run
#: and one ``TIME`` per batch, not per task, and no pipeline of scripts, which
#: redis-py precedes with a ``SCRIPT EXISTS`` round trip); each still gets its
#: own fence check, state change and ``PUBLISH`` (a client or the dashboard
#: reads one id per message).
#: Returns 1 per outcome, or 0 for one fenced off (the late result is dropped).
#: KEYS: its fixed keys (``KEYS_OF``), then r:<id> per outcome
#: ARGV: ttl_s channel, then per outcome: id token outcome value error
FINISH = _script(
    "FINISH",
    _CORE,
    _READY,
    _CAPS,
    _FREE,
    _PINS,
    _GRAPH,
    """
local function finish(id, token, outcome, value, err, r, ctx)
  local raw = redis.call('HGET', K.meta, id)
  if not raw then return 0 end
  local m = cjson.decode(raw)
  if m.token ~= token or not redis.call('ZSCORE', K.leases, id) then return 0 end
  local now = ctx.now
  redis.call('ZREM', K.leases, id)
  redis.call('SREM', K.cancel, id)
  m.owner = nil
  m.token = nil
  lease_ended(m)
  if outcome == 'error' then
    -- The attempt raised or crashed: retry while attempts (counted at claim) remain.
    if m.attempts <= m.max_retries then outcome = 'retry' else outcome = 'failed' end
  end
  if outcome == 'retry' then
    m.state = 'retrying'
    m.error = err
    redis.call('ZADD', K.delayed, now + backoff(m), id)
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
    redis.call('HSET', r, 'state', outcome, 'value', value, 'error', err,
               'attempts', m.attempts, 'name', m.name, 'finished', now)
    if m.ups then redis.call('HSET', r, 'ups', cjson.encode(m.ups)) end
    redis.call('EXPIRE', r, m.ttl or ctx.ttl)
    redis.call('HDEL', K.meta, id)
    redis.call('HDEL', K.payload, id, id .. ':e')
    unpin(m)
    if outcome == 'completed' then ended.blob = value end
  end
  announce(ctx, id)
  cascade(ended, ctx)
  return 1
end
local ctx = {now = now_ms(), ttl = tonumber(ARGV[1]), channel = ARGV[2], pub = {}}
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

#: A task's outcome, read in one atomic step (a task finishing between two
#: reads would otherwise look unknown): ``{1, state, value, error}`` once it
#: completed or was cancelled (``r:<id>``); ``{2, meta, sealed exception or
#: false}`` while live or dead-lettered; ``{3, ended}`` when its upstream
#: ended it unrun; ``{0}`` when unknown. One script, not a MULTI of four
#: reads: the client's cost per result (issue #9).
#: KEYS: its fixed keys (``KEYS_OF``), then r:<id> for each id
#: ARGV: id...; returns one row per id (a burst of results is one call)
LOOKUP = _script(
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

#: Expired leases (node killed, partitioned, frozen): requeue with backoff, or
#: dead-letter once the attempts (counted at claim) are spent, ending the
#: task's dependents. Atomic and lock-free: any node may run it, concurrently,
#: and each lease is handled once. Also sweeps the expired ``ended`` entries
#: (and the dormant copies kept with them).
#: KEYS: its fixed keys (``KEYS_OF``)
#: ARGV: limit channel ttl_s
RECLAIM = _script(
    "RECLAIM",
    _CORE,
    _READY,
    _CAPS,
    _FREE,
    _PINS,
    _GRAPH,
    _DORMANT,
    """
local now = now_ms()
local ctx = {now = now, ttl = tonumber(ARGV[3]), channel = ARGV[2]}
local expired = redis.call('ZRANGEBYSCORE', K.leases, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local requeued, dead = {}, {}
for _, id in ipairs(expired) do
  redis.call('ZREM', K.leases, id)
  local raw = redis.call('HGET', K.meta, id)
  if raw then
    local m = cjson.decode(raw)
    local err = 'lease expired on node ' .. tostring(m.owner) .. ' (attempt ' .. m.attempts .. ')'
    m.owner = nil
    m.token = nil
    m.error = err
    lease_ended(m)
    if m.attempts <= m.max_retries then
      m.state = 'retrying'
      redis.call('ZADD', K.delayed, now + backoff(m), id)
      redis.call('HSET', K.meta, id, cjson.encode(m))
      requeued[#requeued + 1] = id
    else
      m.state = 'failed'
      m.finished = now
      redis.call('SREM', K.cancel, id)
      redis.call('ZADD', K.dlq, now, id)
      redis.call('HSET', K.meta, id, cjson.encode(m))
      dead[#dead + 1] = id
      announce(ctx, id)
      cascade({id = id, state = 'failed', error = err, name = m.name}, ctx)
    end
  end
end
local old = redis.call('ZRANGEBYSCORE', K.ended_ttl, '-inf', now, 'LIMIT', 0, 1000)
if #old > 0 then
  redis.call('HDEL', K.ended, unpack(old))
  redis.call('ZREM', K.ended_ttl, unpack(old))
  for _, id in ipairs(old) do drop_dormant(id) end
end
return {requeued, dead}
""",
)

#: Cancel: a queued, delayed, parked or waiting task ends ``cancelled`` at
#: once, and so do its dependents (returns 1); a claimed one is flagged for
#: its owner, whose next renewal kills it (2); 0 when it is unknown or already
#: final.
#: KEYS: its fixed keys (``KEYS_OF``), then r:<id>
#: ARGV: id ttl_s channel
CANCEL = _script(
    "CANCEL",
    _CORE,
    _READY,
    _CAPS,
    _FREE,
    _PINS,
    _GRAPH,
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
local now = now_ms()
local ctx = {now = now, ttl = tonumber(ARGV[2]), channel = ARGV[3]}
unqueue(id, m)
local r = KEYS[NFIXED + 1]
redis.call('HSET', r, 'state', 'cancelled', 'value', '', 'error', 'cancelled',
           'attempts', m.attempts, 'name', m.name, 'finished', now)
if m.ups then redis.call('HSET', r, 'ups', cjson.encode(m.ups)) end
redis.call('EXPIRE', r, m.ttl or ctx.ttl)
redis.call('HDEL', K.meta, id)
redis.call('HDEL', K.payload, id)
unpin(m)
announce(ctx, id)
cascade({id = id, state = 'cancelled', error = 'cancelled', name = m.name}, ctx)
return 1
""",
)

#: One evaluation of a schedule, at most once across every node: fires only
#: if its ``next_ms`` is still the one the caller read (compare-and-set), so
#: of several nodes evaluating the same tick exactly one queues its runs.
#: Overlap, against the last run (``last_id``) while it is not final:
#: ``"skip"`` skips a run (counted); ``"queue"`` queues it behind that one,
#: waiting (``all_done``: whatever its outcome), so each run becomes the next
#: one's upstream and the runs never overlap, however many ticks come; as on a
#: local queue, every tick is kept. ``run_now`` (``expected_next_ms`` empty)
#: fires one run without the compare-and-set, paused or not: the ticks do not
#: move and ``"skip"`` does not apply, ``"queue"`` does. Returns the number of
#: runs queued, or -1 when another node (or a pause) got there first, or the
#: schedule is gone.
#: KEYS: its fixed keys (``KEYS_OF``), then sched, fired (the schedule's id list)
#: ARGV: name expected_next_ms new_next_ms misfired skipped_catchup
#:       then per run: id priority meta_json payload
FIRE = _script(
    "FIRE",
    _CORE,
    _READY,
    _ENQUEUE,
    _PINS,
    _GRAPH,
    """
local sched, fired_list = KEYS[NFIXED + 1], KEYS[NFIXED + 2]
local raw = redis.call('HGET', sched, ARGV[1])
if not raw then return -1 end
local s = cjson.decode(raw)
local run_now = ARGV[2] == ''
if not run_now then
  if s.paused or s.next_ms ~= tonumber(ARGV[2]) then return -1 end
  s.next_ms = tonumber(ARGV[3])
  s.misfired = (s.misfired or 0) + tonumber(ARGV[4])
  s.skipped_catchup = (s.skipped_catchup or 0) + tonumber(ARGV[5])
end
local now = now_ms()
local fired = 0
for i = 6, #ARGV, 4 do
  local busy = nil  -- the last run, while it is not final
  if s.overlap ~= 'allow' and s.last_id then
    local up = tostring(s.last_id)
    local last = redis.call('HGET', K.meta, up)
    if last and cjson.decode(last).state ~= 'failed' then busy = up end
  end
  local id, priority, m = ARGV[i], tonumber(ARGV[i + 1]), cjson.decode(ARGV[i + 2])
  if busy and s.overlap == 'skip' and not run_now then
    s.skipped_overlap = (s.skipped_overlap or 0) + 1
  else
    if busy and s.overlap == 'queue' then
      m.priority = priority
      m.seq = redis.call('INCR', K.seq)
      m.attempts = 0
      m.submitted = now
      m.state = 'waiting'
      m.wait = 1
      m.ups = {tonumber(busy)}
      m.ad = true
      redis.call('HSET', K.payload, id, ARGV[i + 3])
      redis.call('SADD', K.waiting, id)
      link(busy, id)
      redis.call('HSET', K.meta, id, cjson.encode(m))
    else
      enqueue(id, priority, m, ARGV[i + 3], 0, now)
    end
    s.last_id = tonumber(id)
    s.runs = (s.runs or 0) + 1
    redis.call('RPUSH', fired_list, id)
    redis.call('LTRIM', fired_list, -1000, -1)
    fired = fired + 1
  end
end
redis.call('HSET', sched, ARGV[1], cjson.encode(s))
return fired
""",
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
REQUEUE = _script(
    "REQUEUE",
    _CORE,
    _READY,
    _ENQUEUE,
    _PINS,
    _GRAPH,
    _DORMANT,
    _UPSTREAMS,
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
PURGE = _script(
    "PURGE",
    _PINS,
    _DORMANT,
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
