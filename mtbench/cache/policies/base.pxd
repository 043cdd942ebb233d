# Types for the compiled core (mtbench/compiled.py): which classes of base.py are extension types, their
# attributes and the methods called as C functions. Declarations only: every rule stays in base.py.
cimport cython

cdef class ReplacementPolicy:
    cdef public long long capacity, used, _pinned_bytes
    cdef public dict _sizes
    cdef public dict _pins

    cpdef bint can_fit(self, long long size)
    cpdef bint readmits(self, long long size)
    @cython.locals(count=Py_ssize_t)
    cpdef pin(self, key)
    @cython.locals(count=Py_ssize_t)
    cpdef unpin(self, key)
    cpdef bint access(self, key, now)
    cpdef admit(self, key, long long size, now)
    cpdef evict_until_fits(self, long long size, incoming=*)
    cpdef long long remove(self, key) except? -1
    cpdef set_next_use(self, key, next_use)
    cpdef hint_upcoming(self, keys, now)
    cpdef _insert(self, key, long long size, now)
    @cython.locals(size=cython.longlong)
    cpdef long long _forget(self, key) except? -1
    cpdef _on_hit(self, key, now)
    cpdef _on_insert(self, key, long long size, now)
    cpdef _pop_victim(self, incoming)
    cpdef _on_remove(self, key)
