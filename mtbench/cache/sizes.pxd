# Types for the compiled core (mtbench/compiled.py): EntrySizer is an extension type (its fields in the dataclass's
# order) whose size functions are C calls. Declarations only: every rule stays in sizes.py.
cdef class EntrySizer:
    cdef readonly long long bytes_per_token, page_tokens
    cdef readonly bint unit
    cdef readonly long long host_bytes_per_token

    cpdef long long size_of(self, long long n_static) except? -1
    cpdef long long host_size_of(self, long long n_static) except? -1
    cpdef long long moved_bytes(self, long long n_static) except? -1
