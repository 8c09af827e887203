import EvServer
import Synchronization

// The resolver. A lookup may take seconds (a slow or unreachable DNS server,
// a search list tried name by name), so it never runs on an event loop: a thread of its own (not Dispatch's global
// queue, whose few threads a hung lookup would hold while every other lookup queued behind it) runs the system's
// getaddrinfo (RedisSocket.swift holds that C call) (so /etc/hosts, nsswitch and the resolver configuration apply exactly as for any other program) and
// hands the answer back to the loop that asked, with `loop.execute`. Lookups of the same name and port that overlap
// share one getaddrinfo call, so a name that hangs costs one blocked thread, not one per reconnect attempt.
//
// The last good answer for each name is kept and given at once to the next attempt while a new lookup runs
// ("stale while revalidate"): a resolver slower than the connect deadline would otherwise fail every attempt, and
// a resolver that is down for a while does not take Redis down with it. An address that changed (a failover, a
// rescheduled container) is still found: the attempt after the new answer arrives uses it.

/// Why a name did not resolve, as the resolver said it.
struct ResolverError: Error, Sendable, CustomStringConvertible {
    let description: String
}

enum Resolver {
    private struct Key: Hashable {
        let host: String
        let port: Int
    }

    typealias Completion = @Sendable (Result<[SocketAddress], ResolverError>) -> Void

    /// Lookups in progress, with everyone waiting for each.
    private static let waiting = Mutex<[Key: [Completion]]>([:])
    /// The last successful answer for each name and port.
    private static let answers = Mutex<[Key: [SocketAddress]]>([:])

    /// Resolves `host` for TCP port `port`, then calls `completion` on a worker thread (callers hop to their loop):
    /// at once with the last good answer when there is one (a new lookup then runs for the next caller), else when
    /// the lookup ends. Addresses come in the resolver's order, duplicates removed.
    static func resolve(_ host: String, port: Int, completion: @escaping Completion) {
        let key = Key(host: host, port: port)
        let known = answers.withLock { $0[key] }
        let first = waiting.withLock { waiting -> Bool in
            if waiting[key] != nil {
                if known == nil { waiting[key]!.append(completion) }
                return false
            }
            waiting[key] = known == nil ? [completion] : []
            return true
        }
        if let known, !runDetached({ completion(.success(known)) }) {
            completion(.failure(ResolverError(description: "cannot resolve \(host): no thread for the lookup")))
        }
        guard first else { return }
        let started = runDetached {
            let result = lookUp(host, port: port)
            if case .success(let addresses) = result { answers.withLock { $0[key] = addresses } }
            let completions = waiting.withLock { $0.removeValue(forKey: key) ?? [] }
            for completion in completions { completion(result) }
        }
        if !started {
            // Never run getaddrinfo here: the caller may be a loop.
            let completions = waiting.withLock { $0.removeValue(forKey: key) ?? [] }
            let failure = ResolverError(description: "cannot resolve \(host): no thread for the lookup")
            for completion in completions { completion(.failure(failure)) }
        }
    }
}
