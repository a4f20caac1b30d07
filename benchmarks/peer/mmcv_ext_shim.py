"""Minimal shim so that mmseg 1.2.2 can be imported on top of mmcv-lite.

mmcv-lite ships mmcv/ops/*.py but not the compiled extension ``mmcv._ext``.
mmseg's package __init__ chain imports ``mmcv.ops`` (point_sample, PSAMask,
...), which calls ``ext_loader.load_ext('_ext', [...])`` and asserts every
listed symbol exists.  The context heads the peer benchmark times (ISAHead, NLHead, CCHead,
DAHead, GCHead, EMAHead) never call a compiled op (mmcv.cnn modules, mmcv 2.x's pure-PyTorch
CrissCrossAttention, plain torch), so ``install()`` registers a stand-in ``mmcv._ext`` whose
every attribute is a function that raises a RuntimeError naming the op if it
is ever *called*.

Call ``install()`` BEFORE importing mmseg.  If a real compiled mmcv._ext is
importable, nothing is changed.
"""

import importlib
import sys
import types

USED_SHIM = False


def _absent_op(name):
    def _op(*args, **kwargs):
        # The benchmarked heads call no compiled op; anything that does needs the full mmcv.
        raise RuntimeError(
            f"mmcv._ext.{name} is a compiled mmcv op, absent from mmcv-lite: install the full "
            "mmcv build to run it (the heads this benchmark times need none)"
        )

    _op.__name__ = name
    return _op


def install():
    global USED_SHIM
    try:
        importlib.import_module("mmcv._ext")
        return False  # real extension present (full mmcv build)
    except ImportError:
        pass
    mod = types.ModuleType("mmcv._ext")
    mod.__file__ = __file__
    mod.__getattr__ = _absent_op  # PEP 562 module __getattr__
    sys.modules["mmcv._ext"] = mod
    import mmcv

    mmcv._ext = mod
    USED_SHIM = True
    return True
