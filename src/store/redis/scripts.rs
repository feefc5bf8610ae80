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

/// `add(stream, maxlen, last, n, lengths, blob, publishers)`: appends one entry
/// holding `n` events numbered up to `last` (the format: `batch.rs`), trimming whole
/// entries older than the newest `maxlen` cursors (`'0'`: no bound) as it goes.
/// Returns `true`, or `false` and the error reply (Redis refuses an id at or below the
/// stream's last one: a `seq` behind the stream is caught here, see [`APPEND_NEW`]).
macro_rules! lua_add {
    () => {
        r#"
local function add(stream, maxlen, last, n, lengths, blob, publishers)
  local id = string.format('%d', last) .. '-0'
  local fields = {'t', now_ms(), 'n', n, 'l', lengths, 'b', blob}
  if publishers ~= '' then
    fields[9] = 'ps'
    fields[10] = publishers
  end
  local keep = tonumber(maxlen)
  local r
  if keep == 0 or last - keep < 1 then
    r = redis.pcall('XADD', stream, id, unpack(fields))
  else
    local oldest = string.format('%d', last - keep + 1) .. '-0'
    r = redis.pcall('XADD', stream, 'MINID', '~', oldest, id, unpack(fields))
  end
  if type(r) == 'table' and r.err then return false, r end
  return true
end
"#
    };
}

/// KEYS: events, seq, epoch, then the id key of each event whose id is checked or
/// kept (none for ids the server made up). ARGV: joined epoch, MAXLEN (`0`: none),
/// dedupe TTL (s), the events' count, lengths, envelopes and publishers (`batch.rs`),
/// then per id key the event's index in the batch (from 0) and `1` (check and keep
/// the id) or `0` (only keep it: a republished dead letter).
///
/// Returns the first cursor of the stored events, or, when some checked ids are
/// already in the log, writes nothing and returns pairs of (index, cursor it was
/// stored under): the caller takes those events out and calls again. So Lua touches
/// no envelope: one entry is appended whatever the batch's size.
const APPEND_NEW: &str = concat!(
    lua_top!(),
    lua_now!(),
    lua_epoch!(),
    lua_add!(),
    r#"
local stream, seq = KEYS[1], KEYS[2]
local dups = {}
for k = 4, #KEYS do
  if ARGV[7 + 2 * (k - 3)] == '1' then
    local prev = redis.call('GET', KEYS[k])
    if prev then
      dups[#dups + 1] = tonumber(ARGV[6 + 2 * (k - 3)])
      dups[#dups + 1] = tonumber(prev)
    end
  end
end
if #dups > 0 then return dups end
local n = tonumber(ARGV[4])
-- `seq` first: `top` reads the stream's last id with XINFO STREAM, which also copies
-- its first and last entries (whole group commits) into Lua. A `seq` behind the
-- stream makes the XADD fail, and only then is `top` asked.
local first = tonumber(redis.call('GET', seq) or '0') + 1
local ok, err = add(stream, ARGV[2], first + n - 1, ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if not ok then
  first = top(stream, seq) + 1
  ok, err = add(stream, ARGV[2], first + n - 1, ARGV[4], ARGV[5], ARGV[6], ARGV[7])
  if not ok then return err end
end
local last = first + n - 1
for k = 4, #KEYS do
  local c = first + tonumber(ARGV[6 + 2 * (k - 3)])
  redis.call('SET', KEYS[k], string.format('%d', c), 'EX', ARGV[3])
end
redis.call('SET', seq, string.format('%d', last))
return first
"#
);

/// Events that already have cursors (import, tests), in runs of dense cursors, one
/// entry per run. KEYS as [`APPEND_NEW`], one id key per event. ARGV: joined epoch,
/// MAXLEN, dedupe TTL, the number of runs, then per run its last cursor, count,
/// lengths, envelopes and publishers, then per id key its event's cursor. Checks
/// every run before writing any: all or nothing.
const APPEND: &str = concat!(
    lua_top!(),
    lua_now!(),
    lua_epoch!(),
    lua_add!(),
    r#"
local stream, seq = KEYS[1], KEYS[2]
local last = top(stream, seq)
local runs = tonumber(ARGV[4])
for r = 0, runs - 1 do
  local c = tonumber(ARGV[5 + 5 * r])
  local first = c - tonumber(ARGV[6 + 5 * r]) + 1
  if first <= last then
    return redis.error_reply('CURSOR ' .. string.format('%d', first) .. ' is not above ' .. string.format('%d', last))
  end
  last = c
end
for r = 0, runs - 1 do
  local b = 5 + 5 * r
  local ok, err = add(stream, ARGV[2], tonumber(ARGV[b]), ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4])
  if not ok then return err end
end
local ids = 5 + 5 * runs
for k = 4, #KEYS do
  redis.call('SET', KEYS[k], ARGV[ids + k - 4], 'EX', ARGV[3])
end
redis.call('SET', seq, string.format('%d', last))
return 0
"#
);

/// `first(stream)`: the first cursor the log holds (nil when empty): the first
/// entry's id less its other events (an entry of the old format holds one).
macro_rules! lua_first {
    () => {
        r#"
local function first(stream)
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #head == 0 then return nil end
  local id = tonumber(string.match(head[1][1], '^(%d+)'))
  local fields = head[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then return id - tonumber(fields[i + 1]) + 1 end
  end
  return id
end
local function newest(stream)
  local tip = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #tip == 0 then return 0 end
  return tonumber(string.match(tip[1][1], '^(%d+)'))
end
"#
    };
}

/// KEYS: events. ARGV: `count` and how many of the newest cursors to keep, or `below`
/// and the first entry id to keep. Deletes whole entries only: with `count`, the
/// entry holding the oldest cursor kept stays whole. Returns how many events went
/// (entries hold dense cursors, so the first cursor held before and after tells).
const TRIM: &str = concat!(
    lua_first!(),
    r#"
local before = first(KEYS[1])
if not before then return 0 end
local tip = newest(KEYS[1])
local keep_from = tonumber(ARGV[2])
if ARGV[1] == 'count' then keep_from = tip - keep_from + 1 end
if keep_from <= before then return 0 end
redis.call('XTRIM', KEYS[1], 'MINID', '=', string.format('%d', keep_from) .. '-0')
local after = first(KEYS[1]) or (tip + 1)
return after - before
"#
);

/// KEYS: events, letters. Returns {first cursor or 0, last cursor held or 0, dead
/// letters}.
const STATS: &str = concat!(
    lua_first!(),
    r#"
return {first(KEYS[1]) or 0, newest(KEYS[1]), redis.call('XLEN', KEYS[2])}
"#
);

/// KEYS: events. ARGV: `+` or `-` (the newest or the oldest entry) or a stream id
/// (the first entry at or after it). Returns {entry id, stored at} or {}: a probe for
/// retention by age that does not carry the entry's envelopes back.
const PROBE: &str = r#"
local found
if ARGV[1] == '+' then
  found = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
else
  found = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', 1)
end
if #found == 0 then return {} end
local at = '0'
local fields = found[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 't' then at = fields[i + 1] end
end
return {found[1][1], at}
"#;

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
    lua_first!(),
    r#"
return {first(KEYS[1]) or 0, top(KEYS[1], KEYS[2]), redis.call('GET', KEYS[3]) or ''}
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
    pub trim: Script,
    pub stats: Script,
    pub probe: Script,
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
            trim: Script::new(TRIM),
            stats: Script::new(STATS),
            probe: Script::new(PROBE),
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
