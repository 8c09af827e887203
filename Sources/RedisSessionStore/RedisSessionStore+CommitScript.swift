import EvServer
import RedisClient

// The session commit: the one script call that writes a request's changes (see `RedisSessionStore.commit`), and
// its arguments. The Lua lives in a file of its own: it is the one algorithm the Redis server runs for us.

extension RedisSessionStore {
    /// ``commitScript``'s arguments: the fast path's expected version and value, the TTL, then for a merge the
    /// cookie and one (op, name, name as JSON, operand) group per change.
    static func commitArguments(_ write: SessionWrite, json: [UInt8], ttl: Int) -> [[UInt8]] {
        let expected = write.base.map { RedisScript.sha1Hex($0.versionBytes) } ?? []
        guard !write.changes.replacesAll else { return [expected, json, decimal(ttl), CommitOp.replace] }
        var arguments: [[UInt8]] = []
        arguments.reserveCapacity(5 + 4 * (write.changes.updates.count + write.changes.increments.count))
        arguments.append(expected)
        arguments.append(json)
        arguments.append(decimal(ttl))
        arguments.append(CommitOp.merge)
        var cookie: [UInt8] = []
        write.cookie.serialize(into: &cookie)
        arguments.append(cookie)
        func append(_ op: [UInt8], _ key: String, _ operand: [UInt8]) {
            var literal: [UInt8] = []
            JSONValue.serializeString(key, into: &literal)
            arguments.append(op)
            arguments.append(Array(key.utf8))
            arguments.append(literal)
            arguments.append(operand)
        }
        for (key, value) in write.changes.updates {
            if let value {
                var operand: [UInt8] = []
                value.serialize(into: &operand)
                append(CommitOp.set, key, operand)
            } else {
                append(CommitOp.remove, key, [])
            }
        }
        for (key, amount) in write.changes.increments { append(CommitOp.add, key, decimal(Int(amount))) }
        return arguments
    }

    fileprivate enum CommitOp {
        static let replace = Array("r".utf8)
        static let merge = Array("m".utf8)
        static let set = Array("s".utf8)
        static let remove = Array("d".utf8)
        static let add = Array("i".utf8)
    }

