# Types for the compiled core (mtbench/compiled.py): which classes of control.py are extension types, their
# attributes and the methods called as C functions. Declarations only: every rule stays in control.py.
cimport cython
from mtbench.cache.policies.base cimport ReplacementPolicy as CPolicy
from mtbench.cache.sizes cimport EntrySizer

cdef Py_ssize_t _KINDS
cdef long long _ZERO_TALLY[18]  # len(Outcome) * len(MissKind)
cpdef Py_ssize_t _tally_cell(Py_ssize_t outcome, Py_ssize_t kind)

cdef class StoreDecision:
    cdef public object key, first, n_tokens, scratch

cdef class NullDataPlane:
    pass

cdef class BatchDecisions:
    cdef public object serial
    cdef public list requests, outcomes, cached, kinds, promoted
    cdef public dict stores
    cdef public set loaded

cdef class ControlPlane:
    cdef public EntrySizer sizer
    cdef public object config, settings, data, extents, _stats, now, _serial, _budget, _deferred
    cdef public BatchDecisions _single
    cdef public CPolicy gpu
    cdef public CPolicy host
    cdef public tuple _tiers
    cdef public bint _oracle, _hints, _plain
    cdef public dict gpu_tokens, host_tokens, host_offsets, _versions, _in_flight, _next_use, _first_batch, _user_first_key
    cdef long long _tally[18]  # len(Outcome) * len(MissKind)
    # _serve adds its C `cached` to _hit_tokens in C; n_static stays the request's object (it is stored as is),
    # so _static_tokens adds objects (a C field would box it twice per request)
    cdef public object _static_tokens
    cdef public long long _hit_tokens
    cdef public set _doomed

    cpdef serve(self, request)
    @cython.locals(single=BatchDecisions, i=Py_ssize_t)
    cpdef serve_each(self, list keys, list n_static, list ts, list next_use, list outcomes, list cached)
    @cython.locals(plan=BatchDecisions, cached=cython.longlong)
    cpdef _serve(self, key, n_static, ts, next_use)
    cpdef _announce(self, key, next_use)
    @cython.locals(tier=CPolicy)
    cpdef _take_deferred(self)
    @cython.locals(tier=CPolicy)
    cpdef _release_single(self, BatchDecisions plan, key)
    @cython.locals(tier=CPolicy)
    cpdef _tell_next_use(self, key, next_use)
    @cython.locals(host=CPolicy, cached=set, flying=dict)
    cpdef _decide(self, BatchDecisions plan, Py_ssize_t i, key, n, now, bint load)
    cpdef _tick(self, ts)
    @cython.locals(tier=CPolicy)
    cpdef _repeat(self, BatchDecisions plan, Py_ssize_t i, Py_ssize_t row, now)
    cpdef _gpu_entry_short(self, BatchDecisions plan, Py_ssize_t i, key, cached, n, now)
    @cython.locals(host=CPolicy)
    cpdef _not_on_gpu(self, BatchDecisions plan, Py_ssize_t i, key, n, now, bint load)
    cpdef _compute(self, BatchDecisions plan, Py_ssize_t i, key, first, n, now, bint keep_scratch)
    @cython.locals(gpu=CPolicy)
    cpdef _grow(self, BatchDecisions plan, Py_ssize_t i, key, cached, n, now)
    cpdef bint _admit_gpu(self, key, n_tokens, now)
    cpdef _evicted_from_gpu(self, evicted, now)
    @cython.locals(host=CPolicy)
    cpdef _store_host(self, key, n_tokens, now, bint scratch)
    cpdef _drop_host(self, key)
    cpdef _free_host(self, key)
    cpdef _note_version(self, key)
    cpdef _forget_version(self, key)
    cpdef _drop_other_versions(self, key)
    cpdef _remove(self, key)
    cpdef _copy_to_host(self, BatchDecisions plan)
    cpdef _drop_doomed(self)
