"""The eagle-hf commands ask torch's CPU allocator for transparent huge pages (THP_MEM_ALLOC_ENABLE),
and the flag does what they rely on: far fewer first-touch page faults for a large fresh tensor."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eagle_hf import cli

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# Allocate and touch a fresh 64 MiB tensor (glibc maps it anew), counting the minor page faults.
SCRIPT = """
import json, resource
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(16 * 2**20)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""
SMALL_PAGES = 64 * 2**20 // 4096


class _Parser:
    """`cli.build_parser` stand-in: parses nothing, runs nothing."""

    def __init__(self, command):
        self.command = command

    def parse_args(self, argv):
        module = type("Module", (), {"run": staticmethod(lambda args: 0)})
        return type("Args", (), {"command": self.command, "_module": module})()


def test_commands_that_run_models_ask_for_huge_pages_and_keep_a_users_choice(monkeypatch):
    monkeypatch.setattr(cli, "build_parser", _Parser)
    for command in sorted(cli.RUNS_MODELS):
        monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
        assert cli.main([command]) == 0 and os.environ.get("THP_MEM_ALLOC_ENABLE") == "1", command
    for command in sorted(set(cli.COMMANDS) - cli.RUNS_MODELS):  # convert, push: left alone
        monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
        assert cli.main([command]) == 0 and "THP_MEM_ALLOC_ENABLE" not in os.environ, command
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert cli.main(["chat"]) == 0 and os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


def _faults(env: dict) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                         env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="the kernel offers no huge pages")
def test_the_huge_page_flag_cuts_first_touch_page_faults():
    plain = _faults({"THP_MEM_ALLOC_ENABLE": None})
    huge = _faults({"THP_MEM_ALLOC_ENABLE": "1"})
    assert plain >= 0.9 * SMALL_PAGES  # one fault per 4 KiB page
    assert huge <= 0.1 * SMALL_PAGES  # 2 MiB pages (545 faults measured)
