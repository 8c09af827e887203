import CEvent

// A request's way in: evhttp hands the server a parsed request (`handle`), which keeps the evhttp request until the
// reply (with its connection, or in `unheldRequests`), copies it out of C memory into a `Request`, and gives it to a
// worker task that prefers the loop (RequestWorkers.swift). The worker runs the application and hands the `Response`
// to `reply` (HTTPServer+Replies.swift).

extension HTTPServer {
    func handle(_ req: RequestPointer) {
        loop.preconditionInLoop()
        let id = nextID
        nextID = nextID == .max ? 1 : nextID + 1
        let connection = evhttp_request_get_connection(req)
        var client: ClientConnection?
        if let connection {
            if let last = lastScanned, last.connection == connection {
                client = last
            } else {
                client = connections[connection]
            }
            if client == nil && !unregistered.isEmpty {
                registerNewConnections()
                client = connections[connection]
            }
        }
        inFlightCount += 1
        if let client, client.current == nil {
            client.current = (id, req)
        } else {
            unheldRequests[id] = req
        }
        client?.inFlight += 1
        let head = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD
        let job = RequestJob(request: makeRequest(req, connection: connection, client: client), id: id,
                             client: client, head: head)
        workers.run(job) { job in
            Task(executorPreference: loop) { [self] in await work(startingWith: job) }
        }
    }

    /// A worker's life: the request it was started for, then each one the server hands it while it waits, until
    /// the workers close (see RequestWorkers.swift).
    @inline(__always)   // into the worker task's closure: one async function entered fewer per request
    private func work(startingWith first: RequestJob) async {
        var job = first
        while true {
            let response = await pipeline.respond(to: job.request)
            // Nonisolated code of a task that prefers the loop runs on the loop, so this is the common path.
            if loop.inLoop {
                reply(to: job, response)
            } else {
                let box = ResponseBox(job: job, response: response)
                loop.execute { [self] in reply(to: box.job, box.response) }
            }
            guard let next = await workers.next() else { return }
            job = next
        }
    }

    private func makeRequest(_ req: RequestPointer, connection: OpaquePointer?, client: ClientConnection?)
        -> sending Request
    {
        let method: HTTPMethod = switch evhttp_request_get_command(req) {
        case EVHTTP_REQ_GET: .get
        case EVHTTP_REQ_POST: .post
        case EVHTTP_REQ_HEAD: .head
        case EVHTTP_REQ_PUT: .put
        case EVHTTP_REQ_DELETE: .delete
        case EVHTTP_REQ_OPTIONS: .options
        case EVHTTP_REQ_PATCH: .patch
        case EVHTTP_REQ_TRACE: HTTPMethod(rawValue: "TRACE")
        case EVHTTP_REQ_CONNECT: HTTPMethod(rawValue: "CONNECT")
        default: HTTPMethod(rawValue: "UNKNOWN")
        }
        // String(cString:) repairs invalid UTF-8, so no byte sequence a client sends can trap here.
        let uri = evhttp_request_get_uri(req).map { String(cString: $0) } ?? "/"
        var fields: [(name: String, value: String)] = []
        fields.reserveCapacity(8)   // one allocation for a typical request's headers
        if let headers = evhttp_request_get_input_headers(req) {
            var item = headers.pointee.tqh_first
            while let field = item {
                if let key = field.pointee.key, let value = field.pointee.value {
                    fields.append((name: String(cString: key), value: String(cString: value)))
                }
                item = field.pointee.next.tqe_next
            }
        }
        var body: [UInt8] = []
        if let input = evhttp_request_get_input_buffer(req) {
            let length = evbuffer_get_length(input)
            if length > 0 {
                body = [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
                    count = max(0, evbuffer_copyout(input, buffer.baseAddress, length))
                }
            }
        }
        // The peer of a connection does not change: read it once per connection, not once per request.
        var remoteAddress = client?.remoteAddress ?? ""
        if client?.remoteAddress == nil, let connection {
            var host: UnsafeMutablePointer<CChar>?
            var port: UInt16 = 0
            evhttp_connection_get_peer(connection, &host, &port)
            if let host { remoteAddress = String(cString: host) }
            client?.remoteAddress = remoteAddress
        }
        return Request(method: method, uri: uri, headers: HTTPHeaders(fields: fields), body: body,
                       remoteAddress: remoteAddress, loop: loop)
    }
}

/// One request on its way to a worker: the request, its id, its connection (which keeps the evhttp request until
/// the reply, see `HTTPServer.unheldRequests`), and whether it is a HEAD request.
struct RequestJob {
    let request: Request
    let id: UInt
    let client: ClientConnection?
    let head: Bool
}

/// Carries a finished response to the loop thread in the (unexpected) case the task ended elsewhere.
private struct ResponseBox: @unchecked Sendable {
    // @unchecked Sendable: the task that built the response hands it and its job over and never touches them again.
    let job: RequestJob
    let response: Response
}
