"""The scripts of schedules: fire a due tick once across all nodes, and
add, pause, resume or cancel a schedule. Written as ``_scripts.py`` says: every key
declared, time from Redis ``TIME``.
"""

from __future__ import annotations

from ._scripts import CORE, ENQUEUE, GRAPH, PINS, READY, script

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
FIRE = script(
    "FIRE",
    CORE,
    READY,
    ENQUEUE,
    PINS,
    GRAPH,
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
