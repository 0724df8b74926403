"""What the fairkv command lines share: a user's mistake ends in one line on stderr and exit status 2.

Each command checks its options, methods, tasks and input paths before it loads a model or writes a file, and
raises ``UsageError`` for a mistake; ``run_command`` prints it as ``<prog>: error: <what to change>`` (no
traceback) and returns 2, the status argparse uses for a bad command line. Errors that are not the user's
(bugs, a full disk) keep their traceback.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch


class UsageError(Exception):
    """A mistake in the command line or in its input files; the message says what to change."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with one-line errors: no usage block, just the problem and where to read more."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_command(prog: str, command: Callable[[], None]) -> int:
    """Run ``command``; a ``UsageError`` becomes one line on stderr and status 2, success status 0."""
    try:
        command()
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def device_arg(text: str) -> str:
    """argparse type: a torch device name that exists on this machine (cpu, cuda, cuda:1, ...)."""
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device: use cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} needs CUDA, which this machine lacks: use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    return text


def _cpu_model() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def device_name(device: str) -> str:
    """The device a command ran on, as results files name it: the GPU model and count, or the CPU model and torch threads."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} x{torch.cuda.device_count()}"
    return f"cpu ({_cpu_model()}, {torch.get_num_threads()} threads)"
