"""Minimal shim so that mmseg 1.2.2 can be imported on top of mmcv-lite.

mmcv-lite ships mmcv/ops/*.py but not the compiled extension ``mmcv._ext``.
mmseg's package __init__ chain imports ``mmcv.ops`` (point_sample, PSAMask,
...), which calls ``ext_loader.load_ext('_ext', [...])`` and asserts every
listed symbol exists.  ISAHead itself never calls a compiled op (it only uses
mmcv.cnn.ConvModule + plain torch), so we register a stub ``mmcv._ext`` whose
every attribute is a function that raises if it is ever *called*.

Call ``install()`` BEFORE importing mmseg.  If a real compiled mmcv._ext is
importable, nothing is changed.
"""

import importlib
import sys
import types

USED_SHIM = False


def _make_stub(name):
    def _stub(*args, **kwargs):
        raise NotImplementedError(
            f"mmcv._ext.{name} is a shim stub (mmcv-lite has no compiled ops)"
        )

    _stub.__name__ = name
    return _stub


def install():
    global USED_SHIM
    try:
        importlib.import_module("mmcv._ext")
        return False  # real extension present (full mmcv build)
    except ImportError:
        pass
    mod = types.ModuleType("mmcv._ext")
    mod.__file__ = __file__
    mod.__getattr__ = _make_stub  # PEP 562 module __getattr__
    sys.modules["mmcv._ext"] = mod
    import mmcv

    mmcv._ext = mod
    USED_SHIM = True
    return True
