import Synchronization

/// Counters kept by a ``SessionMiddleware`` (`middleware.metrics`), safe to read from any thread.
///
/// Counts are relaxed atomics: each is exact, but two read one after the other are not a consistent snapshot.
public final class SessionMetrics: Sendable {
    private let createdCount = Atomic<Int>(0)
    private let savedCount = Atomic<Int>(0)
    private let touchedCount = Atomic<Int>(0)
    private let destroyedCount = Atomic<Int>(0)
    private let storeErrorCount = Atomic<Int>(0)
    private let secureCookieWithheldCount = Atomic<Int>(0)
    private let hitCount = Atomic<Int>(0)
    private let missCount = Atomic<Int>(0)

    public init() {}

    /// New sessions written to the store for the first time (including regenerated ones).
    public var created: Int { createdCount.load(ordering: .relaxed) }
    /// Sessions written to the store (`set`), new or not.
    public var saved: Int { savedCount.load(ordering: .relaxed) }
    /// Expiry refreshes sent to the store (`touch`).
    public var touched: Int { touchedCount.load(ordering: .relaxed) }
    /// Sessions removed from the store (`destroy`, `regenerate`, `unset: .destroy`).
    public var destroyed: Int { destroyedCount.load(ordering: .relaxed) }
    /// Store calls that failed.
    public var storeErrors: Int { storeErrorCount.load(ordering: .relaxed) }
    /// `Secure` cookies not sent because the request was plain HTTP (express's "not secured").
    public var secureCookieWithheld: Int { secureCookieWithheldCount.load(ordering: .relaxed) }
    /// Loads of a signed cookie's session that found it in the store.
    public var hits: Int { hitCount.load(ordering: .relaxed) }
    /// Loads of a signed cookie's session that did not find it (expired, destroyed, or never stored): a new session.
    public var misses: Int { missCount.load(ordering: .relaxed) }

    func recordCreated() { createdCount.add(1, ordering: .relaxed) }
    func recordSaved() { savedCount.add(1, ordering: .relaxed) }
    func recordTouched() { touchedCount.add(1, ordering: .relaxed) }
    func recordDestroyed() { destroyedCount.add(1, ordering: .relaxed) }
    func recordLoad(found: Bool) {
        if found { hitCount.add(1, ordering: .relaxed) } else { missCount.add(1, ordering: .relaxed) }
    }
    @discardableResult
    func recordStoreError() -> Int { storeErrorCount.add(1, ordering: .relaxed).newValue }
    /// - Returns: the new count.
    @discardableResult
    func recordSecureCookieWithheld() -> Int { secureCookieWithheldCount.add(1, ordering: .relaxed).newValue }
}
