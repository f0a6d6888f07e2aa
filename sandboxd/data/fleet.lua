-- The fleet's atomic operations, run by Redis as one script (EVALSHA).
--
-- ARGV[1] is the operation, ARGV[2] the key prefix (with its {hash tag}, so
-- every key of a fleet lives in one Redis Cluster slot); the rest are the
-- operation's arguments.  Key names are built only by key() below and by
-- sandboxd/fleet/keys.py, which must agree.  Job keys are derived inside the
-- script (the queue decides which job comes next), which is why KEYS is
-- unused: this is a single-slot script, not a cross-slot one.
--
-- Times are Redis's own clock (TIME) in milliseconds, so hosts and
-- coordinators with skewed clocks still agree on leases and deadlines.
--
-- Job hash fields: kind (run|submission|compat) lang tag queue spec prio score cost enq deadline
-- state (queued|running|done|failed|cancelled) holder host attempts lease
-- cancel info (the final JobInfo, msgpack) finished notify callback idem (its
-- idempotency key's Redis key) tenant weight (its tenant's name and fair-share
-- weight; absent: the unnamed tenant).  Tenants' hashes (key 'tenants' ...):
-- running (name -> jobs in flight: enqueued, not yet final), jobs and cpu
-- (counters), day:N (CPU seconds of UTC day N; expires after 2 days).  An idempotency key's hash (key 'idem', the
-- client's key): job fp (the request's fingerprint); it lives as long as its
-- job: no TTL while the job is pending, the job's results TTL once final.

local op = ARGV[1]
local P = ARGV[2]

local function key(...)
  return P .. ':' .. table.concat({...}, ':')
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local FINAL = {done = true, failed = true, cancelled = true}
local DAY_MS = 86400000

local function tenant_day(now)
  return key('tenants', 'day', string.format('%d', math.floor(now / DAY_MS)))
end

-- Fair share across tenants (weighted fair queuing, start-time tags).  A
-- queued job of a coordinator of this version ('fair' = 1 in its hash) is in
-- its queue's zset q:Q (as before: depth, old hosts' claims) and in its
-- tenant's zset fq:Q:T (same score; T '' is the unnamed tenant).  vt:Q holds
-- the tenants with jobs in Q, scored by their virtual time (hash
-- tenants:vt, fleet-wide: a tenant's share is of the fleet, not per queue);
-- tq:T is the set of queues where T has jobs (to rescore it in each);
-- vclock is the start tag of the last job served.  A claim takes, across
-- the host's queues, the tenant of least virtual time, then within it the
-- best score (priority, then age); serving a job of cost c advances its
-- tenant by c / weight.  O(log n) per pick, plus one ZADD per queue the
-- tenant has jobs in.  (Tenant names cannot hold ':', so fq:Q:T parses.)
local function vclock()
  return tonumber(redis.call('GET', key('vclock'))) or 0
end

-- Tenant t has a job in queue q: list it there.  A tenant that had none
-- queued anywhere starts at the current virtual time (no credit for idling).
local function activate(q, t)
  local vq = key('vt', q)
  if redis.call('ZSCORE', vq, t) then
    return
  end
  local v = tonumber(redis.call('HGET', key('tenants', 'vt'), t)) or 0
  if redis.call('SCARD', key('tq', t)) == 0 then
    local now = vclock()
    if v < now then
      v = now
      redis.call('HSET', key('tenants', 'vt'), t, tostring(v))
    end
  end
  redis.call('ZADD', vq, v, t)
  redis.call('SADD', key('tq', t), q)
end

-- Tenant t may have no job left in q: unlist it there.
local function deactivate_if_empty(q, t)
  if redis.call('ZCARD', key('fq', q, t)) == 0 then
    redis.call('ZREM', key('vt', q), t)
    redis.call('SREM', key('tq', t), q)
  end
end

-- A job of tenant t (nil: not tracked) leaves queue q's indexes.
local function unqueue(q, id, t)
  redis.call('ZREM', key('q', q), id)
  if t then
    redis.call('ZREM', key('fq', q, t), id)
    deactivate_if_empty(q, t)
  end
end

-- A job of tenant t with virtual start time vt and cost `need` was claimed from q.
local function served(q, t, vt, need, weight)
  local nv = vt + need / weight
  if vt > vclock() then
    redis.call('SET', key('vclock'), tostring(vt))
  end
  redis.call('HSET', key('tenants', 'vt'), t, tostring(nv))
  for _, q2 in ipairs(redis.call('SMEMBERS', key('tq', t))) do
    redis.call('ZADD', key('vt', q2), 'XX', nv, t)
  end
end

-- The tracked tenant of least virtual time in q and its best job:
-- {id, tenant, vt, score}, or nil.  Tenants whose zset emptied are unlisted.
local function fair_head(q)
  local vq = key('vt', q)
  for _ = 1, 64 do
    local top = redis.call('ZRANGE', vq, 0, 0, 'WITHSCORES')
    if not top[1] then
      return nil
    end
    local head = redis.call('ZRANGE', key('fq', q, top[1]), 0, 0, 'WITHSCORES')
    if head[1] then
      return {head[1], top[1], tonumber(top[2]), tonumber(head[2])}
    end
    redis.call('ZREM', vq, top[1])
    redis.call('SREM', key('tq', top[1]), q)
  end
  return nil
end

-- Queue q's candidate for a claim.  Its plain head competes too (as the
-- unnamed flow at the current virtual time) when no tenant zset holds it: a
-- job of an older coordinator, or one re-queued by an older host's reaper.
-- With no tenants configured everything is tenant '' and this is the old
-- order: least score across the host's queues.
local function candidate(q)
  local head = redis.call('ZRANGE', key('q', q), 0, 0, 'WITHSCORES')
  if not head[1] then
    -- Every queued job is in q's zset: an empty one has none to give, whatever
    -- its tenant zsets still list (a leftover, dropped when q next has work).
    -- One call for the many empty queues a host lists.
    return nil
  end
  local c = fair_head(q)
  if c and head[1] == c[1] then
    return c
  end
  local f = redis.call('HMGET', key('job', head[1]), 'fair', 'tenant')
  if f[1] == '1' and redis.call('ZSCORE', key('fq', q, f[2] or ''), head[1]) then
    return c
  end
  local v, score = vclock(), tonumber(head[2])
  if not c or v < c[3] or (v == c[3] and score < c[4]) then
    return {head[1], nil, v, score}
  end
  return c
