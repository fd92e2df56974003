"""The Lua scripts' shared parts: every state change of a task in Redis is
one script, atomic, built here from these helper sections; the scripts
themselves are in ``_scripts_client.py`` (submit, lookup, cancel, requeue,
purge), ``_scripts_node.py`` (claim, renew, finish, reclaim) and
``_scripts_schedules.py`` (fire, schedule). Each is atomic, with every key
declared (``_keys.py``) and time from Redis ``TIME``
(never a node's clock, so clock skew between nodes moves no deadline).

Each script is written with ``K.<name>`` for the queue's keys, and built from
the helper sections it needs (:func:`script`): the keys it uses are its declared
fixed keys (``KEYS[1..n]``, in ``_keys.FIXED`` order, listed in ``KEYS_OF``),
its per-task keys follow. A dependency cascade learns which tasks it ends as
it walks, so every key it may touch has to be a fixed one: the outcomes of
tasks ended that way live in fields of ``ended``, not in keys of their own.

Per task, ``meta`` holds JSON: ``priority``, ``seq`` (FIFO), ``attempts``
(counted at claim), ``lost`` (its leases that expired: the first
``_scripts_node.LOST_FREE`` of them are not charged), ``max_retries``,
``ttl`` (the submitting client's ``result_ttl``, s: it, not the node's, sets
how long the outcome is kept), backoff (``bb``, ``bf``, ``bm``: base ms,
factor, max ms), ``name``, ``state``, ``owner`` and ``token`` (fencing) while claimed,
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

#: A completed task's sealed value of up to this many bytes is carried in
#: its ``done`` message (``announce``), not only in ``r:<id>``.
INLINE_MAX = 512

#: Redis time in ms, the ready score, announcing.
CORE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function score(m)
  return -m.priority * 4294967296 + m.seq
end
-- Tell the ``done`` channel that task ``id`` ended: at once, or, in a script
-- that set ``ctx.pub`` and ``ctx.inl`` (FINISH), gathered into one message
-- per batch of outcomes (``flush``): one PUBLISH, and one message for each
-- client to read. ``v``: a completed task's sealed value; up to INLINE_MAX
-- bytes it rides in the message (``<id>:<size>:<bytes>``), so that a client
-- needs no LOOKUP for it. The message: comma-separated ids, or ``~``, the
-- inline entries, then ``|`` and the comma-separated ids without one.
local function announce(ctx, id, v)
  if not ctx.pub then
    redis.call('PUBLISH', ctx.channel, id)
  elseif v and #v <= INLINE_MAX then
    ctx.inl[#ctx.inl + 1] = id .. ':' .. #v .. ':' .. v
  else
    ctx.pub[#ctx.pub + 1] = id
  end
end
local function flush(ctx)
  if not ctx.pub then return end
  local plain = table.concat(ctx.pub, ',')
  if #ctx.inl > 0 then
    if plain ~= '' then plain = '|' .. plain end
    redis.call('PUBLISH', ctx.channel, '~' .. table.concat(ctx.inl) .. plain)
  elseif plain ~= '' then
    redis.call('PUBLISH', ctx.channel, plain)
  end
end
""".replace("INLINE_MAX", str(INLINE_MAX))

#: Putting a task on ``ready``, waking an idle node; putting one on
#: ``delayed``: one that is now the earliest there wakes a node too, since a
#: node blocked on the wake list took its wait from the old earliest (a node
#: whose last claim emptied ``ready`` blocks there while it runs tasks).
READY = """
local function wake()
  redis.call('RPUSH', K.wake, '1')
  redis.call('LTRIM', K.wake, -64, -1)
end
local function make_ready(id, m)
  m.state = 'pending'
  redis.call('ZADD', K.ready, score(m), id)
  wake()
end
local function delay_until(due, id)
  redis.call('ZADD', K.delayed, due, id)
  if redis.call('ZRANGE', K.delayed, 0, 0)[1] == tostring(id) then wake() end
end
"""

#: Queueing a new task: ready or delayed.
ENQUEUE = """
-- Queue one task: meta ``m`` gets its sequence and state; ready now, or
-- delayed by ``delay`` ms.
local function enqueue(id, priority, m, payload, delay, now)
  m.priority = priority
  m.seq = redis.call('INCR', K.seq)
  m.attempts = 0
  m.lost = nil
  m.submitted = now
  redis.call('HSET', K.payload, id, payload)
  if delay > 0 then
    m.state = 'scheduled'
    delay_until(now + delay, id)
  else
    make_ready(id, m)
  end
  redis.call('HSET', K.meta, id, cjson.encode(m))
end
"""

