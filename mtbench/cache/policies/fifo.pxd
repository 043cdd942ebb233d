# Types for the compiled core (mtbench/compiled.py): which classes of fifo.py are extension types, their
# attributes and the methods called as C functions. Declarations only: every rule stays in fifo.py.
from mtbench.cache.policies.base cimport ReplacementPolicy

cdef class FIFO(ReplacementPolicy):
    cdef public object _queue
