"""Test-only: bitsandbytes' AVX512-BF16 capability check, forced in every Python process started
with this folder on PYTHONPATH and FINETUNE_TEST_AVX512BF16 set to 1 (the CPU has it) or 0 (it
has not). The child processes of a run (torchrun, DeepSpeed) inherit both, so a test exercises
either code path of bitsandbytes on any machine (tests/test_quantization.py).

The check is replaced as `bitsandbytes.functional` finishes executing, before the modules that
import it by name (its CPU backend's kernels, `Linear4bit`) read it. With FINETUNE_TEST_AVX512BF16_LOG
set, each process that forced it appends its pid to that file, so a test knows it took effect.
"""

import os
import sys

FORCED = os.environ.get("FINETUNE_TEST_AVX512BF16")
TARGET = "bitsandbytes.functional"


class _ForceCapability:
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: FORCED == "1"
            log = os.environ.get("FINETUNE_TEST_AVX512BF16_LOG")
            if log:
                with open(log, "a", encoding="utf-8") as out:
                    out.write(f"{os.getpid()} {FORCED}\n")

        spec.loader.exec_module = exec_module
        return spec


if FORCED in ("0", "1"):
    sys.meta_path.insert(0, _ForceCapability())