#: Rate limits: a start slot per task.
RATE = """
-- Rate limits (GCRA): one theoretical arrival time (TAT) per key and window,
-- the score of ``<key>#<window>`` in the ``rate`` zset. May task ``m`` (key
-- ``m.lk``, windows ``m.lw`` = {{interval ms, tolerance ms}, ...}) start now?
-- Either way its slot is reserved, so the tasks of a key start in claim
-- order, FIFO, each in its own slot, and a parked task holds the slot it
-- waits for. A TAT at or before now is a full bucket, the same as none: the
-- first admission of a script run drops every such one (ZREMRANGEBYSCORE,
-- amortised O(1) per member ever added), so the zset holds only keys that
-- started within their last interval, however many keys ("tenant:*") come
-- and go.
local rate_swept = false
local function admitted(m, now)
  if m.slot then
    if m.slot <= now then
      m.slot = nil
      return true
    end
    return false
  end
  if not rate_swept then
    redis.call('ZREMRANGEBYSCORE', K.rate, '-inf', now)
    rate_swept = true
  end
  local t, tats = now, {}
  for i, w in ipairs(m.lw) do
    local tat = tonumber(redis.call('ZSCORE', K.rate, m.lk .. '#' .. i) or '0')
    tats[i] = tat
    if tat - w[2] > t then t = tat - w[2] end
  end
  local latest = 0
  for i, w in ipairs(m.lw) do
    local tat = tats[i]
    if tat < t then tat = t end
    redis.call('ZADD', K.rate, tat + w[1], m.lk .. '#' .. i)
    if tat + w[1] > latest then latest = tat + w[1] end
  end
  -- Once every TAT is past, the zset means nothing: it expires then, so a
  -- queue that stops admitting rate-limited tasks is left without it. Pushed
  -- later only (the latest TAT of the whole set is what counts).
  local ttl = redis.call('PTTL', K.rate)
  if ttl < 0 or now + ttl < latest then
    redis.call('PEXPIREAT', K.rate, math.ceil(latest) + 1)
  end
  if t <= now then return true end
  m.slot = t
  return false
end
"""

#: Concurrency caps: counting and parking.
CAPS = """
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
FREE = """
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
PINS = """
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
GRAPH = """
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
    delay_until(m.due, id)
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
                                               name = m.name, finished = ctx.now, ups = m.ups,
                                               priority = m.priority, submitted = m.submitted,
                                               max_retries = m.max_retries}))
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
DORMANT = """
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
UPSTREAMS = """
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

#: A task's end with an outcome of its own: its result hash.
FINAL = """
-- Task ``id`` (meta ``m``) ends ``state`` (completed or cancelled): the
-- result hash ``r`` (its ``r:<id>``, declared by the script's caller) keeps
-- the outcome for the submitting client's ``result_ttl``; its fields and its
-- hold on upstream values go.
local function keep_outcome(id, m, r, state, value, err, ctx)
  -- What get_task_status reports once the meta is gone, as while it lived.
  local f = {'state', state, 'value', value, 'error', err, 'attempts', m.attempts,
             'name', m.name, 'finished', ctx.now, 'priority', m.priority or 0,
             'max_retries', m.max_retries or 0, 'submitted', m.submitted or 0}
  if m.started then f[#f + 1] = 'started'; f[#f + 1] = m.started end
  local node = m.owner or m.node
  if node then f[#f + 1] = 'owner'; f[#f + 1] = node end
  if m.ups then f[#f + 1] = 'ups'; f[#f + 1] = cjson.encode(m.ups) end
  redis.call('HSET', r, unpack(f))
  redis.call('EXPIRE', r, m.ttl or ctx.ttl)
  redis.call('HDEL', K.meta, id)
  redis.call('HDEL', K.payload, id, id .. ':e')
  unpin(m)
end
"""

#: The sections a script needs to end a task: free its key's slot, release
#: or end its dependents, drop the upstream values it held, keep its outcome.
ENDING = (CORE, READY, CAPS, FREE, PINS, GRAPH, FINAL)

_KEY = re.compile(r"\bK\.([a-z_]+)\b")

#: The fixed keys each script declares (``KEYS[1..n]``, in this order; its
#: per-task keys follow): filled by :func:`script`.
KEYS_OF: dict[str, tuple[str, ...]] = {}


def script(name: str, *parts: str) -> str:
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
