"""Builds the one native extension, diffeig._C.

Switches (environment variables):
    DIFFEIG_SKIP_EXT=1    build no extension; diffeig then runs its pure-PyTorch reference path.
    FORCE_CUDA=1          compile the CUDA kernels (CI does, so that they never rot).
    FORCE_CUDA=0          never compile the CUDA kernels.
                          Unset: compile them when a CUDA build of torch sees a GPU and
                          the toolkit (nvcc) is found.
    TORCH_CUDA_ARCH_LIST  GPU architectures to compile for (default "8.0;9.0": A100, H100).
    CUDA_HOME             the CUDA toolkit; found from nvcc on PATH when unset.
    MAX_JOBS              parallel compile jobs (ninja).
    DIFFEIG_DEBUG=1       keep debug information (by default the library is built and
                          linked without it: 0.4 MB instead of 12.5 MB).
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


def _torch_release(torch) -> str:
    return torch.__version__.split("+")[0]


def _write_build_info(torch, with_cuda: bool) -> None:
    """diffeig/_build_info.py: the torch the extension is compiled against, read by
    diffeig._extension to warn when another torch loads it."""
    with open(os.path.join(ROOT, "diffeig", "_build_info.py"), "w") as f:
        f.write(
            '"""Written by setup.py when diffeig._C was built."""\n\n'
            f"TORCH_VERSION = {torch.__version__!r}\n"
            f"TORCH_CUDA = {torch.version.cuda!r}\n"
            f"CUDA_KERNELS = {with_cuda!r}\n"
        )


def _install_requires():
    """A compiled extension works with the torch release it was built against: pin it, as
    extension packages do (torch==2.14.1 also matches its local builds, +cu130, +cpu)."""
    base = ["numpy"]
    if os.environ.get("DIFFEIG_SKIP_EXT", "0") == "1":
        return ["torch>=2.4", *base]
    import torch

    return [f"torch=={_torch_release(torch)}", *base]


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
    # Kernels that can be used: a CUDA torch that sees a GPU. Compiling them for nothing
    # costs minutes on a small machine.
    with_cuda = torch.version.cuda is not None and cuda_home is not None
    with_cuda = with_cuda and torch.cuda.is_available()
    if force == "1":
        with_cuda = True
    elif force == "0":
        with_cuda = False

    sources = [os.path.join("csrc", "diffeig.cpp"), *sorted(glob.glob("csrc/cpu/*.cpp"))]
    debug = os.environ.get("DIFFEIG_DEBUG", "0") == "1"
    # -g0 after Python's own -g: a later -g option wins. -s strips the symbol table at link
    # time (the dynamic symbols the loader needs stay).
    extra = {"cxx": ["-O3"] + ([] if debug else ["-g0"])}
    link_args = [] if debug else ["-s"]
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        # at::parallel_for is inline OpenMP: without -fopenmp the kernels run on one
        # thread. The loader reuses the libgomp.so.1 that torch has already loaded.
        extra["cxx"].append("-fopenmp")
        link_args.append("-fopenmp")
    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        # nvcc adds no debug information unless asked (-g / -G); it rejects -g0
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"] + (["-g"] if debug else [])
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
        "TORCH_CUDA_ARCH_LIST={}, OpenMP: {}, debug info: {}, sources: {}".format(
            torch.__version__,
            torch.version.cuda,
            cuda_home,
            "yes" if with_cuda else "no",
            os.environ["TORCH_CUDA_ARCH_LIST"] if with_cuda else "-",
            "yes" if "-fopenmp" in link_args else "no",
            "yes" if debug else "no",
            len(sources),
        )
    )
    _write_build_info(torch, with_cuda)
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
    install_requires=_install_requires(),
    # the stable ABI of the oldest Python we support (requires-python >= 3.10)
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
