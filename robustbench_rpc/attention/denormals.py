"""Flush-to-zero on every intra-op thread while PAP runs.

Why: PAP's later iterations sharpen the attention so much that a third of its softmax probabilities fall
below the smallest normal float (1.2e-38). On CPUs that handle denormals in microcode (measured on an
"Intel(R) Xeon(R) Processor", 2 cores) every multiply touching one costs ~100 cycles, and RPC attention
(n_iter 4) ran at 3-6x its 4 SDPA calls instead of ~1.1x. The probabilities live inside the fused SDPA
kernel (they are never materialised), so they cannot be zeroed from Python; flushing them is the CPU's job:
the MXCSR bits FTZ (denormal results become 0) and DAZ (denormal inputs read as 0).

``torch.set_flush_denormal`` sets those bits on the calling thread only; torch's intra-op workers (OpenMP
threads, each with its own MXCSR) keep computing with denormals. So :func:`flush_denormals` also runs C's
``fesetenv`` (libm) on every thread of the OpenMP team, through the OpenMP runtime's own entry point
``GOMP_parallel(fn, data, num_threads, 0)`` (libgomp; LLVM's libomp and Intel's libiomp5 export it too): a
parallel region that executes ``fesetenv(&env)`` on each of the ``torch.get_num_threads()`` threads of the
calling thread's pool, the same threads ``at::parallel_for`` then runs on. No Python runs on the workers.
On exit every thread gets back the environment the calling thread had on entry.

What it changes: only values below 1.2e-38 become 0. A probability that small contributes less than
N * 1.2e-38 * max|V| to an output, far below float32 rounding of any output or gradient of normal size, so
results agree with the denormal-honouring computation within float tolerance (tests/test_attention.py checks
it against float64). Where the runtime cannot be reached (no OpenMP runtime with GOMP_parallel loaded, ATen
built with another parallel backend, no libm), only the calling thread is flushed (:func:`coverage` says
which); CUDA tensors are left alone (GPUs flush in their kernels' own way).

The backward of PAP runs outside the forward's ``with``: :func:`mark_exit` / :func:`mark_entry` put identity
autograd nodes on PAP's output and keys; the first turns flushing on when the backward reaches PAP, the
second turns it off when the backward leaves it (and a callback queued on the autograd engine turns it off
at the end of the backward in any case, e.g. when the keys need no gradient).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from pathlib import Path

import torch

_ENV_BYTES = 512  # >= sizeof(fenv_t) on every glibc/musl/macOS ABI (x86_64: 32, aarch64: 8)
_state = threading.local()  # .active: this thread's workers are flushing; .saved: env to restore


class _Runtime:
    """The C entry points, resolved once: libm's fegetenv/fesetenv and the OpenMP runtime's GOMP_parallel
    (the one already loaded into the process by torch, found in /proc/self/maps)."""

    def __init__(self) -> None:
        self.fegetenv = self.fesetenv = self.fesetenv_addr = self.parallel = None
        self.library = self.why = ""
        try:
            libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
            self.fegetenv, self.fesetenv = libm.fegetenv, libm.fesetenv
        except (OSError, AttributeError) as err:
            self.why = f"libm's fegetenv/fesetenv not found ({err})"
            return
        for fn in (self.fegetenv, self.fesetenv):
            fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_int
        self.fesetenv_addr = ctypes.cast(self.fesetenv, ctypes.c_void_p).value
        if "OpenMP" not in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]:
            self.why = "ATen's parallel backend is not OpenMP"
            return
        for path in _loaded_openmp_runtimes():
            try:
                fn = ctypes.CDLL(path).GOMP_parallel
            except (OSError, AttributeError):
                continue
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            fn.restype = None
            self.parallel, self.library = fn, path
            return
        self.why = "no loaded OpenMP runtime exports GOMP_parallel"

    def get_env(self) -> ctypes.Array:
        env = ctypes.create_string_buffer(_ENV_BYTES)
        self.fegetenv(env)
        return env

    def set_env(self, env: ctypes.Array) -> None:
        """fesetenv(env) on the calling thread and (where reachable) every worker of its OpenMP team."""
        if self.parallel is None:
            self.fesetenv(env)
        else:
            self.parallel(self.fesetenv_addr, ctypes.addressof(env), max(1, torch.get_num_threads()), 0)


def _loaded_openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process, torch's own first (its wheel ships
    torch/lib/libgomp.so.1; another copy loaded by e.g. scikit-learn runs a different thread pool)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return []
    torch_lib = str(Path(torch.__file__).resolve().parent)
    found = [p for p in paths if p.rsplit("/", 1)[-1].startswith(("libgomp", "libiomp5", "libomp.")) and ".so" in p]
    return sorted(found, key=lambda p: (not p.startswith(torch_lib), p))


_runtime: _Runtime | None = None


def _rt() -> _Runtime:
    global _runtime
    if _runtime is None:
        _runtime = _Runtime()
    return _runtime


def coverage() -> str:
    """Which threads :func:`flush_denormals` reaches on this machine, in words (benchmarks print it)."""
    rt = _rt()
    if rt.parallel is not None:
        return f"every intra-op thread (GOMP_parallel of {rt.library.rsplit('/', 1)[-1]} running fesetenv)"
    if rt.fegetenv is not None:
        return f"the calling thread only ({rt.why})"
    return f"no thread ({rt.why})"


def _enable() -> bool:
    """Turn FTZ/DAZ on for this thread and its workers unless already on; True if this call turned it on."""
    rt = _rt()
    if getattr(_state, "active", False) or rt.fegetenv is None:
        return False
    saved = rt.get_env()
    if not torch.set_flush_denormal(True):  # the CPU has no flush-to-zero mode: nothing to do
        return False
    if rt.parallel is not None:
        rt.set_env(rt.get_env())
    _state.saved, _state.active = saved, True
    return True


def _restore() -> None:
    """Every thread back to the environment the calling thread had when :func:`_enable` turned flushing on."""
    if getattr(_state, "active", False):
        _rt().set_env(_state.saved)
        _state.active, _state.saved = False, None


def _applies(t: torch.Tensor) -> bool:
    return (t.device.type == "cpu" and t.is_floating_point() and not getattr(_state, "kept", False)
            and not torch.compiler.is_compiling())


@contextlib.contextmanager
def denormals_kept():
    """Within the block (this thread), PAP computes with denormals as the CPU leaves them: the behaviour
    before flush-to-zero, for the side-by-side benchmark and the equality tests."""
    before = getattr(_state, "kept", False)
    _state.kept = True
    try:
        yield
    finally:
        _state.kept = before


@contextlib.contextmanager
def flush_denormals(like: torch.Tensor):
    """Within the block, denormal floats are flushed to zero on every intra-op thread (CPU tensors only;
    nested use is free). On exit, every thread gets the calling thread's floating-point environment back."""
    turned_on = _applies(like) and _enable()
    try:
        yield
    finally:
        if turned_on:
            _restore()


class _BackwardEnters(torch.autograd.Function):
    """Identity on PAP's output; its backward (the first of PAP's backward to run) turns flushing on."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if _enable():
            torch.autograd.Variable._execution_engine.queue_callback(_restore)
        return grad


class _BackwardLeaves(torch.autograd.Function):
    """Identity on PAP's keys; its backward (after every PAP node, which all feed the keys) turns it off."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _restore()
        return grad


def mark_entry(k: torch.Tensor) -> torch.Tensor:
    """The keys as PAP's backward last sees them (flushing ends there)."""
    return _BackwardLeaves.apply(k) if k.requires_grad and _applies(k) else k


def mark_exit(out: torch.Tensor) -> torch.Tensor:
    """PAP's output as its backward first sees it (flushing starts there)."""
    return _BackwardEnters.apply(out) if out.requires_grad and _applies(out) else out
