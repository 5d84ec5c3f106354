"""Compute backends and their registry.

A backend executes search plans (:mod:`ivfsq.ivf.planner`) over an
engine's lists. Its module provides:

- ``search_block(engine, plan, prepared, lists, k, n_probes, keep_words,
  n_threads, refine_ratio) -> (distances, ids)``: one block of queries,
  internal distances, sorted; ``keep_words`` is None or uint32 bitsets,
  one row for every query or one per query;
- ``range_search(engine, prepared, radius, n_probes, keep_words, n_threads,
  int_filter) -> (offsets, ids, distances)``;
- for filtered searches (:mod:`ivfsq.ivf.filtering`): ``count_kept(words,
  n_ids)``, ``kept_per_list(lists, words)``, ``lists_to_walk(lists, ranked,
  words, targets, n_threads)`` and ``search_rows(engine, prepared, lists, k,
  row_starts, rows, row_lists, n_threads, refine_ratio)``;
- ``one_query(engine, plan, lists, k, n_probes, refine_ratio) -> runner or
  None``: for repeated single queries with the same arguments, an object
  whose ``run(prepared)`` returns ``search_block``'s result for one query
  with no filter, or None where the backend has no such shortcut for the
  plan.

- ``encode(engine, vectors, labels) -> (codes, aux)`` and
  ``assign_nearest(vectors, centers, center_sq_norms, inner_product,
  return_distances)``: optional; where a backend has none, the engine's
  encoding and :func:`ivfsq.ivf.kmeans.assign_nearest` run on the CPU.

Which backend runs a call is decided here, from ``Resources(device=...)``
(or where the call's data lives, :func:`ivfsq.common.resolve_device`):
``"cpu"`` (NumPy + numba kernels) and ``"cuda"`` (numba-cuda kernels,
:mod:`ivfsq.backends.cuda`). Per-backend state tuned on an index's data
(the device copy of the lists, for one) lives beside the list snapshot it
was made from.

>>> from ivfsq import backends
>>> backends.NAMES
('cpu', 'cuda')
>>> backends.get("cpu").__name__
'ivfsq.backends.cpu.search'
"""

import importlib

__all__ = ["BACKENDS", "NAMES", "get"]

#: Device name -> the module implementing the backend (imported on first use).
BACKENDS = {"cpu": "ivfsq.backends.cpu.search", "cuda": "ivfsq.backends.cuda.search"}
NAMES = tuple(BACKENDS)
# Imported backends by device: a search asks for its backend on every call,
# and a dict hit costs less than the import machinery's lookup.
_LOADED = {}


def get(device):
    """The backend module of ``device``; ValueError naming the choices."""
    loaded = _LOADED.get(device) if isinstance(device, str) else None
    if loaded is not None:
        return loaded
    module = BACKENDS.get(device) if isinstance(device, str) else None
    if module is None:
        raise ValueError(f"device must be one of {', '.join(map(repr, NAMES))}, got {device!r}")
    return _LOADED.setdefault(device, importlib.import_module(module))
