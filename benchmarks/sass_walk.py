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

import numpy as np
from collections import Counter
from dataclasses import dataclass, field

M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1

_LINE_RE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s*(?:/\*.*\*/)?\s*$")
_LABEL_RE = re.compile(r"^\s*([.$\w]+):\s*$")
_FUNC_RE = re.compile(r"^\s*\.text\.(\w+):\s*$")
_GUARD_RE = re.compile(r"^@(!?U?P[0-6T])\s+(.*)$")


@dataclass
class Instr:
    addr: int
    guard: str | None  # e.g. "P0", "!P1", "UP0"
    op: str  # full opcode with modifiers, e.g. "ISETP.GE.AND.EX"
    args: list[str]
    text: str

    @property
    def base(self) -> str:
        return self.op.split(".")[0]

    @property
    def mods(self) -> list[str]:
        return self.op.split(".")[1:]


@dataclass
class Function:
    name: str
    code: list[Instr]
    labels: dict[str, int]  # label -> index into code
    index_of: dict[int, int] = field(default_factory=dict)  # address -> index


def split_args(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def parse_sass(text: str) -> dict[str, Function]:
    """nvdisasm -c output -> {kernel name: Function}."""
    funcs: dict[str, Function] = {}
    cur: Function | None = None
    pending: list[str] = []
    for line in text.splitlines():
        m = _FUNC_RE.match(line)
        if m:
            cur = funcs[m.group(1)] = Function(m.group(1), [], {})
            pending = []
            continue
        if cur is None:
            continue
        m = _LABEL_RE.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _LINE_RE.match(line)
        if not m:
            continue
        body = m.group(2).strip()
        guard = None
        g = _GUARD_RE.match(body)
        if g:
            guard, body = g.group(1), g.group(2)
        op, _, rest = body.partition(" ")
        ins = Instr(int(m.group(1), 16), guard, op, split_args(rest), body)
        for lab in pending:
            cur.labels[lab] = len(cur.code)
        pending = []
        cur.index_of[ins.addr] = len(cur.code)
        cur.code.append(ins)
    return funcs


# ----------------------------------------------------------------------------------
# three-valued helpers: None is "unknown"


def _decided_by(a, b, dominant: bool):
    """Kleene's rule for and (dominant False) and or (dominant True): one dominant operand settles the result
    even when the other is unknown."""
    if a is dominant or b is dominant:
        return dominant
    if a is None or b is None:
        return None
    return not dominant


def _and(a, b):
    return _decided_by(a, b, False)


def _or(a, b):
    return _decided_by(a, b, True)


def _xor(a, b):
    return None if a is None or b is None else a != b


def _not(a):
    return None if a is None else not a


def _s32(v):
    return v - (1 << 32) if v & 0x80000000 else v


def _lut3(lut, a, b, c, mask):
    r = 0
    for idx in range(8):
        if lut >> idx & 1:
            ta = a if idx & 4 else ~a
            tb = b if idx & 2 else ~b
            tc = c if idx & 1 else ~c
            r |= ta & tb & tc
    return r & mask


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


class Thread:
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

    def _op_MOV(self, ins, a):
        self.set_reg(a[0], self.reg(a[1]))

    def _op_R2UR(self, ins, a):
        self.set_reg(a[0], self.reg(a[1]))

    def _op_S2R(self, ins, a):
        self.set_reg(a[0], self.special.get(a[1]))

    _op_S2UR = _op_S2R

    def _op_CS2R(self, ins, a):
        v = self.special.get(a[1])
        self.set_reg(a[0], v)
        if ".32" not in ins.op:
            self.set_reg(self._next(a[0].split(".")[0]), v)

    def _op_LDC(self, ins, a):
        if ".64" in ins.op:
            lo, hi = self.reg(a[1]), None
            m = re.fullmatch(r"c\[0x0\]\[(0x[0-9a-f]+)\]", a[1])
            if m:
                hi = self.const.get(int(m.group(1), 16) + 4)
            self.set_reg(a[0], lo)
            self.set_reg(self._next(a[0].split(".")[0]), hi)
        elif any(m in ins.mods for m in ("U8", "S8", "U16", "S16")):
            self.set_reg(a[0], None)
        else:
            self.set_reg(a[0], self.reg(a[1]))

    def _op_LDG(self, ins, a):
        width = 16 if ".128" in ins.op else 8 if ".64" in ins.op else 4
        addr = self._address(a[1])
        val = None if addr is None or self.memory is None else self.memory(addr, width)
        if width == 8:
            self.set_reg64(a[0], val)
        elif width == 4:
            self.set_reg(a[0], val)
        else:
            self._unknown(ins, a)

    def _address(self, text: str):
        m = re.search(r"\[(U?R\d+|RZ)(\.64)?(?:\+(U?R\d+))?(?:\+?(-?0x[0-9a-f]+))?\]$", text)
        if not m:
            return None
        base = self.reg64(m.group(1)) if m.group(2) else self.reg(m.group(1))
        if base is None:
            return None
        extra = self.reg64(m.group(3)) if m.group(3) else 0
        if extra is None:
            return None
        off = int(m.group(4), 16) if m.group(4) else 0
        return (base + extra + off) & M64

    def _op_IMAD(self, ins, a):
        mods = ins.mods
        dst, rest = a[0], a[1:]
        cout = None
        if rest and self.is_pred(rest[0]):
            cout, rest = rest[0], rest[1:]
        x, y = self.reg(rest[0]), self.reg(rest[1])
        cin = self.pred(rest[3]) if "X" in mods and len(rest) > 3 else False
        wide = "WIDE" in mods
        # .WIDE and .HI add a 64-bit register pair: .HI is the high word of a * b + {c + 1, c}
        c = self.reg64(rest[2]) if wide or "HI" in mods else self.reg(rest[2])
        if None in (x, y, c, cin):
            (self.set_reg64 if wide else self.set_reg)(dst, None)
            if cout:
                self.set_pred(cout, None)
            return
        if "U32" not in mods:
            x, y = _s32(x), _s32(y)
        prod = x * y
        if wide:
            v = (prod & M64) + c + int(cin)
            self.set_reg64(dst, v & M64)
            if cout:
                self.set_pred(cout, bool(v >> 64))
            return
        if "HI" in mods:
            v = ((prod & M64) + c + int(cin)) >> 32
            self.set_reg(dst, v)
            if cout:
                self.set_pred(cout, bool(v >> 32))
            return
        v = (prod & M32) + c + int(cin)
        self.set_reg(dst, v)
        if cout:
            self.set_pred(cout, bool(v >> 32))

    def _op_VIADD(self, ins, a):
        x, y = self.reg(a[1]), self.reg(a[2])
        self.set_reg(a[0], None if None in (x, y) else x + y)

    def _op_IADD3(self, ins, a):
        dsts = [x for x in a[1:3] if self.is_pred(x)]
        srcs = a[1 + len(dsts):4 + len(dsts)]
        cins = a[4 + len(dsts):]
        vals = [self.reg(s) for s in srcs]
        cs = [self.pred(c) for c in cins] if "X" in ins.mods else []
        if None in vals or None in cs:
            self.set_reg(a[0], None)
            for d in dsts:
                self.set_pred(d, None)
            return
        total = sum(vals) + sum(int(c) for c in cs)
        self.set_reg(a[0], total)
        carry = total >> 32
        for k, d in enumerate(dsts):
            self.set_pred(d, bool(carry >> k & 1) if len(dsts) > 1 else bool(carry))

    def _op_LEA(self, ins, a):
        dst = a[0]
        rest = a[1:]
        cout = None
        if rest and self.is_pred(rest[0]):
            cout, rest = rest[0], rest[1:]
        mods = ins.mods
        if "HI" in mods:
            sx = "SX32" in mods
            lo, b = self.reg(rest[0]), self.reg(rest[1])
            if sx:
                hi, sh, cin = (None if lo is None else (M32 if lo & 0x80000000 else 0)), rest[2], rest[3:]
            else:
                hi, sh, cin = self.reg(rest[2]), rest[3], rest[4:]
            s = self.reg(sh)
            c = self.pred(cin[0]) if ("X" in mods and cin) else False
            if None in (lo, b, hi, s, c):
                self.set_reg(dst, None)
                if cout:
                    self.set_pred(cout, None)
                return
            v = (((hi << 32 | lo) << s) >> 32 & M32) + b + int(c)
        else:
            x, b, s = self.reg(rest[0]), self.reg(rest[1]), self.reg(rest[2])
            cin = rest[3:]
            c = self.pred(cin[0]) if ("X" in mods and cin) else False
            if None in (x, b, s, c):
                self.set_reg(dst, None)
                if cout:
                    self.set_pred(cout, None)
                return
            v = ((x << s) & M32) + b + int(c)
        self.set_reg(dst, v)
        if cout:
            self.set_pred(cout, bool(v >> 32))

    def _op_LOP3(self, ins, a):
        if self.is_pred(a[0]):
            pd, rd, srcs = a[0], a[1], a[2:5]
            lut = self.reg(a[5])
        else:
            pd, rd, srcs = None, a[0], a[1:4]
            lut = self.reg(a[4])
        vals = [self.reg(s) for s in srcs]
        r = None if None in vals or lut is None else _lut3(lut, *vals, M32)
        self.set_reg(rd, r)
        if pd:
            self.set_pred(pd, None if r is None else r != 0)

    def _op_PLOP3(self, ins, a):
        vals = [self.pred(x) for x in a[2:5]]
        l1, l2 = self.reg(a[5]), self.reg(a[6])
        for d, lut in ((a[0], l1), (a[1], l2)):
            if None in vals:
                self.set_pred(d, None)
            else:
                self.set_pred(d, bool(_lut3(lut, *[1 if v else 0 for v in vals], 1)))

    def _op_SHF(self, ins, a):
        lo, s, hi = self.reg(a[1]), self.reg(a[2]), self.reg(a[3])
        if None in (lo, s, hi):
            return self.set_reg(a[0], None)
        mods = ins.mods
        if "W" not in mods:
            s = min(s & 0xFF, 63 if any(m in mods for m in ("U64", "S64")) else 32)
        else:
            s &= 31
        v = hi << 32 | lo
        if "L" in mods:
            v = (v << s) & M64
        else:
            if "S32" in mods or "S64" in mods:
                v = v - (1 << 64) if v >> 63 else v
            v = (v >> s) & M64
        self.set_reg(a[0], v >> 32 if "HI" in mods else v)

    def _op_SHL(self, ins, a):
        x, s = self.reg(a[1]), self.reg(a[2])
        self.set_reg(a[0], None if None in (x, s) else x << (s & 31))

    def _op_SHR(self, ins, a):
        x, s = self.reg(a[1]), self.reg(a[2])
        if None in (x, s):
            return self.set_reg(a[0], None)
        self.set_reg(a[0], (_s32(x) >> (s & 31)) if "S32" in ins.mods else x >> (s & 31))

    def _cmp(self, op: str, x: int, y: int) -> bool:
        return {"LT": x < y, "LE": x <= y, "GT": x > y, "GE": x >= y, "EQ": x == y, "NE": x != y}[op]

    def _op_ISETP(self, ins, a):
        mods = ins.mods
        cmp = mods[0]
        unsigned = "U32" in mods
        boolop = next(m for m in mods if m in ("AND", "OR", "XOR"))
        x, y = self.reg(a[2]), self.reg(a[3])
        pc = self.pred(a[4]) if len(a) > 4 else True
        if None in (x, y):
            r = None
        else:
            xx, yy = (x, y) if unsigned else (_s32(x), _s32(y))
            if "EX" in mods:
                pex = self.pred(a[5])
                if cmp in ("EQ",):
                    r = _and(xx == yy, pex)
                elif cmp == "NE":
                    r = _or(xx != yy, pex)
                else:
                    strict = self._cmp(cmp[0] + "T", xx, yy)
                    r = _or(strict, _and(xx == yy, pex))
            else:
                r = self._cmp(cmp, xx, yy)
        comb = {"AND": _and, "OR": _or, "XOR": _xor}[boolop]
        self.set_pred(a[0], comb(r, pc))
        self.set_pred(a[1], comb(_not(r), pc))

    def _op_SEL(self, ins, a):
        c = self.pred(a[3])
        x, y = self.reg(a[1]), self.reg(a[2])
        self.set_reg(a[0], None if c is None else (x if c else y))

    _op_FSEL = _op_SEL

    def _op_IMNMX(self, ins, a):
        x, y, c = self.reg(a[1]), self.reg(a[2]), self.pred(a[3])
        if None in (x, y, c):
            return self.set_reg(a[0], None)
        xx, yy = (x, y) if "U32" in ins.mods else (_s32(x), _s32(y))
        self.set_reg(a[0], (x if xx <= yy else y) if c else (x if xx >= yy else y))

    _op_VIMNMX = _op_IMNMX

    def _op_IABS(self, ins, a):
        x = self.reg(a[1])
        self.set_reg(a[0], None if x is None else abs(_s32(x)))

    def _op_POPC(self, ins, a):
        x = self.reg(a[1])
        self.set_reg(a[0], None if x is None else bin(x).count("1"))

    def _op_FLO(self, ins, a):
        x = self.reg(a[1])
        self.set_reg(a[0], None if x is None else (x.bit_length() - 1) & M32)

    def _op_PRMT(self, ins, a):
        x, sel, y = self.reg(a[1]), self.reg(a[2]), self.reg(a[3])
        if None in (x, sel, y) or len(ins.mods):
            return self.set_reg(a[0], None)
        src = (y << 32 | x).to_bytes(8, "little")
        out = 0
        for k in range(4):
            nib = sel >> (4 * k) & 0xF
            byte = src[nib & 7]
            if nib & 8:
                byte = 0xFF if byte & 0x80 else 0
            out |= byte << (8 * k)
        self.set_reg(a[0], out)

    def _op_VOTE(self, ins, a):
        # The fast path does not diverge: every lane votes as this one.
        if self.is_pred(a[0]):
            self.set_pred(a[0], self.pred(a[1]))
        else:
            self.set_reg(a[0], None)
            if len(a) > 2 and self.is_pred(a[1]):
                self.set_pred(a[1], self.pred(a[2]))

    _op_VOTEU = _op_VOTE

    # --- floating point, evaluated only when every input is known (integer division is
    # compiled as a float reciprocal estimate plus integer fix-ups: its loop bounds need it)
    def _f32(self, name: str):
        text = name.split(".reuse")[0]
        if re.fullmatch(r"-?(\d+\.\d*(e[-+]?\d+)?|\d+e[-+]?\d+)", text):
            return float(np.float32(float(text)))
        neg = text.startswith("-")
        absv = "|" in text
        v = self.reg(text.lstrip("-").replace("|", ""))
        if v is None:
            return None
        f = float(np.uint32(v).view(np.float32))
        if absv:
            f = abs(f)
        return -f if neg else f

    def _set_f32(self, name: str, f):
        self.set_reg(name, None if f is None else int(np.float32(f).view(np.uint32)))

    def _op_I2F(self, ins, a):
        mods = ins.mods
        x = self.reg64(a[1]) if any(m in mods for m in ("S64", "U64")) else self.reg(a[1])
        if x is None:
            return self._unknown(ins, a)
        if "U32" not in mods and "U64" not in mods:
            bits = 64 if "S64" in mods else 32
            if x >> (bits - 1) & 1:
                x -= 1 << bits
        if mods and mods[0] == "F64":
            return self.set_reg64(a[0], int(np.float64(x).view(np.uint64)))
        self._set_f32(a[0], float(x))

    def _op_F2I(self, ins, a):
        mods = ins.mods
        f = (float(np.uint64(self.reg64(a[1])).view(np.float64)) if self.reg64(a[1]) is not None else None) \
            if "F64" in mods else self._f32(a[1])
        if f is None or f != f or abs(f) == float("inf"):
            return self._unknown(ins, a)
        v = int(f)  # truncation: the division idiom's mode
        if "U32" in mods or "U64" in mods:
            v = max(v, 0)
        if any(m in mods for m in ("S64", "U64")):
            return self.set_reg64(a[0], v & M64)
        self.set_reg(a[0], v & M32)

    def _op_MUFU(self, ins, a):
        if "RCP" in ins.mods and "RCP64H" not in ins.mods:
            f = self._f32(a[1])
            if f is None or f == 0:
                return self._unknown(ins, a)
            return self._set_f32(a[0], 1.0 / f)
        if "RCP64H" in ins.mods:
            hi = self.reg(a[1])
            if hi is None:
                return self._unknown(ins, a)
            d = float(np.uint64(hi << 32).view(np.float64))
            if d == 0 or d != d:
                return self._unknown(ins, a)
            return self.set_reg(a[0], int(np.float64(1.0 / d).view(np.uint64)) >> 32)
        self._unknown(ins, a)

    def _op_FADD(self, ins, a):
        x, y = self._f32(a[1]), self._f32(a[2])
        self._set_f32(a[0], None if None in (x, y) else float(np.float32(x) + np.float32(y)))

    def _op_FMUL(self, ins, a):
        x, y = self._f32(a[1]), self._f32(a[2])
        self._set_f32(a[0], None if None in (x, y) else float(np.float32(x) * np.float32(y)))

    def _op_FFMA(self, ins, a):
        x, y, z = self._f32(a[1]), self._f32(a[2]), self._f32(a[3])
        self._set_f32(a[0], None if None in (x, y, z) else float(np.float32(x * y + z)))

    def _op_HFMA2(self, ins, a):
        # `HFMA2.MMA Rd, -RZ, RZ, hi, lo`: how the compiler materialises a 32-bit constant
        if len(a) == 5 and a[1].lstrip("-") == "RZ" and a[2] == "RZ":
            try:
                hi, lo = (int(np.float16(float(x)).view(np.uint16)) for x in a[3:5])
            except ValueError:
                return self._unknown(ins, a)
            return self.set_reg(a[0], hi << 16 | lo)
        self._unknown(ins, a)

    # predicates saved in and restored from a register (P2R/R2P): bit i is Pi,
    # in byte 1, 2 or 3 with .B1/.B2/.B3
    def _byte_shift(self, ins) -> int:
        return next((8 * int(m[1]) for m in ins.mods if re.fullmatch(r"B[123]", m)), 0)

    def _op_P2R(self, ins, a):
        base, mask = self.reg(a[2]), self.reg(a[3])
        if base is None or mask is None:
            return self.set_reg(a[0], None)
        sh = self._byte_shift(ins)
        bits = 0
        for i in range(7):
            if mask >> i & 1:
                v = self.p.get(i)
                if v is None:
                    return self.set_reg(a[0], None)
                bits |= int(v) << i
        self.set_reg(a[0], (base & ~(mask << sh)) | (bits << sh))

    def _op_R2P(self, ins, a):
        val, mask = self.reg(a[1]), self.reg(a[2])
        sh = self._byte_shift(ins)
        for i in range(7):
            if mask is not None and mask >> i & 1:
                self.p[i] = None if val is None else bool(val >> (i + sh) & 1)
