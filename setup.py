"""Builds the one native extension, diffeig._C.

Switches (environment variables):
    DIFFEIG_SKIP_EXT=1    build no extension; diffeig then runs its pure-PyTorch reference path.
    FORCE_CUDA=1          compile the CUDA kernels even if torch or nvcc look unusable.
    FORCE_CUDA=0          never compile the CUDA kernels.
    TORCH_CUDA_ARCH_LIST  GPU architectures to compile for (default "8.0;9.0": A100, H100).
    CUDA_HOME             the CUDA toolkit; found from nvcc on PATH when unset.
    MAX_JOBS              parallel compile jobs (ninja).
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """The toolkit root holding bin/nvcc and include/cuda_runtime.h, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        # nvcc on PATH may be a wrapper script outside the toolkit: try its
        # resolved location and the conventional install prefixes.
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            if os.path.exists(os.path.join(home, "bin", "nvcc")):
                return home
    return None


def _extensions():
    if os.environ.get("DIFFEIG_SKIP_EXT", "0") == "1":
        print("diffeig build: DIFFEIG_SKIP_EXT=1, no native extension (reference path only)")
        return [], {}

    cuda_home = _find_cuda_home()
    if cuda_home and not os.environ.get("CUDA_HOME"):
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    force = os.environ.get("FORCE_CUDA")
    with_cuda = torch.version.cuda is not None and cuda_home is not None
    if force == "1":
        with_cuda = True
    elif force == "0":
        with_cuda = False

    sources = [os.path.join("csrc", "diffeig.cpp"), *sorted(glob.glob("csrc/cpu/*.cpp"))]
    extra = {"cxx": ["-O3"]}
    link_args = []
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        # at::parallel_for is inline OpenMP: without -fopenmp the kernels run on one
        # thread. The loader reuses the libgomp.so.1 that torch has already loaded.
        extra["cxx"].append("-fopenmp")
        link_args.append("-fopenmp")
    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        # pip's CUDA wheels ship the library headers (cuBLAS, cuSPARSE, ...) that some
        # torch headers include; a minimal toolkit may lack them.
        for site in sys.path:
            for inc in glob.glob(os.path.join(site, "nvidia", "cu*", "include")):
                include_dirs.append(inc)
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension

    print(
        "diffeig build: torch {} (CUDA {}), CUDA_HOME={}, CUDA kernels: {}, "
        "TORCH_CUDA_ARCH_LIST={}, OpenMP: {}, sources: {}".format(
            torch.__version__,
            torch.version.cuda,
            cuda_home,
            "yes" if with_cuda else "no",
            os.environ["TORCH_CUDA_ARCH_LIST"] if with_cuda else "-",
            "yes" if link_args else "no",
            len(sources),
        )
    )
    ext = ext_cls(
        "diffeig._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args=extra,
        extra_link_args=link_args,
        py_limited_api=True,
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
