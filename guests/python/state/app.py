"""A hostile Python function for the isolation test (issue 17; T05, T16).

`GET /state/stain?seed=N` leaves the seed everywhere a Python program can keep
state between calls if its instance (or its memory) were reused: a module
global, a module-level list and dict, a class attribute, `builtins`,
`sys.modules` (a new module), `os.environ`, a memoising cache, an interned
string, a 4 MiB buffer on the heap, and a file in /tmp (the deny-all WASI
filesystem refuses it: reported as "file refused").

`GET /state/selfcheck?seed=N` stains and then peeks in the same call, to
show that `peek` finds every stain. `GET /state/peek?seed=N` looks for the seed in each of those places, and in
every live object the garbage collector knows (`gc.get_objects()`), and
answers one line: `calls 1 global - list 0 ... heap 0 file -` (`heap`
counts the containers the garbage collector tracks that still hold the
marker). Raw linear memory is checked by the Rust guest of
crates/cli/tests/isolation.rs; this one checks what Python itself keeps. A fresh
instance always answers with nothing found and `calls 1`; any other value
means state survived from an earlier call.

Built by guests/python/build.sh with componentize-py (the pinned version of
examples/hello/build.sh), which snapshots this module after import: the
module-level values below are the initial image every call starts from.
"""

import builtins
import functools
import gc
import os
import sys
import types

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

CALLS = 0
SECRET = None
HISTORY = []
REGISTRY = {}
HEAP = []


class Holder:
    secret = None


@functools.lru_cache(maxsize=None)
def remembered(value):
    return value


def tag(seed):
    """The marker stored everywhere, derived from the caller's seed."""
    return "bulkhead-py-stain-" + seed


def stain(seed):
    global SECRET
    marker = tag(seed)
    SECRET = marker
    HISTORY.append(marker)
    REGISTRY[marker] = marker
    Holder.secret = marker
    builtins.bulkhead_stain = marker
    module = types.ModuleType("bulkhead_stain_module")
    module.secret = marker
    sys.modules["bulkhead_stain_module"] = module
    os.environ["BULKHEAD_STAIN"] = marker
    remembered(marker)
    sys.intern(marker)
    # 4 MiB of heap pages holding the marker, kept alive by a module list.
    block = (marker.encode() + b"|") * (4 * 1024 * 1024 // (len(marker) + 1))
    HEAP.append(bytearray(block))
    try:
        with open("/tmp/bulkhead-stain", "w") as f:
            f.write(marker)
        file_state = "written"
    except OSError:
        file_state = "refused"
    return "stained file " + file_state


def peek(seed):
    marker = tag(seed)
    encoded = marker.encode()
    found = {
        "global": SECRET == marker,
        "list": len(HISTORY),
        "dict": len(REGISTRY),
        "class": Holder.secret == marker,
        "builtins": getattr(builtins, "bulkhead_stain", None) == marker,
        "module": "bulkhead_stain_module" in sys.modules,
        "env": os.environ.get("BULKHEAD_STAIN") == marker,
        "cache": remembered.cache_info().currsize,
    }
    # Every container the collector tracks (module dicts, lists, class
    # dicts, caches): does any still hold the marker or a buffer with it?
    heap = 0
    for obj in gc.get_objects():
        if isinstance(obj, dict):
            items = [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            items = obj
        else:
            continue
        for item in items:
            if isinstance(item, str) and item == marker:
                heap += 1
            elif isinstance(item, (bytes, bytearray)) and encoded in item:
                heap += 1
    found["heap"] = heap
    try:
        with open("/tmp/bulkhead-stain") as f:
            found["file"] = f.read() == marker
    except OSError:
        found["file"] = False

    def show(value):
        if isinstance(value, bool):
            return "yes" if value else "-"
        return str(value)

    return " ".join(f"{key} {show(value)}" for key, value in found.items())


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        global CALLS
        CALLS += 1
        path, _, query = (request.path_with_query() or "/").partition("?")
        seed = ""
        for pair in query.split("&"):
            key, _, value = pair.partition("=")
            if key == "seed" and value.isdigit():
                seed = value
        if not seed:
            status, text = 400, "a numeric seed is required"
        elif path.endswith("/stain"):
            status, text = 200, stain(seed)
        elif path.endswith("/peek"):
            status, text = 200, peek(seed)
        elif path.endswith("/selfcheck"):
            # Stain, then peek in the same call: proves `peek` sees a stain.
            status, text = 200, stain(seed) + " " + peek(seed)
        else:
            status, text = 404, "stain, peek or selfcheck"
        body_text = f"calls {CALLS} {text}".encode()
        headers = Fields.from_list([("content-type", b"text/plain; charset=utf-8")])
        response = OutgoingResponse(headers)
        response.set_status_code(status)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(body_text)
        OutgoingBody.finish(body, None)
