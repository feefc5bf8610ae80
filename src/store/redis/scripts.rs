//! The Lua scripts: every write that must be atomic is one script call, sent as
//! `EVALSHA` (and loaded on `NOSCRIPT` by `redis::Script`).
//!
//! Every key a script touches is passed in `KEYS` and shares one hash tag, so the
//! scripts run on a Redis Cluster too. Numbers cross as decimal text: Lua numbers
//! are doubles, and `string.format('%d')` keeps a cursor from printing as `1e+15`.
//!
//! Owns: the script texts. Must not: build keys or arguments (their callers do).

use redis::Script;

/// `top(stream, seq)`: the highest cursor ever assigned, the larger of `seq` and the
/// stream's last generated id. The second is a fence: if `seq` was lost (a failover,
/// a hand edit) while the stream was not, numbering still continues above the stream.
macro_rules! lua_top {
    () => {
        r#"
local function top(stream, seq)
  local n = tonumber(redis.call('GET', seq) or '0')
  if redis.call('EXISTS', stream) == 1 then
    local info = redis.call('XINFO', 'STREAM', stream)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        local g = tonumber(string.match(info[i + 1], '^(%d+)'))
        if g > n then n = g end
      end
    end
  end
  return n
end
"#
    };
}

/// `now_ms()`: Redis's clock in unix ms, as text. Every node stamps entries with the
/// one clock, so retention by age does not depend on the nodes' clocks agreeing.
macro_rules! lua_now {
    () => {
        r#"
local function now_ms()
  local t = redis.call('TIME')
  return string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
"#
    };
}

/// Refuses to write into a log other than the one the node joined.
macro_rules! lua_epoch {
    () => {
        r#"
local epoch = redis.call('GET', KEYS[3])
if epoch ~= ARGV[1] then return redis.error_reply('EPOCH ' .. (epoch or '')) end
"#
    };
}

/// KEYS: events, seq, epoch, then one id key per event (in its publisher's scope).
/// ARGV: joined epoch, MAXLEN (`0`: none), dedupe TTL (s), then per event its
/// duplicate handling (`1`: check and remember its id, `0`: only remember it, `2`:
/// neither), its envelope up to `"cursor":`, and its publisher (field `p`; empty for
/// `anonymous`, whose entries have no `p`, as before publishers were recorded).
/// Returns per event its new cursor, or minus the cursor it was already stored under.
const APPEND_NEW: &str = concat!(
    lua_top!(),
    lua_now!(),
    lua_epoch!(),
    r#"
local stream, seq = KEYS[1], KEYS[2]
local n = top(stream, seq)
local at = now_ms()
local out = {}
for i = 1, (#ARGV - 3) / 3 do
  local idkey = KEYS[3 + i]
  local dedupe = ARGV[1 + 3 * i]
  local prev = false
  if dedupe == '1' then prev = redis.call('GET', idkey) end
  if prev then
    out[i] = -tonumber(prev)
  else
    n = n + 1
    local c = string.format('%d', n)
    local fields = {'e', ARGV[2 + 3 * i] .. c .. '}', 't', at}
    if ARGV[3 + 3 * i] ~= '' then
      fields[5] = 'p'
      fields[6] = ARGV[3 + 3 * i]
    end
    if ARGV[2] == '0' then
      redis.call('XADD', stream, c .. '-0', unpack(fields))
    else
      redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], c .. '-0', unpack(fields))
    end
    if dedupe ~= '2' then redis.call('SET', idkey, c, 'EX', ARGV[3]) end
    out[i] = n
  end
end
redis.call('SET', seq, string.format('%d', n))
return out
"#
);

/// Events that already have cursors (import, tests). KEYS as [`APPEND_NEW`]; ARGV:
/// joined epoch, MAXLEN, dedupe TTL, then per event its cursor, full envelope and
/// publisher (as in [`APPEND_NEW`]). Checks every cursor before writing any: all or
/// nothing.
const APPEND: &str = concat!(
    lua_top!(),
    lua_now!(),
    lua_epoch!(),
    r#"
local stream, seq = KEYS[1], KEYS[2]
local last = top(stream, seq)
for i = 1, (#ARGV - 3) / 3 do
  local c = tonumber(ARGV[1 + 3 * i])
  if c <= last then
    return redis.error_reply('CURSOR ' .. ARGV[1 + 3 * i] .. ' is not above ' .. string.format('%d', last))
  end
  last = c
end
local at = now_ms()
for i = 1, (#ARGV - 3) / 3 do
  local c = ARGV[1 + 3 * i]
  local fields = {'e', ARGV[2 + 3 * i], 't', at}
  if ARGV[3 + 3 * i] ~= '' then
    fields[5] = 'p'
    fields[6] = ARGV[3 + 3 * i]
  end
  if ARGV[2] == '0' then
    redis.call('XADD', stream, c .. '-0', unpack(fields))
  else
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], c .. '-0', unpack(fields))
  end
  redis.call('SET', KEYS[3 + i], c, 'EX', ARGV[3])
end
redis.call('SET', seq, string.format('%d', last))
return 0
"#
);

/// KEYS: events, seq. Returns the highest cursor ever assigned.
const LAST_CURSOR: &str = concat!(lua_top!(), "return top(KEYS[1], KEYS[2])\n");

/// KEYS: events, seq. ARGV: a cursor some node has read. Numbering goes on above it
/// even if the log lost it (a failover that dropped its newest events): a cursor a
/// client may hold is never handed out again; an import raises it the same way to the
/// high-water mark of the log it copies. Returns the highest cursor now.
const FENCE: &str = concat!(
    lua_top!(),
    r#"
local n = top(KEYS[1], KEYS[2])
local seen = tonumber(ARGV[1])
if seen > n then
  redis.call('SET', KEYS[2], ARGV[1])
  n = seen
end
return n
"#
);

