# Types for the compiled core (mtbench/compiled.py): which classes of mtserve.py are extension types, their
# attributes and the methods and functions called as C functions. Declarations only: every rule stays in
# mtserve.py.
cimport cython
from mtbench.cache.policies.s3fifo cimport S3FIFO
# `math.log2` in mtserve.py is libm's log2, a C call (the same function CPython's math.log2 calls for a
# positive finite double); run as plain Python it is math.log2
cimport libc.math as math

# C constants and tables (a C array's length is a literal here: _N_BINS + 1 and _N_BINS)
cdef Py_ssize_t _N_BINS
cdef double _BIN_EDGES[41]
cdef double _BIN_WIDTH[40]
cdef double _SPREAD_WEIGHTS[5]
cdef double _SPREAD_WEIGHT, CLOCK_TOLERANCE, VALUE_REFRESH, TIE_FACTOR
cdef double _ZERO_SPREAD[40]
cdef double _ZERO_TAIL[41]

@cython.locals(b=Py_ssize_t, octaves=double)
cpdef Py_ssize_t _gap_bin(double gap) except -1
cpdef tuple _split(key)
@cython.locals(b=Py_ssize_t, inside=double)
cpdef (Py_ssize_t, double) _position(double point) except *

cdef class GapHistogram:
    # _N_BINS and _N_BINS + 1
    cdef double _spread[40]
    cdef double _tail[41]
    cdef bint _tail_valid

    @cython.locals(offset=Py_ssize_t, b=Py_ssize_t)
    cpdef add_to_bin(self, Py_ssize_t center)
    cpdef list tail(self)
    @cython.locals(above=double, b=Py_ssize_t)
    cpdef _refresh_tail(self)
    cpdef double _longer(self, Py_ssize_t b, double inside) except? -1

@cython.locals(b=Py_ssize_t, b_later=Py_ssize_t, inside=double, inside_later=double, longer=double,
               longer_later=double, pop_p=double)
cpdef double _reuse_probability(GapHistogram user, GapHistogram population, double age, double horizon,
                                double prior_weight) except? -1

cdef class UserTraffic:
    cdef public long long newest_version
    cdef public double last_seen
    cdef public GapHistogram gaps

cdef class Traffic:
    cdef public bint user_mode
    cdef public dict users, arrived_version
    cdef public GapHistogram population
    cdef public object clock_start
    cdef public double max_version_since, now
    cdef public long long max_version, arrivals, clock_violations, version_changes
    cdef public set upcoming

    @cython.locals(record=UserTraffic, gaps=GapHistogram, last=double, b=Py_ssize_t, version=cython.longlong)
    cpdef arrive(self, key, double now)
    @cython.locals(record=UserTraffic, version=cython.longlong)
    cpdef hint(self, keys, double now)
    @cython.locals(record=UserTraffic)
    cpdef UserTraffic _user(self, user)
    cpdef _raise_versions(self, UserTraffic record, long long version, double now)
    @cython.locals(record=UserTraffic)
    cpdef long long newest_version(self, user) except? -2
    @cython.locals(record=UserTraffic)
    cpdef GapHistogram gaps(self, user)
    cpdef bint versions_are_a_clock(self)

cdef class ResidentEntry:
    cdef public object key, user
    cdef public long long version, size, held_scan, value_generation
    cdef public UserTraffic record
    cdef public bint in_main
    cdef public ResidentEntry older, newer
    cdef public double last_use, value, value_until, value_for_use

cdef class MTServe(S3FIFO):
    cdef public object _reload_ms
    cdef public double _default_horizon, _prior_weight
    cdef public Py_ssize_t _window
    cdef public long long _value_generation, _values_max_version, _scan
    cdef public bint _learns, _user_mode, _values_clock
    cdef public Traffic traffic
    cdef public dict _entries, _by_version, _reload_per_byte
    cdef public ResidentEntry _oldest, _newest

    @cython.locals(traffic=Traffic, entry=ResidentEntry)
    cpdef bint access(self, key, now)
    @cython.locals(entries=dict)
    cpdef _enter_user_mode(self)
    @cython.locals(newest=ResidentEntry)
    cpdef _append_newest(self, ResidentEntry entry)
    @cython.locals(older=ResidentEntry, newer=ResidentEntry)
    cpdef _unlink(self, ResidentEntry entry)
    @cython.locals(entry=ResidentEntry)
    cpdef _on_insert(self, key, long long size, now)
    @cython.locals(entry=ResidentEntry, bucket=dict)
    cpdef _on_remove(self, key)
    @cython.locals(traffic=Traffic, start=tuple, period=double)
    cpdef double stale_horizon(self) except? -1
    cpdef _dead_victim(self)
    @cython.locals(traffic=Traffic, entries=dict, now=double, left=Py_ssize_t, horizon=double,
                   scan=cython.longlong, entry=ResidentEntry, newer=ResidentEntry, used=double,
                   generation=cython.longlong, lowest=double, floor=double, check_newest=bint, clock=bint,
                   record=UserTraffic)
    cpdef _live_victim(self)
    @cython.locals(record=UserTraffic, size=cython.longlong, reload_per_byte=double)
    cpdef double _value(self, ResidentEntry entry, double now, double horizon) except? -1
    @cython.locals(record=UserTraffic)
    cpdef UserTraffic _record(self, ResidentEntry entry)
