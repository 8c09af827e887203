#ifndef EVSERVER_COPENSSL_SHIM_H
#define EVSERVER_COPENSSL_SHIM_H

// libevent's types come from one module: include CEvent's shim (which orders <sys/types.h> first, see there) before
// any OpenSSL or event2 header.
#include "../CEvent/shim.h"

// OpenSSL 3 marks the low-level SHA-256 API deprecated (in favour of EVP, whose context copy allocates); the cookie
// signature uses it as the C reference server does (RedisSessionStore/KeyedHMAC.swift), so its declarations are
// imported without the deprecation. Defined before the first OpenSSL header.
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <event2/bufferevent_ssl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

// What Swift cannot import (macros) as static inline functions.

/// SSL_set_tlsext_host_name: the name sent in SNI.
static inline int evserver_ssl_set_sni(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

/// SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION).
static inline int evserver_ssl_ctx_require_tls12(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}

/// TCP_NODELAY (commands are written whole; Nagle would hold pipelined ones back) and keepalive probes after 15 s
/// idle, every 5 s, 3 of them (a peer that vanished in a failover or a partition is noticed on an idle connection
/// too), as hiredis sets them. Errors are ignored: the connection works without them.
static inline void evserver_tune_redis_socket(int fd) {
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
#ifdef TCP_KEEPIDLE
    int idle = 15, interval = 5, count = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
#endif
}

/// The first byte of a TLS alert record (content type 21): what a TLS server sends a client that spoke plain text.
static const unsigned char evserver_tls_alert_record = 0x15;

#endif
