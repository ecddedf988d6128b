"""Follow one CUDA thread through a kernel's SASS and count what it issues.

Used by sass_budget.py. The walk runs the SASS of one thread (a chosen block and
thread index, concrete kernel arguments and pointer values) with a small
interpreter of the integer, predicate and control instructions: every address,
bound, loop counter and parameter test is computed, so the path taken is the one
those arguments take (aligned rows, interior slots, the plan's trip counts).
Floating-point values, shuffles and loads from memory the caller does not model
are unknown. A branch on an unknown predicate is decided by a rule, and counted
(`Walk.guessed`): a backward branch is not taken (a polling loop waits once), a
forward one takes the side with fewer static instructions before the two sides
meet (the slow side of a numerical guard or a division is the longer one).

Every instruction reached is counted as issued, predicated-off ones included
(they take an issue slot), so the counts are per warp instruction when the
thread's warp does not diverge, which is the case on the fast path.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from sass_ops import M32, IntegerOps, _and, _not, _s32
from sass_parse import Function, Instr, parse_sass  # noqa: F401 (parse_sass: sass_budget's and the tests' name)

_SPECIAL = {"SR_TID.Y": 0, "SR_TID.Z": 0, "SR_CTAID.Y": 0, "SR_CTAID.Z": 0, "SR_CgaCtaId": 0, "SRZ": 0}
_NOOP = {"BSSY", "BSYNC", "WARPSYNC", "NOP", "BAR", "MEMBAR", "ERRBAR", "CGAERRBAR", "CCTL", "NANOSLEEP",
         "DEPBAR", "LDGDEPBAR", "FENCE", "YIELD", "BMOV", "STG", "STS", "ST", "STL", "RED", "REDG",
         "ARRIVES", "SYNCS", "CCTLL", "WARPGROUP", "UCGABAR_ARV", "UCGABAR_WAIT", "ACQBULK", "PREEXIT"}
_UNIFORM_ALIAS = {"UIADD3": "IADD3", "UIMAD": "IMAD", "ULEA": "LEA", "ULOP3": "LOP3", "USHF": "SHF",
                  "UISETP": "ISETP", "USEL": "SEL", "UMOV": "MOV", "UPLOP3": "PLOP3", "UPRMT": "PRMT",
                  "UPOPC": "POPC", "UFLO": "FLO", "UBREV": "BREV", "ULDC": "LDC", "USHL": "SHL", "USHR": "SHR",
                  "UIABS": "IABS", "UIMNMX": "IMNMX", "UVIADD": "VIADD", "I2FP": "I2F", "F2IP": "F2I"}


def _dest_words(ins: Instr) -> int:
    if ".128" in ins.op:
        return 4
    if ".64" in ins.op or ins.base in ("DADD", "DMUL", "DFMA", "DMNMX", "IMAD") and "WIDE" in ins.mods:
        return 2
    if ins.base in ("DADD", "DMUL", "DFMA", "DMNMX", "CS2R"):
        return 2
    if ins.base in ("F2F", "I2F", "F2I", "FRND", "I2I") and ins.mods and ins.mods[0] in ("F64", "S64", "U64"):
        return 2
    return 1


class WalkError(RuntimeError):
    pass


@dataclass
class Walk:
    """Counts of one thread's walk: per opcode base and per full opcode."""

    issued: Counter = field(default_factory=Counter)  # full opcode -> count
    at: Counter = field(default_factory=Counter)  # address -> times issued
    guessed: Counter = field(default_factory=Counter)  # "fwd"/"back"/"exit" -> unknown decisions
    guesses: list = field(default_factory=list)  # (kind, address, instruction text), first few
    steps: int = 0

    def guess(self, kind: str, ins: Instr):
        self.guessed[kind] += 1
        if len(self.guesses) < 200:
            self.guesses.append((kind, ins.addr, ins.text))

    @property
    def total(self) -> int:
        return sum(self.issued.values())


