"""Which kernels a launcher module starts: the suites that must reach a regime or an entry point check it here."""

from __future__ import annotations


def record_launches(launcher) -> tuple[set[str], object]:
    """(names, original): launcher._launch now adds each kernel name it starts to names; setting
    launcher._launch = original undoes that."""
    original = launcher._launch
    names: set[str] = set()

    def recording(name, *args, **kw):
        names.add(name)
        return original(name, *args, **kw)

    launcher._launch = recording
    return names, original
