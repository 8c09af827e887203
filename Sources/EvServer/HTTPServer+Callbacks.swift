import CEvent
import CoreMetrics
import Logging
import Tracing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Part of the server's evhttp layer (see HTTPServer.swift): the C callbacks and their context pointers.

// MARK: - The C callbacks

// The C callbacks of the HTTP server, and the context pointers they get: evhttp's (a request, a new connection's
// bufferevent, a connection closed, a reply written), each connection's buffers' (bytes read, bytes evhttp wrote on
// its own) and the server's two events (new connections to register, the timeouts sweep). Each one recovers its
// server or connection from the context and calls it. Every context is unretained: the server and its connections
// outlive the callbacks (see where each one is set).

// MARK: - Contexts

extension HTTPServer {
    /// The server as the context of its evhttp's and its events' callbacks (passUnretained: close() frees the evhttp
    /// and the events before the server goes, and deinit checks that it did).
    var context: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }
}

extension ClientConnection {
    /// The connection as the context of its buffers' callbacks and of its reply's completion (passUnretained: the
    /// server keeps the connection until the callbacks are removed or have run).
    @inline(__always)
    var context: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }
}

// MARK: - C callbacks

func onRequest(_ req: UnsafeMutablePointer<evhttp_request>?, _ context: UnsafeMutableRawPointer?) {
    guard let req, let context else { return }
    Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().handle(req)
}

func onResponseWritten(_ req: UnsafeMutablePointer<evhttp_request>?, _ context: UnsafeMutableRawPointer?) {
    guard let context else { return }
    let client = Unmanaged<ClientConnection>.fromOpaque(context).takeUnretainedValue()
    client.server.responseWritten(client)
}

func onConnectionClose(_ connection: OpaquePointer?, _ context: UnsafeMutableRawPointer?) {
    guard let connection, let context else { return }
    Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().connectionClosed(connection)
}

func onNewConnection(_ base: OpaquePointer?, _ context: UnsafeMutableRawPointer?) -> OpaquePointer? {
    guard let base, let context else { return nil }
    return Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().newBufferevent(base)
}

func onInput(_ buffer: OpaquePointer?, _ info: UnsafePointer<evbuffer_cb_info>?,
                     _ context: UnsafeMutableRawPointer?) {
    // Drains (evhttp consuming what it parsed, or our own) need nothing.
    guard let info, info.pointee.n_added > 0, let context else { return }
    let client = Unmanaged<ClientConnection>.fromOpaque(context).takeUnretainedValue()
    client.server.input(client, added: info.pointee.n_added)
}

func onOutput(_ buffer: OpaquePointer?, _ info: UnsafePointer<evbuffer_cb_info>?,
                      _ context: UnsafeMutableRawPointer?) {
    // Drains (the bytes going out to the socket) need nothing.
    guard let info, info.pointee.n_added > 0, let context else { return }
    let client = Unmanaged<ClientConnection>.fromOpaque(context).takeUnretainedValue()
    client.server.evhttpWrote(client, added: info.pointee.n_added)
}

func onRegister(_ fd: Int32, _ what: Int16, _ context: UnsafeMutableRawPointer?) {
    guard let context else { return }
    Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().registerNewConnections()
}

func onSweep(_ fd: Int32, _ what: Int16, _ context: UnsafeMutableRawPointer?) {
    guard let context else { return }
    Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().sweep()
}
