"""Fused CPU kernels (``kernels.c``) for the batched engine, compiled on first use and cached.

Why: on whole-table torch tensors, the modular step is three large matmuls and a dozen
elementwise operations, each streaming a multi-megabyte logits or hidden tensor through memory
(and two cores contend for it). ``modular_rows`` does a run's whole step block by block of rows,
each block finished in the core's cache, with register-tiled matmuls of its own; the elementwise
kernels it is built from are exported too, for the tests. ``benchmarks/train_throughput.py`` times
both paths side by side (``kernel_speedup``).

The library is built with the system C compiler (``$CC``, else ``cc``) into a cache directory
(``$PHASELIB_CACHE``, else ``$XDG_CACHE_HOME/phaselib``, else ``~/.cache/phaselib``), under a
name that hashes the source, the flags, the compiler's version and the CPU's flags, so a changed
source, compiler or machine gets its own build. ``PHASELIB_KERNELS`` chooses: ``auto`` (default:
native kernels if they build, else the torch operations, with one warning), ``native`` (fail if
they do not build) or ``torch`` (never build). Only CPU float32 tensors go through them; other
devices always take the torch path (:func:`use_native`).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared",
         "-std=c11")
MODES = ("auto", "native", "torch")

_P = ctypes.c_void_p
_I = ctypes.c_int64
_SIGNATURES = {
    "xent_cols": (_P, _I, _I, _I, _I, _P, ctypes.c_float, _P, _P, _P),
    "hidden_cols": (_P, _I, _P, _P, _I, _P, _I),
    "scatter_cols": (_P, _P, _I, _P, _P, _I, _I, _P, _P),
    "modular_scratch": (_I, _I, _I),
    "modular_rows": (_P, _P, _I, _I, _I, _P, _P, _P, _I, _I, _I, _I, ctypes.c_float, _P, _P, _P, _P, _P, _P, _I,
                     _P),
}
_RETURNS = {"modular_scratch": ctypes.c_int64}


class KernelBuildError(RuntimeError):
    """The native kernels were required (``PHASELIB_KERNELS=native``) but could not be built or loaded."""


def mode() -> str:
    """The ``PHASELIB_KERNELS`` setting, validated."""
    m = os.environ.get("PHASELIB_KERNELS", "auto").strip().lower() or "auto"
    if m not in MODES:
        raise ValueError(f"PHASELIB_KERNELS: {m!r} is invalid; allowed: one of {list(MODES)}")
    return m


def cache_dir() -> Path:
    if os.environ.get("PHASELIB_CACHE"):
        return Path(os.environ["PHASELIB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "phaselib"


def _compiler() -> str:
    return os.environ.get("CC", "cc")


def _build_key(cc: str, flags: tuple[str, ...]) -> str:
    """Hash of everything the binary depends on: source, flags, compiler version, CPU flags."""
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(flags).encode())
    h.update(subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout.encode())
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        h.update(next((ln for ln in cpu.splitlines() if ln.startswith(("flags", "Features"))), "").encode())
    except OSError:
        pass
    return h.hexdigest()[:16]


def build(dest: Path | None = None, defines: tuple[str, ...] = ()) -> Path:
    """Compile ``kernels.c`` (if its cached build is missing) and return the library's path.

    ``defines`` (``-D`` flags) make another build, under its own name: the benchmarks' timing build
    (``KERNEL_PHASE_TIMING``, kernels.c) is one. Concurrent builders (a process-pool sweep) each
    compile to a temporary file and move it into place atomically, so a reader never sees a
    half-written library.
    """
    if any(not d.startswith("-D") for d in defines):
        raise ValueError(f"defines: {defines!r} is invalid; allowed: -D flags only (-DNAME or -DNAME=VALUE)")
    cc = _compiler()
    flags = (*FLAGS, *defines)
    dest = dest or cache_dir()
    lib = dest / f"phaselib_kernels_{_build_key(cc, flags)}.so"
    if lib.exists():
        return lib
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=dest)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelBuildError(f"{cc} failed on {SOURCE} ({proc.returncode}):\n{proc.stderr.strip()}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


@lru_cache(maxsize=None)
def _load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, _RETURNS.get(name)
    return lib


@lru_cache(maxsize=None)
def _library(m: str) -> ctypes.CDLL | None:
    if m == "torch":
        return None
    try:
        return _load(str(build()))
    except (OSError, subprocess.SubprocessError, KernelBuildError) as err:
        if m == "native":
            raise KernelBuildError(f"PHASELIB_KERNELS=native, but the kernels are unavailable: {err}") from err
        warnings.warn(f"phaselib: native kernels unavailable, using torch operations instead ({err})",
                      RuntimeWarning, stacklevel=3)
        return None


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None when ``PHASELIB_KERNELS`` is ``torch`` or (``auto``) they do not build."""
    return _library(mode())


