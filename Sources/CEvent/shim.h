#ifndef EVSERVER_CEVENT_SHIM_H
#define EVSERVER_CEVENT_SHIM_H

// <sys/types.h> must come first: event2/event-config.h defines _GNU_SOURCE, and libc headers pulled in after
// that define fd_set differently from the Glibc module Swift already imported ("fd_set ... not present in
// definition" on a clean build).
#include <sys/types.h>

#ifdef __linux__
#include <sys/eventfd.h>  // the loop's cross-thread wake-up
#endif

#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#endif
