"""What the verbs share: argument types, the options that name the repository, and the collaborators a
command builds from its arguments and settings (through the composition root, ``ducc.wiring``)."""

from __future__ import annotations

import argparse
import math

from ducc.cli.progress_line import progress_for
from ducc.errors import DuccError
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish import backends
from ducc.settings import Settings, parse_duration
from ducc.wiring import Services


def platform_arg(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def seconds_arg(text: str) -> float:
    """A number of seconds to wait: finite and not negative (``nan`` would never compare as over)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return seconds


def count_arg(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return count


def duration_arg(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def with_repository(parser: argparse.ArgumentParser) -> None:
    """The options naming where the command reads or publishes, one per backend (``--root``,
    ``--cvmfs-repo``; at most one of them); ``main`` applies the one given to the settings."""
    backends.add_options(parser)


def platform_of(args: argparse.Namespace, settings: Settings) -> Platform:
    return args.platform or settings.platform


def services(args: argparse.Namespace, settings: Settings) -> Services:
    """The collaborators of a command that converts or reads the repository in the foreground."""
    return Services(settings, progress=progress_for(args.quiet))


def thin_target(output: str | None, ref: Reference, thin_of: dict[Reference, Reference]) -> Reference | None:
    """``--thin``: a reference, or a wishlist ``output_format`` with DUCC's ``$(...)`` variables
    (several images need those: two images are never pushed to one tag)."""
    from ducc.thin import thin_reference

    if output is None:
        return None
    target = thin_reference(output, ref)
    other = thin_of.setdefault(target, ref)
    if other != ref:
        raise DuccError(f"--thin {output}: {other} and {ref} would both be pushed to {target}; use $(image) or $(tag)")
    return target
