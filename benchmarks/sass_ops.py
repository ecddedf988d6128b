"""The walker's instruction semantics (sass_walk.Thread): integer, predicate and
move instructions on three-valued registers (None is unknown), one method per
opcode base, mixed into Thread."""

from __future__ import annotations

import re

import numpy as np

M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1


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


class IntegerOps:
    """`_op_<BASE>(ins, args)` for the opcodes the walk computes; Thread supplies the
    register file (reg, set_reg, pred, set_pred, ...)."""

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
