"""Count what an iclprobe stage's job computes, without changing the stage.

benchmarks/stages.py puts this folder first on PYTHONPATH of a Snakemake run,
so every Python process of that run imports it at start-up. It does nothing
unless ICLPROBE_BENCH_OUT names a file. Then, when the module named by
ICLPROBE_BENCH_STAGE (e.g. `iclprobe.lens`) is imported, its `run_*`
functions are wrapped: during a call, a global forward pre-hook counts the
positions every `nn.Embedding` receives (the token embedding sees each
position of each model pass once: batch × length, padding included), and the
call's wall and CPU time are recorded. At exit the process writes the counts,
the whole process's wall time (start-up and model loading included) and its
peak resident memory to ICLPROBE_BENCH_OUT as JSON.
"""

import os

if os.environ.get("ICLPROBE_BENCH_OUT"):
    import atexit
    import functools
    import importlib.abc
    import json
    import resource
    import sys
    import time

    _STAGE = os.environ["ICLPROBE_BENCH_STAGE"]
    _STARTED = time.perf_counter()
    _RECORD = {"module": _STAGE, "entry_points": [], "wall_s": 0.0, "cpu_s": 0.0, "calls": 0}
    _POSITIONS: dict = {}  # id(embedding) -> [num_embeddings, positions, passes]

    def _count(module, args):
        import torch

        if isinstance(module, torch.nn.Embedding) and args:
            entry = _POSITIONS.setdefault(id(module), [module.num_embeddings, 0, 0])
            entry[1] += args[0].numel()
            entry[2] += 1

    def _wrap(fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            import torch

            handle = torch.nn.modules.module.register_module_forward_pre_hook(_count)
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                if cuda:
                    torch.cuda.synchronize()
                _RECORD["wall_s"] += time.perf_counter() - wall
                _RECORD["cpu_s"] += time.process_time() - cpu
                _RECORD["calls"] += 1
                _RECORD["threads"] = torch.get_num_threads()
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    _RECORD["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
                handle.remove()

        return timed

    class _Finder(importlib.abc.MetaPathFinder):
        """Wraps the stage module's entry points right after it is executed."""

        def find_spec(self, name, path, target=None):
            if name != _STAGE:
                return None
            sys.meta_path.remove(self)
            try:
                from importlib.util import find_spec

                spec = find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                for attr, value in list(vars(module).items()):
                    if attr.startswith("run_") and getattr(value, "__module__", None) == name:
                        setattr(module, attr, _wrap(value))
                        _RECORD["entry_points"].append(attr)

            spec.loader.exec_module = exec_module
            return spec

    def _write():
        if not _RECORD["calls"]:
            return
        # The vocabulary embedding is the largest; GPT-2's position embedding also counts.
        if _POSITIONS:
            _, positions, passes = max(_POSITIONS.values())
        else:
            positions = passes = 0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _RECORD.update(
            positions=positions,
            passes=passes,
            process_wall_s=time.perf_counter() - _STARTED,
            peak_rss_mb=usage.ru_maxrss / 1024,
        )
        with open(os.environ["ICLPROBE_BENCH_OUT"], "w") as fh:
            json.dump(_RECORD, fh)

    sys.meta_path.insert(0, _Finder())
    atexit.register(_write)