end

local function before(a, b)
  return b == nil or a[3] < b[3] or (a[3] == b[3] and a[4] < b[4])
end

-- Give a job its one final result: store it, drop it from every index,
-- start its results TTL, tell the coordinators.
local function finalize(id, state, info, ttl, host)
  local jk = key('job', id)
  local g = redis.call('HMGET', jk, 'queue', 'fair', 'tenant')
  local queue = g[1]
  if queue then
    unqueue(queue, id, g[2] == '1' and (g[3] or '') or nil)
  end
  redis.call('ZREM', key('leases'), id)
  redis.call('ZREM', key('deadlines'), id)
  local tenant = redis.call('HGET', jk, 'tenant')
  if tenant and tenant ~= '' then
    -- (whatever made it final: one place under its tenant's concurrency cap freed)
    if redis.call('HINCRBY', key('tenants', 'running'), tenant, -1) <= 0 then
      redis.call('HDEL', key('tenants', 'running'), tenant)
    end
  end
  redis.call('HSET', jk, 'state', state, 'info', info, 'finished', now_ms())
  if redis.call('HGET', jk, 'kind') ~= 'compat' then
    -- The result is what is read from now on: free the memory.  (A Judge0
    -- submission shows its request with its result: a compat job keeps it.)
    redis.call('HDEL', jk, 'spec')
  end
  if host and host ~= '' then
    redis.call('HSET', jk, 'host', host)
  end
  if redis.call('HGET', jk, 'notify') == '1' then
    -- Someone must be told (a Judge0 callback_url), whatever made it final:
    -- coordinators pop the list and deliver, each id to one of them.
    redis.call('RPUSH', key('notify'), id)
  end
  redis.call('EXPIRE', jk, ttl)
  local ik = redis.call('HGET', jk, 'idem')
  if ik then
    redis.call('EXPIRE', ik, ttl)
  end
  redis.call('HINCRBY', key('stats'), state, 1)
  redis.call('PUBLISH', key('events'), id .. '\n' .. info)
end

-- A final JobInfo built here (cancelled, expired, lost): the same msgpack map
-- the Python side encodes (sandboxd.schema.JobInfo).
local function info_error(id, kind, state, code, message)
  -- (a hand-made hash may lack it; a compat job is a submission to native readers)
  kind = (kind == 'submission' or kind == 'compat') and 'submission' or 'run'
  return cmsgpack.pack({job = id, kind = kind, state = state, error = {code = code, message = message}})
end

-- A job hash that cannot be handled (written by hand, or by another
-- version): fail it with the reason, list it in the quarantine, carry on.
local function quarantine_job(id, kind, why, ttl)
  redis.call('ZADD', key('quarantine'), now_ms(), id)
  redis.call('HSET', key('quarantine', 'why'), id, why)
  redis.call('HINCRBY', key('stats'), 'quarantined', 1)
  finalize(id, 'failed', info_error(id, kind, 'failed', 'bad_request',
    'malformed job in Redis, quarantined: ' .. why), ttl, nil)
end

local function wake(queue)
  local w = key('wake', queue)
  redis.call('LPUSH', w, '1')
  redis.call('LTRIM', w, 0, 999)  -- a token per waiting job is plenty; idle hosts also poll
end

local function requeue(id, queue, score)
  redis.call('ZADD', key('q', queue), score, id)
  local f = redis.call('HMGET', key('job', id), 'fair', 'tenant')
  if f[1] == '1' then
    redis.call('ZADD', key('fq', queue, f[2] or ''), score, id)
    activate(queue, f[2] or '')
  end
  wake(queue)
end

-- nil if this session is the host's registered one; else why not: the
-- host's entry expired or was never made ('unregistered': register again),
-- or a newer process registered the same host id ('displaced': stop).
local function check_session(host, session)
  local s = redis.call('HGET', key('host', host), 'session')
  if not s then
    return 'unregistered'
  end
  if s ~= session then
    return 'displaced'
  end
  return nil
end

-- The job an idempotency key started, if it still exists: {'dup', id} for
-- the same request, {'conflict', id} for another; nil if the key is free.
local function keyed(ik, fp)
  local f = redis.call('HMGET', ik, 'job', 'fp')
  if not f[1] or redis.call('EXISTS', key('job', f[1])) == 0 then
    return nil  -- never used, or its job expired or was forgotten
  end
  if f[2] ~= fp then
    return {'conflict', f[1]}
  end
  redis.call('HINCRBY', key('stats'), 'replayed', 1)
  return {'dup', f[1]}
end

-- A tenant's fleet-wide limits at enqueue: its CPU seconds today, its jobs in
-- flight.  nil if within them, else the refusal and the figure.
local function tenant_refusal(tenant, cap, quota, now)
  if quota > 0 then
    local used = tonumber(redis.call('HGET', tenant_day(now), tenant)) or 0
    if used >= quota then
      return {'quota', tostring(used)}
    end
  end
  if cap > 0 then
    local n = tonumber(redis.call('HGET', key('tenants', 'running'), tenant)) or 0
    if n >= cap then
      return {'busy', n}
    end
  end
  return nil
end

-- enqueue id kind lang tag queue spec prio aging epoch cost deadline_ms depth progress notify callback
--   idem fingerprint tenant weight concurrency cpu_quota
-- (tenant '' or absent, as from a coordinator of an older version: the unnamed tenant, no limits here)
-- With an idempotency key, the key is bound to the job in the same script
-- as the enqueue: a client that lost the reply and retries finds the job.
local function enqueue()
  local id, kind, lang, tag, queue, spec = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  local prio, aging, epoch = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
  local cost, deadline, depth = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
  local progress = ARGV[15] or '0'  -- a client wants each test's result as it comes
  local notify = ARGV[16] or '0'  -- the final result is to be delivered (finalize queues it)
  local callback = ARGV[17] or ''  -- a native job's callback_url
  local idem, fp = ARGV[18] or '', ARGV[19] or ''
  local fair = ARGV[20] ~= nil  -- (a coordinator of an older version sends no tenant: its jobs are untracked)
  local tenant, weight = ARGV[20] or '', ARGV[21] or '1'
  local t_cap, t_quota = tonumber(ARGV[22] or '0'), tonumber(ARGV[23] or '0')
  local ik = nil
  if idem ~= '' then
    ik = key('idem', idem)
    local found = keyed(ik, fp)
    if found then
      return found  -- before the depth check: an accepted job is the answer even when the queue is full now
    end
  end
  local jk = key('job', id)
  if redis.call('EXISTS', jk) == 1 then
    return {'exists'}
  end
  local qk = key('q', queue)
  local n = redis.call('ZCARD', qk)
  if n >= depth then
    redis.call('HINCRBY', key('stats'), 'rejected', 1)
    return {'full', n}
  end
  local now = now_ms()
  if tenant ~= '' then
    local refused = tenant_refusal(tenant, t_cap, t_quota, now)
    if refused then
      return refused
    end
  end
  -- Aging as a static score: a job's effective priority prio + aging * waited
  -- orders like aging * enqueued_at - prio, so older jobs climb without any
  -- rescoring, and equal priorities stay FIFO.
  local score = aging * (now - epoch) / 1000 - prio
  redis.call('HSET', jk, 'kind', kind, 'lang', lang, 'tag', tag, 'queue', queue, 'spec', spec,
    'prio', prio, 'score', score, 'cost', cost, 'enq', now, 'state', 'queued', 'attempts', 0, 'progress', progress,
    'notify', notify)
  if callback ~= '' then
    redis.call('HSET', jk, 'callback', callback)
  end
  if tenant ~= '' then
    redis.call('HSET', jk, 'tenant', tenant)
    redis.call('HINCRBY', key('tenants', 'running'), tenant, 1)
    redis.call('HINCRBY', key('tenants', 'jobs'), tenant, 1)
  end
  if fair then
    redis.call('HSET', jk, 'fair', '1', 'weight', weight)
  end
  if ik then
    redis.call('DEL', ik)  -- (a stale binding to an expired job)
    redis.call('HSET', ik, 'job', id, 'fp', fp)
    redis.call('HSET', jk, 'idem', ik)
  end
  if deadline > 0 then
    redis.call('HSET', jk, 'deadline', now + deadline)
    redis.call('ZADD', key('deadlines'), now + deadline, id)
  end
  redis.call('ZADD', qk, score, id)
  if fair then
    redis.call('ZADD', key('fq', queue, tenant), score, id)
    activate(queue, tenant)
  end
  redis.call('SADD', key('queues'), queue)
  redis.call('HINCRBY', key('stats'), 'enqueued', 1)
  wake(queue)
  return {'ok', now}
end

local function quarantine_entry(queue, id, why)
  redis.call('ZREM', key('q', queue), id)
  redis.call('ZADD', key('quarantine'), now_ms(), id)
  redis.call('HSET', key('quarantine', 'why'), id, why)
  redis.call('HINCRBY', key('stats'), 'quarantined', 1)
end

-- claim host session lease_ms max_n ttl nq {queue pool}*nq np {free cap}*np
-- Answers 'ok' then per job: id kind spec attempt deadline_left cost pool progress tenant weight.
-- Pops up to max_n jobs, best (lowest score) first across the host's queues,
-- each only if its cost fits the free boxes of the pool it runs in.
local function claim()
  local host, session, lease, max_n, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
  if redis.call('SISMEMBER', key('drained'), host) == 1 then
    return {'drained'}
  end
  local registered = check_session(host, session)
  if registered then
    return {registered}
  end
  local nq = tonumber(ARGV[8])
  local queues, qpool = {}, {}
  for i = 1, nq do
    queues[i] = ARGV[8 + 2 * i - 1]
    qpool[i] = tonumber(ARGV[8 + 2 * i])
  end
  local base = 8 + 2 * nq
  local np = tonumber(ARGV[base + 1])
  local free, cap = {}, {}
  for i = 1, np do
    free[i] = tonumber(ARGV[base + 2 * i])
    cap[i] = tonumber(ARGV[base + 2 * i + 1])
  end
  local now = now_ms()
  local out = {'ok'}
  local taken = 0
  local guard = 0
  -- A queue found empty stays empty for this claim (it only takes jobs out):
  -- not looked at again (a host lists every queue it could serve, most empty).
  local empty = {}
  while taken < max_n and guard < 1000 do
    guard = guard + 1
    local pick, best_i = nil, nil
    for i = 1, nq do
      if free[qpool[i]] > 0 and not empty[i] then
        local c = candidate(queues[i])
        if not c then
          empty[i] = true
        elseif before(c, pick) then
          pick, best_i = c, i
        end
      end
    end
    if not pick then
      break
    end
    local best, who = pick[1], pick[2]
    local queue, pool = queues[best_i], qpool[best_i]
    local jk = key('job', best)
    local f = redis.call('HMGET', jk, 'state', 'kind', 'spec', 'cost', 'deadline', 'attempts', 'progress', 'tenant',
      'weight')
    local state, kind, spec, cost, deadline = f[1], f[2], f[3], tonumber(f[4]), tonumber(f[5])
    if not state then
      unqueue(queue, best, who)
      quarantine_entry(queue, best, 'queued id has no job hash')
    elseif state ~= 'queued' then
      unqueue(queue, best, who)  -- a leftover of a finished job (or one an older host claimed)
    elseif (kind ~= 'run' and kind ~= 'submission' and kind ~= 'compat') or not spec or not cost then
      unqueue(queue, best, who)
      quarantine_job(best, kind, 'job hash lacks kind, spec or cost', ttl)
    elseif deadline and deadline <= now then
      finalize(best, 'failed', info_error(best, kind, 'failed', 'queue_deadline',
        'the job waited longer than its queue_deadline'), ttl, nil)
    else
      local need = math.min(math.max(cost, 1), cap[pool])
      if need > free[pool] then
        -- The best job of this pool does not fit yet: keep its place (no
        -- overtaking by smaller jobs) and stop taking from this pool.
        free[pool] = 0
      else
        free[pool] = free[pool] - need
        unqueue(queue, best, who)
        if who then
          served(queue, who, pick[3], need, tonumber(f[9]) or 1)
        end
        redis.call('ZREM', key('deadlines'), best)
        local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
        redis.call('HSET', jk, 'state', 'running', 'holder', session, 'host', host, 'lease', now + lease,
          'started', now)
        -- queue_deadline bounds the wait before a job first starts; a job
        -- re-queued because its host died is not given up for that.
        redis.call('HDEL', jk, 'deadline')
        redis.call('ZADD', key('leases'), now + lease, best)
        out[#out + 1] = best
        out[#out + 1] = kind
        out[#out + 1] = spec
        out[#out + 1] = attempts
        out[#out + 1] = deadline and (deadline - now) or -1
        out[#out + 1] = need
        out[#out + 1] = pool
        out[#out + 1] = (f[7] == '1') and 1 or 0
        out[#out + 1] = f[8] or ''
        out[#out + 1] = f[9] or '1'
        taken = taken + 1
      end
    end
  end
  if taken > 0 then
    redis.call('HINCRBY', key('stats'), 'claimed', taken)
  end
  -- Wake-ups follow the work: a queue this host left non-empty wakes one more
  -- host; an empty queue's stale tokens are dropped (no empty claims later).
  for i = 1, nq do
    if not empty[i] and redis.call('ZCARD', key('q', queues[i])) > 0 then
      if taken > 0 or free[qpool[i]] == 0 then
        wake(queues[i])
      end
    else
      redis.call('DEL', key('wake', queues[i]))
    end
  end
  return out
end

-- register host session ttl_s field value ...: a (re)started host takes its
-- id over; a still-running holder of the same id sees 'displaced' and stops.
local function register()
  local host, session, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local hk = key('host', host)
  local prev = redis.call('HGET', hk, 'session')
  redis.call('DEL', hk)
  local now = now_ms()
  redis.call('HSET', hk, 'session', session, 'heartbeat', now, 'joined', now)
  for i = 6, #ARGV, 2 do
    redis.call('HSET', hk, ARGV[i], ARGV[i + 1])
  end
  redis.call('EXPIRE', hk, ttl)
  redis.call('ZADD', key('hosts'), now, host)
  return {prev or '', redis.call('SISMEMBER', key('drained'), host)}
end

-- heartbeat host session lease_ms ttl_s nfields {field value}* id*: renews
-- the leases of the jobs this session still holds and reports the ones to
-- stop: cancelled by a user, or no longer ours (re-queued, finished).
local function heartbeat()
  local host, session, lease, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
  local hk = key('host', host)
  local registered = check_session(host, session)
  if registered then
    return {registered}
  end
  local now = now_ms()
  local nf = tonumber(ARGV[7])
  redis.call('HSET', hk, 'heartbeat', now)
  for i = 1, nf do
    redis.call('HSET', hk, ARGV[6 + 2 * i], ARGV[7 + 2 * i])
  end
  redis.call('EXPIRE', hk, ttl)
  redis.call('ZADD', key('hosts'), now, host)
  local out = {tostring(redis.call('SISMEMBER', key('drained'), host))}
  for i = 8 + 2 * nf, #ARGV do
    local id = ARGV[i]
    local jk = key('job', id)
    local f = redis.call('HMGET', jk, 'state', 'holder', 'cancel')
    if f[1] == 'running' and f[2] == session then
      redis.call('HSET', jk, 'lease', now + lease)
      redis.call('ZADD', key('leases'), now + lease, id)
      if f[3] == '1' then
        out[#out + 1] = 'cancel:' .. id
      end
    else
      out[#out + 1] = 'lost:' .. id
    end
  end
  return out
end

-- Charge CPU seconds to a tenant: today's (its daily quota) and the counter.
local function charge_tenant(tenant, cpu)
  if not tenant or tenant == '' or not cpu or cpu <= 0 then
    return
  end
  local dk = tenant_day(now_ms())
  redis.call('HINCRBYFLOAT', dk, tenant, cpu)
  redis.call('EXPIRE', dk, 2 * DAY_MS / 1000)  -- (yesterday's stays readable past midnight)
  redis.call('HINCRBYFLOAT', key('tenants', 'cpu'), tenant, cpu)
end

-- A job's CPU seconds to its tenant.
local function charge(jk, cpu)
  charge_tenant(redis.call('HGET', jk, 'tenant'), cpu)
end

-- bill tenant cpu_seconds: a live session's CPU (sessions are not fleet jobs:
-- the host that ran one, proxied by a coordinator, reports it when it ends).
local function bill()
  charge_tenant(ARGV[3], tonumber(ARGV[4] or '0'))
  return 'ok'
end

-- complete id session attempt info state ttl host cpu_seconds: the first
-- finished run of a job is its result (and its CPU seconds are charged to
-- its tenant); a late one from a host that lost the lease is refused.  (A
-- host of an older version sends no cpu_seconds: its jobs are not charged.)
local function complete()
  local id, session, attempt, info, state, ttl, host = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7],
    ARGV[8], ARGV[9]
  local cpu = tonumber(ARGV[10] or '0')
  local jk = key('job', id)
  local f = redis.call('HMGET', jk, 'state', 'attempts', 'holder')
  if not f[1] then
    return 'gone'
  end
  if FINAL[f[1]] then
    redis.call('HINCRBY', key('stats'), 'duplicates', 1)
    return 'duplicate'
  end
  if attempt > (tonumber(f[2]) or 0) then
    return 'unknown'
  end
  charge(jk, cpu)
  finalize(id, state, info, ttl, host)
  return 'ok'
end

-- quarantine id info ttl why: a job a host could not decode.
local function quarantine()
  local id, info, ttl, why = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local jk = key('job', id)
  local state = redis.call('HGET', jk, 'state')
  if not state or FINAL[state] then
    return 'gone'
  end
  redis.call('ZADD', key('quarantine'), now_ms(), id)
  redis.call('HSET', key('quarantine', 'why'), id, why)
  redis.call('HINCRBY', key('stats'), 'quarantined', 1)
  finalize(id, 'failed', info, ttl, nil)
  return 'ok'
end

-- cancel id ttl: a queued job is cancelled at once; a running one is flagged
-- and its host stops it at its next heartbeat (or the lease reaper does).
local function cancel()
  local id, ttl = ARGV[3], ARGV[4]
  local jk = key('job', id)
  local f = redis.call('HMGET', jk, 'state', 'kind')
  if not f[1] then
    return 'missing'
  end
  if f[1] == 'queued' then
    finalize(id, 'cancelled', info_error(id, f[2], 'cancelled', 'cancelled', 'cancelled'), ttl, nil)
    return 'cancelled'
  end
  if f[1] == 'running' then
    redis.call('HSET', jk, 'cancel', '1')
  end
  return f[1]
end

-- release id session: hand a running job back to the queue (its host is
-- leaving); it keeps its place and this attempt does not count.
local function release()
  local id, session = ARGV[3], ARGV[4]
  local jk = key('job', id)
  local f = redis.call('HMGET', jk, 'state', 'holder', 'queue', 'score', 'cancel', 'kind')
  if f[1] ~= 'running' or f[2] ~= session then
    return 'not-held'
  end
  redis.call('ZREM', key('leases'), id)
  if f[5] == '1' then
    finalize(id, 'cancelled', info_error(id, f[6], 'cancelled', 'cancelled', 'cancelled'), ARGV[5], nil)
    return 'cancelled'
  end
  if not f[3] or not tonumber(f[4]) then
    quarantine_job(id, f[6], 'running job lacks queue or score', ARGV[5])
    return 'quarantined'
  end
  redis.call('HINCRBY', jk, 'attempts', -1)
  redis.call('HSET', jk, 'state', 'queued', 'holder', '')
  redis.call('HINCRBY', key('stats'), 'released', 1)
  requeue(id, f[3], tonumber(f[4]))
  return 'ok'
end

-- reap max_attempts ttl limit: re-queue jobs whose host stopped renewing its
-- lease (died, hung, partitioned), fail queued jobs past their deadline.
local function reap()
  local max_attempts, ttl, limit, lease = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
  local now = now_ms()
  local requeued, lost, expired = 0, 0, 0
  -- Someone reaps every second or so.  A long gap means nobody could reach
  -- Redis (it was down, or everyone was cut off): the hosts could not renew
  -- their leases either, so give them one lease to come back before
  -- declaring their jobs lost.
  local last = tonumber(redis.call('GETSET', key('reaped'), now))
  if last and now - last > math.max(3000, lease / 2) then
    redis.call('SET', key('grace'), now + lease, 'PX', lease)
  end
  local grace = redis.call('EXISTS', key('grace')) == 1
  local leases = grace and {} or redis.call('ZRANGEBYSCORE', key('leases'), '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(leases) do
    local jk = key('job', id)
    local f = redis.call('HMGET', jk, 'state', 'queue', 'score', 'attempts', 'cancel', 'kind', 'host')
    if f[1] ~= 'running' then
      redis.call('ZREM', key('leases'), id)
    elseif not f[2] or not tonumber(f[3]) or not tonumber(f[4]) then
      quarantine_job(id, f[6], 'running job lacks queue, score or attempts', ttl)
    elseif f[5] == '1' then
      finalize(id, 'cancelled', info_error(id, f[6], 'cancelled', 'cancelled', 'cancelled'), ttl, nil)
    elseif tonumber(f[4]) >= max_attempts then
      finalize(id, 'failed', info_error(id, f[6], 'failed', 'internal',
        'lost ' .. f[4] .. ' hosts while running this job (last: ' .. (f[7] or '?') .. '); not retried'), ttl, nil)
      lost = lost + 1
    else
      redis.call('ZREM', key('leases'), id)
      redis.call('HSET', jk, 'state', 'queued', 'holder', '')
      redis.call('HINCRBY', key('stats'), 'requeued', 1)
      requeue(id, f[2], tonumber(f[3]))
      requeued = requeued + 1
    end
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', key('deadlines'), '-inf', now, 'LIMIT', 0, limit)) do
    local f = redis.call('HMGET', key('job', id), 'state', 'kind')
    if f[1] == 'queued' then
      finalize(id, 'failed', info_error(id, f[2], 'failed', 'queue_deadline',
        'the job waited longer than its queue_deadline'), ttl, nil)
      expired = expired + 1
    else
      redis.call('ZREM', key('deadlines'), id)
    end
  end
  -- Hosts whose hash expired (no heartbeat for its TTL) leave the index.
  for _, h in ipairs(redis.call('ZRANGE', key('hosts'), 0, -1)) do
    if redis.call('EXISTS', key('host', h)) == 0 then
      redis.call('ZREM', key('hosts'), h)
    end
  end
  return {requeued, lost, expired}
end

-- forget id: drop a final job's record now (Judge0's DELETE) instead of at its TTL.
local function forget()
  local jk = key('job', ARGV[3])
  local state = redis.call('HGET', jk, 'state')
  if not state then
    return 'missing'
  end
  if not FINAL[state] then
    return 'pending'
  end
  local ik = redis.call('HGET', jk, 'idem')
  if ik then
    redis.call('DEL', ik)
  end
  redis.call('DEL', jk)
  return 'ok'
end

-- leave host session: a host that stops cleanly leaves the index at once.
local function leave()
  local host, session = ARGV[3], ARGV[4]
  if redis.call('HGET', key('host', host), 'session') == session then
    redis.call('DEL', key('host', host))
    redis.call('ZREM', key('hosts'), host)
    return 'ok'
  end
  return 'displaced'
end

local ops = {
  enqueue = enqueue, claim = claim, register = register, heartbeat = heartbeat, complete = complete,
  quarantine = quarantine, cancel = cancel, release = release, reap = reap, leave = leave, forget = forget,
  bill = bill,
}
local f = ops[op]
if not f then
  return redis.error_reply('sandboxd fleet script: unknown op ' .. tostring(op))
end
return f()
