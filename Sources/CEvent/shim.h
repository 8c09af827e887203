#ifndef EVSERVER_CEVENT_SHIM_H
#define EVSERVER_CEVENT_SHIM_H

// <sys/types.h> must come first: event2/event-config.h defines _GNU_SOURCE, and libc headers pulled in after
// that define fd_set differently from the Glibc module Swift already imported ("fd_set ... not present in
// definition" on a clean build).
#include <sys/types.h>

#ifdef __linux__
#include <sys/eventfd.h>  // the loop's cross-thread wake-up
#include <sys/socket.h>
#include <linux/filter.h>

/// Makes the kernel drop every packet that arrives for the listening socket `fd` (new SYNs: the client will retry
/// and, once the socket is closed, be refused) while the connections already in its accept queue stay there to be
/// accepted. Closing a listening socket resets those queued connections, requests and all; a graceful shutdown
/// first stops new ones with this, accepts the queue, then closes. Returns setsockopt's result.
static inline int evserver_drop_new_connections(int fd) {
    static struct sock_filter drop_all[] = { { BPF_RET | BPF_K, 0, 0, 0 } };
    struct sock_fprog program = { 1, drop_all };
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof program);
}
#endif

#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#endif
