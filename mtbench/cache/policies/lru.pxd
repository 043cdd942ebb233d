# Types for the compiled core (mtbench/compiled.py): which classes of lru.py are extension types, their
# attributes and the methods called as C functions. Declarations only: every rule stays in lru.py.
from mtbench.cache.policies.base cimport ReplacementPolicy

cdef class LRU(ReplacementPolicy):
    cdef public object _order
