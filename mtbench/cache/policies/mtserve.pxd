# Types for the compiled core (mtbench/compiled.py): which classes of mtserve.py are extension types, their
# attributes and the methods and functions called as C functions. Declarations only: every rule stays in
# mtserve.py.
cimport cython
from mtbench.cache.policies.s3fifo cimport S3FIFO

@cython.locals(b=Py_ssize_t)
cpdef Py_ssize_t _gap_bin(double gap) except -1
cpdef tuple _split(key)
@cython.locals(b=Py_ssize_t, inside=double)
cpdef (Py_ssize_t, double) _position(double point) except *
@cython.locals(b=Py_ssize_t, b_later=Py_ssize_t, inside=double, inside_later=double, tail=list, longer=double,
               longer_later=double, pop_p=double)
cpdef double _reuse_probability(list user_tail, list population_tail, double age, double horizon,
                                double prior_weight) except? -1

cdef class GapHistogram:
    cdef public object _counts
    cdef public list _tail

    cpdef add_to_bin(self, Py_ssize_t b)
    cpdef list tail(self)
    cpdef drop_tail(self)

cdef class Traffic:
    cdef public bint user_mode
    cdef public dict newest_version, arrived_version, last_seen, gaps
    cdef public GapHistogram population
    cdef public object max_version, clock_start
    cdef public double max_version_since, now
    cdef public long long arrivals, clock_violations, version_changes
    cdef public set upcoming

    @cython.locals(gaps=GapHistogram)
    cpdef arrive(self, key, double now)
    cpdef hint(self, keys, double now)
    cpdef _raise_versions(self, user, version, double now)

cdef class ResidentEntry:
    cdef public double last_use, value, value_until, value_for_use
    cdef public long long value_generation

cdef class MTServe(S3FIFO):
    cdef public object _reload_ms, _values_epoch
    cdef public double _default_horizon, _prior_weight
    cdef public Py_ssize_t _window
    cdef public long long _value_generation
    cdef public bint _learns, _user_mode
    cdef public Traffic traffic
    cdef public dict _entries, _by_version, _reload_per_byte

    cpdef _enter_user_mode(self)
    cpdef double stale_horizon(self) except? -1
    cpdef _forget_key(self, key)
    cpdef _dead_victim(self)
    @cython.locals(traffic=Traffic, now=double, left=Py_ssize_t, horizon=double, population=list,
                   entry=ResidentEntry, used=double, generation=cython.longlong, score=double, floor=double, held=set)
    cpdef _live_victim(self)
    @cython.locals(gaps=GapHistogram)
    cpdef double _value(self, key, double now, double horizon, list population_tail) except? -1
