"""SASS text (nvdisasm's output) as instructions and functions: the walker's input.
Used by sass_walk.py and sass_budget.py."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
