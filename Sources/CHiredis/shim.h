#ifndef EVSERVER_CHIREDIS_SHIM_H
#define EVSERVER_CHIREDIS_SHIM_H

// libevent's types come from one module: include CEvent's shim (which orders <sys/types.h> first) rather than
// event2 headers directly.
#include "../CEvent/shim.h"

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#endif
