/// A one-shot timer on an ``EventLoop``. Use it on the loop thread only (checked).
public final class ScheduledTimer {
    private var event: TimerEvent?
    private var work: (() -> Void)?
    private unowned let loop: EventLoop

    init(loop: EventLoop, work: @escaping () -> Void) {
        self.loop = loop
        self.work = work
    }

    func arm(base: EventBase, delay: Duration) {
        event = TimerEvent(base: base, delay: delay, firing: self)
    }

    /// Whether the timer has neither fired nor been cancelled. Must be called on the loop thread.
    public var isPending: Bool {
        loop.preconditionInLoop()
        return work != nil
    }

    /// Cancels the timer if it has not fired. Must be called on the loop thread.
    public func cancel() {
        loop.preconditionInLoop()
        guard work != nil, event != nil else { return }
        finish()
    }

    /// Runs the work. Called by the timer's event.
    func fire() {
        loop.preconditionInLoop()
        let work = self.work
        finish()
        work?()
    }

    private func finish() {
        work = nil
        let event = self.event
        self.event = nil
        event?.free(firing: self)   // drops the pending event's +1 on self
    }
}