    /// Writes a request's session. KEYS[1]: the session key. ARGV[1]: SHA-1 hex of the value the request loaded
    /// ('' for a new session); ARGV[2]: the value as the request computed it on that load; ARGV[3]: the TTL in
    /// seconds; ARGV[4]: 'r' (the request replaced every value: ARGV[2] is the whole truth) or 'm' (merge), then for
    /// 'm' ARGV[5]: the cookie as JSON and groups of four: op ('s' set, 'd' remove, 'i' add), the key, the key as a
    /// JSON string, the operand (the value's JSON, '', the integer to add). A stored key is compared by its decoded
    /// name, so another writer's escaping (`\u0041`) still matches.
    ///
    /// - A loaded session that is gone: not written; returns false (nil), so a logout is never undone.
    /// - Stored value unchanged since the load (or 'r'): SET ARGV[2]; returns 1.
    /// - Changed by another request: the changes applied onto the stored value, member by member, without decoding
    ///   what they do not touch (Redis's cjson would rewrite numbers with 14 digits): those members keep their
    ///   exact bytes and order; a new key goes last (array-index keys first, in numeric order, as JavaScript
    ///   orders them); the cookie member is replaced (or put first). SET, and the merged value is returned.
    /// - A stored value that is no JSON object: left alone; returns 0. An 'i' that meets a non-integer or leaves
    ///   ±(2^53 - 1): nothing written; returns {'type' or 'range', the key}.
    ///
    /// One key, so it runs on Redis Cluster as well.
    static let commitScript = RedisScript(#"""
        local current = redis.call('GET', KEYS[1])
        if current == false then
          if ARGV[1] ~= '' then return false end
        elseif ARGV[4] ~= 'r' and redis.sha1hex(current) ~= ARGV[1] then
          local find, sub, byte = string.find, string.sub, string.byte
          local s = current
          local function space(p) return find(s, '[^ \t\n\r]', p) or #s + 1 end
          local function stringEnd(p)
            local i = p + 1
            while true do
              local q = find(s, '["\\]', i)
              if not q then return nil end
              if byte(s, q) == 34 then return q + 1 end
              i = q + 2
            end
          end
          local function isNumber(t)
            local rest = string.match(t, '^-?%d+(.*)$')
            if not rest then return false end
            rest = string.gsub(rest, '^%.%d+', '', 1)
            return rest == '' or find(rest, '^[eE][-+]?%d+$') ~= nil
          end
          local function valueEnd(p)
            local c = byte(s, p)
            if c == 34 then return stringEnd(p) end
            if c == 123 or c == 91 then
              local open, i = {}, p
              repeat
                local q = find(s, '[][{}"]', i)
                if not q then return nil end
                local b = byte(s, q)
                if b == 34 then
                  i = stringEnd(q)
                  if not i then return nil end
                else
                  if b == 123 or b == 91 then open[#open + 1] = b + 2
                  elseif open[#open] == b then open[#open] = nil
                  else return nil end
                  i = q + 1
                end
              until #open == 0
              return i
            end
            local e = find(s, '[,}%] \t\n\r]', p) or #s + 1
            local t = sub(s, p, e - 1)
            if t == 'true' or t == 'false' or t == 'null' or isNumber(t) then return e end
            return nil
          end
          local escapes = {b = '\b', f = '\f', n = '\n', r = '\r', t = '\t'}
          local function utf8(c)
            if c < 128 then return string.char(c) end
            if c < 2048 then return string.char(192 + math.floor(c / 64), 128 + c % 64) end
            if c < 65536 then
              return string.char(224 + math.floor(c / 4096), 128 + math.floor(c / 64) % 64, 128 + c % 64)
            end
            return string.char(240 + math.floor(c / 262144), 128 + math.floor(c / 4096) % 64,
              128 + math.floor(c / 64) % 64, 128 + c % 64)
          end
          local function name(literal)
            local body = sub(literal, 2, -2)
            if not find(body, '\\', 1, true) then return body end
            local out, i = {}, 1
            while i <= #body do
              local b = find(body, '\\', i, true)
              if not b then out[#out + 1] = sub(body, i) break end
              out[#out + 1] = sub(body, i, b - 1)
              local c = sub(body, b + 1, b + 1)
              if c == 'u' then
                local code = tonumber(sub(body, b + 2, b + 5), 16) or 65533
                i = b + 6
                if code >= 55296 and code < 56320 and sub(body, i, i + 1) == '\\u' then
                  local low = tonumber(sub(body, i + 2, i + 5), 16)
                  if low and low >= 56320 and low < 57344 then
                    code = 65536 + (code - 55296) * 1024 + (low - 56320)
                    i = i + 6
                  end
                end
                out[#out + 1] = utf8(code)
              else
                out[#out + 1] = escapes[c] or c
                i = b + 2
              end
            end
            return table.concat(out)
          end
          local members = {}
          local p = space(1)
          if byte(s, p) ~= 123 then return 0 end
          p = space(p + 1)
          if byte(s, p) == 125 then
            p = p + 1
          else
            while true do
              if byte(s, p) ~= 34 then return 0 end
              local keyEnd = stringEnd(p)
              if not keyEnd then return 0 end
              local colon = space(keyEnd)
              if byte(s, colon) ~= 58 then return 0 end
              local from = space(colon + 1)
              local to = valueEnd(from)
              if not to then return 0 end
              local literal = sub(s, p, keyEnd - 1)
              members[#members + 1] = {name(literal), literal, sub(s, from, to - 1)}
              p = space(to)
              local c = byte(s, p)
              if c == 125 then p = p + 1 break end
              if c ~= 44 then return 0 end
              p = space(p + 1)
            end
          end
          if space(p) <= #s then return 0 end
          local function isIndex(key)
            return key == '0' or (find(key, '^[1-9]%d*$') ~= nil and #key <= 10 and tonumber(key) <= 4294967294)
          end
          -- Sets `key` to `value` (nil: removes it): at its first place, other copies dropped (JSON.parse keeps the
          -- last copy's value at the first copy's place); a new key after the others, array indexes first.
          local function put(key, literal, value)
            local at
            for i = #members, 1, -1 do
              if members[i][1] == key then
                if at then table.remove(members, at) end
                at = i
              end
            end
            if at then
              if value then members[at][3] = value else table.remove(members, at) end
              return
            end
            if not value then return end
            local position = #members + 1
            if key == 'cookie' or isIndex(key) then
              position = 1
              while position <= #members and isIndex(members[position][1])
                and (key == 'cookie' or tonumber(members[position][1]) < tonumber(key)) do
                position = position + 1
              end
            end
            table.insert(members, position, {key, literal, value})
          end
          local max = 9007199254740991
          for g = 6, #ARGV, 4 do
            local op, key, literal, operand = ARGV[g], ARGV[g + 1], ARGV[g + 2], ARGV[g + 3]
            if key == 'cookie' then
            elseif op == 's' then put(key, literal, operand)
            elseif op == 'd' then put(key, literal, nil)
            elseif op == 'i' then
              local text
              for i = 1, #members do if members[i][1] == key then text = members[i][3] end end
              local value = 0
              if text and text ~= 'null' then
                local digits = string.match(text, '^-?(%d+)$')
                if not digits then return {'type', key} end
                value = #digits <= 16 and tonumber(text) or max + 1
                if value > max or value < -max then return {'range', key} end
              end
              value = value + tonumber(operand)
              if value > max or value < -max then return {'range', key} end
              put(key, literal, string.format('%.0f', value))
            end
          end
          put('cookie', '"cookie"', ARGV[5])
          local out = {}
          for i = 1, #members do out[i] = members[i][2] .. ':' .. members[i][3] end
          local merged = '{' .. table.concat(out, ',') .. '}'
          redis.call('SET', KEYS[1], merged, 'EX', ARGV[3])
          return merged
        end
        redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
        return 1
        """#)
}