/// KEYS: events, seq, epoch. Returns {first cursor or 0, last cursor, epoch or ''}.
const HEAD: &str = concat!(
    lua_top!(),
    r#"
local first = 0
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head > 0 then first = tonumber(string.match(head[1][1], '^(%d+)')) end
return {first, top(KEYS[1], KEYS[2]), redis.call('GET', KEYS[3]) or ''}
"#
);

/// KEYS: letters, letters seq, owners. ARGV: envelope, subscription, connection,
/// reason, attempts, principal. Returns {id, dead_at (unix ms)}.
const ADD_DEAD_LETTER: &str = concat!(
    lua_now!(),
    r#"
local id = string.format('%d', redis.call('INCR', KEYS[2]))
local at = now_ms()
redis.call('XADD', KEYS[1], id .. '-0', 'event', ARGV[1], 'sub', ARGV[2], 'conn', ARGV[3],
  'reason', ARGV[4], 'attempts', ARGV[5], 'dead_at', at, 'principal', ARGV[6])
redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
return {tonumber(id), tonumber(at)}
"#
);

/// A dead letter entry's principal (`''` for entries from before the field).
macro_rules! lua_owner {
    () => {
        r#"
local function owner(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'principal' then return fields[i + 1] end
  end
  return ''
end
local function disown(key, p)
  if redis.call('HINCRBY', key, p, -1) <= 0 then redis.call('HDEL', key, p) end
end
"#
    };
}

/// KEYS: letters, owners. ARGV: stream id. Returns the entry (XRANGE shape) and
/// deletes it.
const TAKE_DEAD_LETTER: &str = concat!(
    lua_owner!(),
    r#"
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found > 0 then
  redis.call('XDEL', KEYS[1], ARGV[1])
  disown(KEYS[2], owner(found[1][2]))
end
return found
"#
);

/// KEYS: letters, owners. ARGV: pairs of principal, how many of its oldest to delete,
/// then (last) the most entries to look at. Returns how many went.
const EVICT_DEAD_LETTERS: &str = concat!(
    lua_owner!(),
    r#"
local want, left = {}, 0
for i = 1, #ARGV - 1, 2 do
  want[ARGV[i]] = tonumber(ARGV[i + 1])
  left = left + tonumber(ARGV[i + 1])
end
local budget = tonumber(ARGV[#ARGV])
local start, removed = '-', 0
while left > 0 and budget > 0 do
  local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 512)
  if #page == 0 then break end
  for _, e in ipairs(page) do
    local p = owner(e[2])
    if (want[p] or 0) > 0 then
      redis.call('XDEL', KEYS[1], e[1])
      disown(KEYS[2], p)
      want[p] = want[p] - 1
      left = left - 1
      removed = removed + 1
    end
    start = '(' .. e[1]
  end
  budget = budget - #page
end
return removed
"#
);

/// KEYS: state, acked. ARGV: floor if new. Returns {floor, {acked cursors}}.
const DURABLE_OPEN: &str = r#"
redis.call('HSETNX', KEYS[1], 'floor', ARGV[1])
return {redis.call('HGET', KEYS[1], 'floor'), redis.call('ZRANGE', KEYS[2], 0, -1)}
"#;

/// KEYS: state, acked. ARGV: cursors. Only for an existing durable, only above its floor.
const DURABLE_ACK: &str = r#"
local floor = redis.call('HGET', KEYS[1], 'floor')
if not floor then return 0 end
floor = tonumber(floor)
for i = 1, #ARGV do
  if tonumber(ARGV[i]) > floor then redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i]) end
end
return 0
"#;

/// KEYS: state, acked. ARGV: floor. Only up; forgets acked cursors at or below it.
const DURABLE_SET_FLOOR: &str = r#"
local floor = redis.call('HGET', KEYS[1], 'floor')
if not floor then return 0 end
if tonumber(ARGV[1]) > tonumber(floor) then
  redis.call('HSET', KEYS[1], 'floor', ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
end
return 0
"#;

/// KEYS: lease. ARGV: owner, TTL (ms). 1 if `owner` holds the lease now.
const CLAIM: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"#;

/// KEYS: lease. ARGV: owner. Deletes the lease only if `owner` holds it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"#;

/// The scripts, hashed once per store.
pub(super) struct Scripts {
    pub append_new: Script,
    pub append: Script,
    pub last_cursor: Script,
    pub head: Script,
    pub fence: Script,
    pub add_dead_letter: Script,
    pub take_dead_letter: Script,
    pub evict_dead_letters: Script,
    pub durable_open: Script,
    pub durable_ack: Script,
    pub durable_set_floor: Script,
    pub claim: Script,
    pub release: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            append_new: Script::new(APPEND_NEW),
            append: Script::new(APPEND),
            last_cursor: Script::new(LAST_CURSOR),
            head: Script::new(HEAD),
            fence: Script::new(FENCE),
            add_dead_letter: Script::new(ADD_DEAD_LETTER),
            take_dead_letter: Script::new(TAKE_DEAD_LETTER),
            evict_dead_letters: Script::new(EVICT_DEAD_LETTERS),
            durable_open: Script::new(DURABLE_OPEN),
            durable_ack: Script::new(DURABLE_ACK),
            durable_set_floor: Script::new(DURABLE_SET_FLOOR),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
        }
    }
}