class Thread(IntegerOps):
    """One thread's registers and the walk over one Function."""

    def __init__(self, fn: Function, const: dict[int, int], special: dict[str, int], memory=None,
                 max_steps: int = 20_000_000):
        self.fn = fn
        self.const = const  # constant bank 0: byte offset -> 32-bit word
        self.special = {**_SPECIAL, **special}
        self.memory = memory  # (address, bytes) -> int or None
        self.r: dict[int, int | None] = {}
        self.ur: dict[int, int | None] = {}
        self.p: dict[int, bool | None] = {}
        self.up: dict[int, bool | None] = {}
        self.max_steps = max_steps

    # --- operands
    def reg(self, name: str):
        name = name.split(".reuse")[0]
        neg = inv = absv = False
        if name.startswith("-"):
            neg, name = True, name[1:]
        if name.startswith("~"):
            inv, name = True, name[1:]
        if name.startswith("|") and name.endswith("|"):
            absv, name = True, name[1:-1]
        v = self._value(name)
        if v is None:
            return None
        if absv:
            v = abs(_s32(v)) & M32
        if inv:
            v = ~v & M32
        if neg:
            v = (~v & M32) + 1  # keeps the carry of a - b (a + ~b + 1)
        return v

    def _value(self, name: str):
        base = name.split(".")[0]
        if base in ("RZ", "URZ"):
            return 0
        if base[0] == "R" and base[1:].isdigit():
            return self.r.get(int(base[1:]), 0)  # never written: bits the compiler never reads
        if base.startswith("UR") and base[2:].isdigit():
            return self.ur.get(int(base[2:]), 0)
        if base.startswith("c[0x0][") and name.endswith("]"):
            off = name[len("c[0x0]["):-1]
            if re.fullmatch(r"0x[0-9a-f]+", off):
                return self.const.get(int(off, 16))
            m = re.fullmatch(r"(U?R\d+|U?RZ)(?:\+(0x[0-9a-f]+))?", off)
            if m:
                b = self.reg(m.group(1))
                return None if b is None else self.const.get(b + int(m.group(2) or "0", 16))
            return None
        if re.fullmatch(r"-?0x[0-9a-f]+", name):
            return int(name, 16) & M32
        if re.fullmatch(r"-?\d+", name):
            return int(name) & M32
        return None  # float immediates, special names

    def reg64(self, name: str):
        name = name.split(".reuse")[0].replace(".64", "")
        if name in ("RZ", "URZ"):
            return 0
        lo = self._value(name)
        hi = self._value(self._next(name))
        return None if lo is None or hi is None else lo | hi << 32

    @staticmethod
    def _next(name: str) -> str:
        m = re.fullmatch(r"(U?R)(\d+)", name)
        if not m:
            return name
        return f"{m.group(1)}{int(m.group(2)) + 1}"

    def pred(self, name: str):
        neg = name.startswith("!")
        name = name.lstrip("!")
        if name in ("PT", "UPT"):
            v = True
        elif name.startswith("UP"):
            v = self.up.get(int(name[2:]))
        elif name.startswith("P") and name[1:].isdigit():
            v = self.p.get(int(name[1:]))
        else:
            raise WalkError(f"not a predicate: {name}")
        return _not(v) if neg else v

    def set_reg(self, name: str, v):
        name = name.split(".reuse")[0].split(".")[0]
        v = None if v is None else v & M32
        if name in ("RZ", "URZ"):
            return
        if name.startswith("UR"):
            self.ur[int(name[2:])] = v
        elif name[0] == "R":
            self.r[int(name[1:])] = v
        else:
            raise WalkError(f"not a register: {name}")

    def set_reg64(self, name: str, v):
        self.set_reg(name, None if v is None else v & M32)
        self.set_reg(self._next(name.split(".")[0]), None if v is None else v >> 32 & M32)

    def set_pred(self, name: str, v):
        if name in ("PT", "UPT"):
            return
        if name.startswith("UP"):
            self.up[int(name[2:])] = v
        else:
            self.p[int(name[1:])] = v

    @staticmethod
    def is_pred(a: str) -> bool:
        return bool(re.fullmatch(r"!?U?P([0-6]|T)", a))

    # --- the walk
    def run(self) -> Walk:
        w = Walk()
        code, stack, i = self.fn.code, [], 0
        while True:
            if w.steps >= self.max_steps:
                raise WalkError(f"{self.fn.name}: more than {self.max_steps} instructions walked")
            if i >= len(code):
                raise WalkError(f"{self.fn.name}: ran off the end of the code")
            ins = code[i]
            w.steps += 1
            w.issued[ins.op] += 1
            w.at[ins.addr] += 1
            g = True if ins.guard is None else self.pred(ins.guard)
            base = ins.base
            if base in ("BRA", "JMP"):
                i = self._branch(ins, g, i, w)
                continue
            if base == "EXIT":
                if g is None:
                    w.guess("exit", ins)
                    g = False
                if g:
                    if stack:
                        raise WalkError(f"{self.fn.name}: EXIT inside a call")
                    return w
                i += 1
                continue
            if base == "CALL":
                if g is not False:
                    stack.append(i + 1)
                    i = self._target(ins)
                else:
                    i += 1
                continue
            if base == "RET":
                if g is not False:
                    if not stack:
                        raise WalkError(f"{self.fn.name}: RET with no call")
                    i = stack.pop()
                else:
                    i += 1
                continue
            if base in ("BRX", "JMX"):
                raise WalkError(f"{self.fn.name}: indirect branch at {ins.addr:#x}")
            if g is False:
                i += 1
                continue
            if g is None:
                self._clobber(ins)
            else:
                self.execute(ins)
            i += 1

    def _target(self, ins: Instr) -> int:
        m = re.search(r"`\(([^)]+)\)", ins.text)
        if not m:
            raise WalkError(f"no branch target in {ins.text!r}")
        return self.fn.labels[m.group(1)]

    def _branch(self, ins: Instr, g, i: int, w: Walk) -> int:
        cond = g
        if "DIV" in ins.mods:
            cond = False  # the warp is converged on the fast path: no divergence handler
        for a in ins.args:
            if self.is_pred(a):
                cond = _and(cond, self.pred(a))
        t = self._target(ins)
        if cond is None:
            if t <= i:
                w.guess("back", ins)
                cond = False
            else:
                w.guess("fwd", ins)
                cond = self._shorter_is_taken(i, t)
        return t if cond else i + 1

    def _shorter_is_taken(self, i: int, t: int) -> bool:
        """An unknown forward branch: whether the jump side is the shorter one (in
        static instructions to where the sides meet)."""
        code = self.fn.code
        last = code[t - 1]
        fall = t - i - 1
        if last.base == "BRA" and last.guard is None:
            j = self._target(last)
            if j > t:
                return (j - t) < fall
        return True  # an if-then: jumping skips the block

    def _clobber(self, ins: Instr):
        """A predicate we do not know guards the instruction: its results become unknown."""
        self._unknown(ins, ins.args)

    # --- instruction semantics (integer, predicate, moves); the rest: results unknown
    def execute(self, ins: Instr):
        base = _UNIFORM_ALIAS.get(ins.base, ins.base)
        a = ins.args
        fn = getattr(self, "_op_" + base, None)
        if fn is not None:
            fn(ins, a)
        elif base in _NOOP:
            pass
        else:
            self._unknown(ins, a)

    def _unknown(self, ins, a):
        """Results we do not model (floating point, shuffles, loads): unknown."""
        dests = a[:2] if a and self.is_pred(a[0]) else a[:1]
        if ins.base in ("IADD3", "LEA", "LOP3") and len(a) > 1 and self.is_pred(a[1]):
            dests = a[:2] + ([a[2]] if len(a) > 2 and self.is_pred(a[2]) else [])
        for x in dests:
            x0 = x.split(".")[0].lstrip("!")
            if re.fullmatch(r"U?P[0-6]", x0):
                self.set_pred(x0, None)
            elif re.fullmatch(r"U?R\d+", x0):
                cur = x0
                self.set_reg(cur, None)
                for _ in range(_dest_words(ins) - 1):
                    cur = self._next(cur)
                    self.set_reg(cur, None)
