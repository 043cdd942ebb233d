# Types for the compiled core (mtbench/compiled.py): which classes of mtserve.py are extension types, their
# attributes and the methods called as C functions. Declarations only: every rule stays in mtserve.py.
from mtbench.cache.policies.s3fifo cimport S3FIFO

cdef class GapHistogram:
    cdef public object _counts
    cdef public object _tail

    cpdef add_to_bin(self, b)
    cpdef tail(self)
    cpdef drop_tail(self)

cdef class Traffic:
    cdef public bint user_mode
    cdef public dict newest_version, arrived_version, last_seen, gaps
    cdef public GapHistogram population
    cdef public object max_version, max_version_since, clock_start, arrivals, clock_violations, version_changes
    cdef public set upcoming
    cdef public object now

    cpdef arrive(self, key, now)
    cpdef hint(self, keys, now)
    cpdef _raise_versions(self, user, version, now)

cdef class MTServe(S3FIFO):
    cdef public object _reload_ms, _default_horizon, _window, _prior_weight
    cdef public bint _learns, _user_mode
    cdef public Traffic traffic
    cdef public dict _last_use, _by_version, _reload_per_byte, _values
    cdef public object _values_epoch

    cpdef _enter_user_mode(self)
    cpdef stale_horizon(self)
    cpdef _forget_key(self, key)
    cpdef _value(self, key, now, horizon, population_tail)
