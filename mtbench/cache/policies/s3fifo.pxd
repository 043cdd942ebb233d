# Types for the compiled core (mtbench/compiled.py): which classes of s3fifo.py are extension types, their
# attributes and the methods called as C functions. Declarations only: every rule stays in s3fifo.py.
cimport cython
from mtbench.cache.policies.base cimport ReplacementPolicy

cdef class S3FIFO(ReplacementPolicy):
    cdef public long long _small_capacity, _main_capacity, _ghost_capacity, _threshold
    cdef public object _small, _main, _ghost
    cdef public long long _small_bytes, _main_bytes, _ghost_bytes
    cdef public dict _count
    cdef public bint _has_evicted, _to_main

    cpdef bint _refuses(self, long long size, bint was_ghost)
    cpdef bint _enters_main(self, key, bint was_ghost)
    @cython.locals(size=cython.longlong)
    cpdef _evict_small(self)
    cpdef _evict_main(self)
    cpdef _remember_ghost(self, key, long long size)