def _native() -> ctypes.CDLL:
    """The loaded kernels, for a direct call; a clear error when they are switched off or missing."""
    lib = library()
    if lib is None:
        raise KernelBuildError(f"native kernels are unavailable (PHASELIB_KERNELS={mode()}); "
                               "use the torch path or PHASELIB_KERNELS=native to see why")
    return lib


def use_native(device: torch.device) -> bool:
    """Whether the engine's modular step on ``device`` runs the native kernels."""
    return device.type == "cpu" and library() is not None


def _ptr(t: torch.Tensor | None, dtype: torch.dtype) -> int | None:
    if t is None:
        return None
    if t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous():
        raise ValueError(f"tensor: {t.device} {t.dtype} contiguous={t.is_contiguous()} is invalid; "
                         f"allowed: a contiguous CPU {dtype} tensor")
    return t.data_ptr()


def _rows_ptr(t: torch.Tensor, name: str) -> int:
    """Pointer of a CPU float32 matrix whose rows are contiguous (any row stride >= its width)."""
    if t.device.type != "cpu" or t.dtype != torch.float32 or t.dim() != 2 or t.stride(1) != 1 \
            or t.stride(0) < t.shape[1]:
        raise ValueError(f"{name}: {t.device} {t.dtype} strides {t.stride()} are invalid; allowed: a CPU float32 "
                         "matrix with contiguous rows")
    return t.data_ptr()


def check_index(rows: int, *index: torch.Tensor) -> None:
    """The C loops trust their row indices and labels: the wrappers refuse out-of-range ones, and the
    engine, which calls the C step directly, checks its fixed indices once."""
    for ix in index:
        if ix.numel() and (int(ix.min()) < 0 or int(ix.max()) >= rows):
            raise ValueError(f"index: values outside [0, {rows}) are invalid; allowed: row indices of a "
                             f"{rows}-row table")


