"""The kernel ABI as data: C signatures, the `extern "C"` text generated from them,
and argument packers that give every scalar its exact NumPy type.

A kernel's C parameter list is written once (a :class:`Signature`); the entry
point's definition in the compiled text and the tuple a launcher passes both come
from it, so they cannot disagree on a scalar's width. Type placeholders in a
signature: ``T`` (the storage's element type, ``S::T``), ``A`` (its accumulation
type, ``S::A``); a variant binds them (:class:`Entry`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

# C scalar type -> (NumPy type a launcher must pass, emulator kind code).
SCALARS: dict[str, tuple[type, str]] = {
    "int": (np.int32, "i"),
    "long long": (np.int64, "q"),
    "unsigned long long": (np.uint64, "Q"),
    "float": (np.float32, "f"),
    "double": (np.float64, "d"),
}
POINTER_CODE = "p"
NULL = np.uint64(0)  # a null device pointer argument


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for integers, b > 0."""
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    """Smallest multiple of b that is >= a."""
    return -(-a // b) * b


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str  # "const T*", "A*", "long long", "int", ...

    @property
    def pointer(self) -> bool:
        return self.ctype.endswith("*")

    @property
    def numpy_type(self) -> type | None:
        return None if self.pointer else SCALARS[self.ctype][0]

    @property
    def code(self) -> str:
        return POINTER_CODE if self.pointer else SCALARS[self.ctype][1]


def params(text: str) -> tuple[Param, ...]:
    """Parse a C parameter list ("const T* x, long long rows, ...")."""
    out = []
    for piece in text.split(","):
        piece = " ".join(piece.split())
        m = re.fullmatch(r"(.+?[\s*])(\w+)", piece)
        if m is None:
            raise ValueError(f"cannot read the C parameter {piece!r}")
        ctype = m.group(1).replace(" *", "*").strip()
        if not ctype.endswith("*") and ctype not in SCALARS:
            raise ValueError(f"parameter {piece!r}: scalar type {ctype!r} is not one of {sorted(SCALARS)}")
        out.append(Param(m.group(2), ctype))
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate parameter names in {text!r}")
    return tuple(out)


@dataclass(frozen=True)
class Signature:
    """One device template and the C parameter list of the entry points calling it."""

    template: str  # "gs::fwd_warp<S, NV>"
    params: tuple[Param, ...]
    call: tuple[str, ...]  # the template's arguments, C expressions of the parameters
    _packers: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def codes(self) -> str:
        """One kind code per parameter (pointer, or the scalar's type and width)."""
        return "".join(p.code for p in self.params)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def pack(self, **values) -> tuple:
        """The launch's argument tuple from named values, each scalar cast to its
        declared type (a missing or unknown name raises)."""
        return self.packer()(**values)

    def packer(self):
        """A function of the parameters (by name or position) returning the tuple."""
        fn = self._packers.get("all")
        if fn is None:
            fn = self._packers["all"] = _make_packer(self.params, [p.name for p in self.params])
        return fn

    def binder(self, **scalars):
        """A function of the pointer parameters (in order) returning the whole tuple,
        the scalars packed once here: the per-call work of a cached launch."""
        missing = {p.name for p in self.params if not p.pointer} - set(scalars)
        extra = set(scalars) - {p.name for p in self.params if not p.pointer}
        if missing or extra:
            raise TypeError(f"{self.template}: scalars missing {sorted(missing)}, unknown {sorted(extra)}")
        packed = {p.name: p.numpy_type(scalars[p.name]) for p in self.params if not p.pointer}
        ptrs = [p.name for p in self.params if p.pointer]
        items = ", ".join(p.name if p.pointer else f"_s[{p.name!r}]" for p in self.params)
        ns: dict = {"_s": packed}
        exec(f"def bound({', '.join(ptrs)}):\n    return ({items},)\n", ns)  # noqa: S102
        return ns["bound"]


def _make_packer(plist: tuple[Param, ...], names: list[str]):
    ns: dict = {f"_t{i}": p.numpy_type for i, p in enumerate(plist) if not p.pointer}
    items = ", ".join(p.name if p.pointer else f"_t{i}({p.name})" for i, p in enumerate(plist))
    exec(f"def pack({', '.join(names)}):\n    return ({items},)\n", ns)  # noqa: S102
    return ns["pack"]


def signature(template: str, param_text: str, call: str | None = None) -> Signature:
    ps = params(param_text)
    args = tuple(a.strip() for a in call.split(",")) if call is not None else tuple(p.name for p in ps)
    return Signature(template, ps, args)


@dataclass(frozen=True)
class Entry:
    """One compiled `extern "C"` entry point: a signature bound to a variant."""

    family: str
    name: str
    sig: Signature
    bind: tuple[tuple[str, str], ...]  # placeholder -> C text: S, T, A, NV, SOFT ...
    bounds: tuple[int, ...]  # __launch_bounds__ arguments: (max threads,) or (max threads, min blocks)
    workspace: str | None = None  # "acc" | "float64": the split partials' dtype; None: no workspace

    @property
    def max_threads(self) -> int:
        return self.bounds[0]

    @property
    def min_blocks(self) -> int:
        return self.bounds[1] if len(self.bounds) > 1 else 1

    def _subst(self, text: str) -> str:
        subs = dict(self.bind)
        return re.sub(r"\b(" + "|".join(map(re.escape, subs)) + r")\b", lambda m: subs[m.group(1)], text)

    def definition(self) -> str:
        plist = ", ".join(f"{self._subst(p.ctype)} {p.name}" for p in self.sig.params)
        used = set(re.findall(r"\w+", " ".join(self.sig.call)))
        unused = "".join(f"(void){p.name}; " for p in self.sig.params if p.name not in used)
        lb = ", ".join(map(str, self.bounds))
        call = ", ".join(self._subst(a) for a in self.sig.call)
        return (f'extern "C" __global__ void __launch_bounds__({lb}) {self.name}({plist}) {{\n'
                f"    {unused}{self._subst(self.sig.template)}({call});\n}}")


def generated_source(entries, family: str) -> str:
    """The entry-point definitions of one family, appended to its .cu by the loader."""
    lines = ["", f"// ---- entry points generated from gpu_softmax/_cuda/kernels.py ({family}) ----"]
    lines += [e.definition() for e in entries if e.family == family]
    return "\n".join(lines) + "\n"


def check_args(entry: Entry, args) -> None:
    """Raise TypeError unless `args` match the entry's C signature exactly: one value
    per parameter, each scalar of exactly its declared NumPy type (so of its width),
    each pointer an array or the NULL uint64."""
    ps = entry.sig.params
    if len(args) != len(ps):
        raise TypeError(f"{entry.name}: {len(args)} arguments for {len(ps)} parameters ({', '.join(entry.sig.names)})")
    for p, a in zip(ps, args):
        if p.pointer:
            if isinstance(a, (np.generic, int, float)) and not (type(a) is np.uint64 and a == 0):
                raise TypeError(f"{entry.name}: parameter {p.ctype} {p.name} is a pointer, got {type(a).__name__} {a!r}")
        elif type(a) is not p.numpy_type:
            raise TypeError(f"{entry.name}: parameter {p.ctype} {p.name} needs numpy.{p.numpy_type.__name__}, "
                            f"got {type(a).__module__}.{type(a).__name__} {a!r}")
