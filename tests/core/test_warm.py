"""Set-up's compile step leaves the sampler's kernels cached on disk."""

from pathlib import Path

import cellniche_core


def test_warm_caches_the_sampler_kernels():
    from cellniche_core.warm import warm_caches

    assert warm_caches() > 0
    cache = Path(cellniche_core.__file__).parent / "__pycache__"
    kernels = {p.name.split("-")[0] for p in cache.glob("sampling_cpu.*.nbi")}
    assert {"sampling_cpu.batch_kernel", "sampling_cpu.walk_batch_kernel"} <= kernels