def _columns(x: torch.Tensor, width: int) -> tuple[torch.Tensor, int]:
    """``x`` (rows, >= width) as the C kernels' column layout: (width, ld) with ld = rows rounded up
    to 8, the extra columns 0."""
    rows = x.shape[0]
    ld = -(-rows // 8) * 8
    out = torch.zeros(width, max(ld, 8))
    out[:, :rows] = x[:, :width].T
    return out, out.shape[1]


def xent_rows(z: torch.Tensor, p: int, n_train: int, y: torch.Tensor, floor: float,
              nll: torch.Tensor | None, correct: torch.Tensor | None, dz: torch.Tensor) -> None:
    """Softmax cross-entropy of the rows of ``z`` (rows, ldz) over its first ``p`` classes: per-row
    ``nll`` and ``correct`` (optional) and ``dz[:n_train] = softmax - onehot``. Runs ``xent_cols``
    of kernels.c (the fused step's softmax) on a column copy of the train rows and one of the rest.

    ``dz`` needs contiguous rows, not a contiguous whole: it may be ``z[:, :p]`` itself, but no
    other view of ``z``'s storage."""
    rows, ldz = z.shape
    if ldz % 8 or p > ldz or not 0 <= n_train <= rows or y.shape[0] < rows or dz.shape[0] < n_train \
            or dz.shape[1] != p:
        raise ValueError(f"xent_rows: shapes z {tuple(z.shape)}, p {p}, n_train {n_train}, y {tuple(y.shape)}, "
                         f"dz {tuple(dz.shape)} are invalid; allowed: ldz a multiple of 8 >= p, "
                         "0 <= n_train <= rows <= len(y), dz (>= n_train, p)")
    _ptr(y, torch.int64)  # integer labels only: a float label would be truncated
    if rows and (int(y[:rows].max()) >= p or int(y[:rows].min()) < 0):
        raise ValueError(f"y: labels outside [0, {p}) are invalid; allowed: class indices below p = {p}")
    if n_train and dz.untyped_storage().data_ptr() == z.untyped_storage().data_ptr() \
            and (dz.data_ptr() != z.data_ptr() or dz.stride(0) != ldz):  # dz written: no other view of z's memory
        raise ValueError("dz: a view overlapping z other than z[:, :p] is invalid; allowed: separate memory or "
                         "z's own first p columns")
    if not -87.0 <= floor <= 0.0:  # exp(floor) must stay a normal float32 (kernels.c, exp_range)
        raise ValueError(f"floor: {floor!r} is invalid; allowed: [-87, 0]")
    if (nll is None) != (correct is None):
        raise ValueError("nll, correct: one given without the other is invalid; allowed: both or neither")
    if nll is not None and min(nll.shape[0], correct.shape[0]) < rows:
        raise ValueError(f"nll, correct: {nll.shape[0]}, {correct.shape[0]} entries are invalid; allowed: at least "
                         f"one per row ({rows})")
    _ptr(z, torch.float32)  # refuse what the column copies cannot hold
    _ptr(nll, torch.float32)
    _rows_ptr(dz, "dz")
    shift = torch.empty(rows) if nll is not None else None  # z_label - max
    for lo, hi, train in ((0, n_train, 1), (n_train, rows, 0)):
        if hi == lo:
            continue
        zT, ld = _columns(z[lo:hi], p)
        _native().xent_cols(zT.data_ptr(), ld, hi - lo, train, p, y[lo:hi].data_ptr(), floor,
                            nll[lo:hi].data_ptr() if nll is not None else None,
                            shift[lo:hi].data_ptr() if nll is not None else None,
                            _ptr(correct[lo:hi], torch.bool) if correct is not None else None)
        if train:
            dz[lo:hi].copy_(zT[:, :hi - lo].T)
    if nll is not None:  # nll = log(sum exp(z - max)) - (z_label - max)
        nll[:rows].log_().sub_(shift[:rows])


def hidden_rows(E: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor, h: torch.Tensor) -> None:
    """``h[i] = relu(E[ia[i]] + E[ib[i]])`` for the rows of ``h``: ``hidden_cols`` of kernels.c (the
    fused step's hidden layer, one row per column), transposed back."""
    rows, width = h.shape
    if E.shape[1] != width or ia.shape[0] < rows or ib.shape[0] < rows:
        raise ValueError(f"hidden_rows: shapes E {tuple(E.shape)}, ia {tuple(ia.shape)}, h {tuple(h.shape)} "
                         "are invalid; allowed: E and h of equal width, at least as many indices as rows")
    check_index(E.shape[0], ia[:rows], ib[:rows])
    hT, ld = _columns(torch.empty(rows, width), width)
    _native().hidden_cols(_ptr(E, torch.float32), width, _ptr(ia, torch.int64), _ptr(ib, torch.int64), rows,
                          hT.data_ptr(), ld)
    h.copy_(hT[:, :rows].T)


def scatter_hidden_grad(dh: torch.Tensor, h: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor,
                        dE: torch.Tensor) -> None:
    """``dE = 0; dE[ia[i]] += dh[i] * (h[i] > 0); dE[ib[i]] += ...`` in row order: ``scatter_cols``
    of kernels.c (the fused step's first-layer gradient) on column copies of ``dh`` and ``h``.

    ``h`` is a row slice of a wider contiguous buffer (its first ``width`` columns are used).
    """
    n, width = dh.shape
    if h.shape[0] < n or h.shape[1] < width or dE.shape[1] != width or ia.shape[0] < n or ib.shape[0] < n:
        raise ValueError(f"scatter_hidden_grad: shapes dh {tuple(dh.shape)}, h {tuple(h.shape)}, "
                         f"dE {tuple(dE.shape)} are invalid; allowed: h at least dh's rows and width, dE dh's width")
    _rows_ptr(h, "h")
    check_index(dE.shape[0], ia[:n], ib[:n])
    dhT, ld = _columns(dh, width)
    hT, _ = _columns(h[:n], width)
    dE_ptr = _ptr(dE, torch.float32)
    dE.zero_()
    _native().scatter_cols(dhT.data_ptr(), hT.data_ptr(), ld, _ptr(ia, torch.int64), _ptr(ib, torch.int64), n,
                           width, dE_ptr, None)


def modular_rows(E: torch.Tensor, W2T: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor,
                 y: torch.Tensor, lo: int, hi: int, n_train: int, floor: float, dW2: torch.Tensor,
                 dE: torch.Tensor, db1: torch.Tensor, nll: torch.Tensor | None = None,
                 correct: torch.Tensor | None = None, block: int = 256, lib: ctypes.CDLL | None = None) -> None:
    """Rows ``[lo, hi)`` of a one-hot MLP's modular step, fused block by block (see kernels.c):
    ``dW2`` (width + 1, p), ``dE`` (rows of E, width) and ``db1`` (width) receive these rows' gradient
    sums (rows < ``n_train`` only), and ``nll``/``correct`` (indexed by row) their loss and hit.

    ``E`` (2p, width + 1) holds the first layer's columns with b1 folded into the a-rows and 0.5 in
    the last column; ``W2T`` (width + 1, P8) is [W2^T; b2] padded to P8 classes with bias -inf (the
    number of classes p is ``dW2``'s). (The engine keeps its buffers in the kernel's own layouts and
    calls the C function directly; this wrapper copies into them.) ``lib``: another build of
    kernels.c to call (the benchmarks' timing build, :func:`build`); by default the loaded one."""
    K, P8 = W2T.shape
    width, p = K - 1, dW2.shape[1]
    if E.shape[1] != K or P8 % 8 or P8 < p or dW2.shape != (K, p) or dE.shape != (E.shape[0], width) \
            or db1.shape != (width,) or block < 1:
        raise ValueError(f"modular_rows: shapes E {tuple(E.shape)}, W2T {tuple(W2T.shape)}, "
                         f"dW2 {tuple(dW2.shape)}, dE {tuple(dE.shape)}, db1 {tuple(db1.shape)}, block {block} are "
                         "invalid; allowed: E (rows, K), W2T (K, P8), dW2 (K, p), dE (rows, K - 1), "
                         "db1 (K - 1,), P8 a multiple of 8 >= p, block >= 1")
    if not (0 <= lo <= hi <= min(ia.shape[0], ib.shape[0], y.shape[0]) and 0 <= n_train):
        raise ValueError(f"lo, hi, n_train: {lo}, {hi}, {n_train} are invalid; allowed: 0 <= lo <= hi <= rows of "
                         "ia, ib and y, n_train >= 0")
    if (nll is None) != (correct is None) or (nll is not None and min(nll.shape[0], correct.shape[0]) < hi):
        raise ValueError("nll, correct: allowed both (one entry per row, at least hi) or neither")
    if not -87.0 <= floor <= 0.0:
        raise ValueError(f"floor: {floor!r} is invalid; allowed: [-87, 0]")
    check_index(E.shape[0], ia[lo:hi], ib[lo:hi])
    check_index(p, y[lo:hi])
    lib = lib or _native()
    b = min(block, max(hi - lo, 1))  # the same blocks as `block`, less scratch
    work, dW2p = torch.empty(lib.modular_scratch(p, width, b)), torch.empty(K, P8)
    sums = torch.empty(hi) if nll is not None else None
    shift = torch.empty(hi) if nll is not None else None
    f32 = torch.float32
    lib.modular_rows(_ptr(E, f32), _ptr(W2T, f32), p, P8, width, _ptr(ia, torch.int64), _ptr(ib, torch.int64),
                     _ptr(y, torch.int64), lo, hi, n_train, b, floor, _ptr(sums, f32), _ptr(shift, f32),
                     _ptr(correct, torch.bool), work.data_ptr(), dW2p.data_ptr(), _ptr(dE, f32), E.shape[0],
                     _ptr(db1, f32))
    dW2.copy_(dW2p[:, :p])
    if nll is not None:
        torch.sub(sums[lo:hi].log_(), shift[lo:hi], out=nll[lo:hi])
